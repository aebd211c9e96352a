"""The device ABI: plain Python/numpy definitions shared by the gateware and the host.

The gateware builds its layouts from these; the host reads and checks bytes with them and
never needs the HDL toolchain at run time.
"""
