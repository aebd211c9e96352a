"""The device image: ports, time base, link and register map for one target, and its ABI."""
