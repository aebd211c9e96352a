"""What a core tells the synthesis tools about its memories.

Amaranth declares every synchronous read port either read-before-write or transparent for a
write to the same address in the same cycle. A block RAM that promises neither (the iCE40's)
then costs Yosys an emulation per memory: the write delayed a cycle, a register of the word's
width, an address compare and a multiplexer (~300 flip-flops and as many LUTs on the iCEBreaker
image). Most memories here never see such a collision — one side reads only entries the other
has finished writing, or the two take turns — or ignore the word read in that cycle. They say
so with `NO_RW_CHECK`, Yosys's attribute for it; the board build makes those read ports'
collisions don't-care (`boards.build.collisions_dont_care`: Yosys itself honours the attribute
only on read registers it merges into a port, and an Amaranth port comes registered).
Simulation keeps Amaranth's behaviour; it differs from the hardware's only in a collision.
"""

NO_RW_CHECK = {"no_rw_check": 1}
