"""Verilator + cocotb harness: builds simulation images of the gateware and runs them."""
