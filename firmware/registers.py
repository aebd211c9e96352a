"""RegisterBlock: the gateware side of `firmware.abi.regmap`, built by iterating its table.

Every register of the table becomes either a constant (global `const` registers: the image's
identity and geometry), an input the block reads (`RO`: counters and status), or an output it
drives (`RW`: a control register holding the last value written; `W1P`: a one-cycle pulse when
1 is written). Global registers are members of the same name; each port's block is `port[i]`,
whose members are named after the per-port registers. The bus is `RegisterBus` from
`hdl.link`: reads take one cycle (`r_data` follows `r_addr` a cycle later), writes (`w_addr`,
`w_data`, `w_en`) take effect at the end of the cycle `w_en` is high, so a read issued in the
next cycle sees the new value. Unmapped addresses read 0 and ignore writes.
"""

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from firmware.abi.regmap import GLOBAL, PORT, address
from hdl.link import RegisterBus


def _member(reg, init: dict):
    if reg.access == "RO":
        return In(reg.width)
    return Out(reg.width, init=init.get(reg.name, reg.init) if reg.access == "RW" else 0)


def port_signature(init: dict | None = None) -> wiring.Signature:
    """One port's registers, from the register block's side (RO in, RW/W1P out)."""
    return wiring.Signature({r.name: _member(r, init or {}) for r in PORT})


class RegisterBlock(wiring.Component):
    """Decodes register-bus reads and writes for `ports` port blocks and the global block.

    `constants` gives the value of every global `const` register; `port_init` overrides the
    reset value of per-port `RW` registers (e.g. `mode`), `global_init` of global ones.
    """

    def __init__(self, *, ports: int, constants: dict[str, int], port_init: dict | None = None,
                 global_init: dict | None = None):
        missing = {r.name for r in GLOBAL if r.const} - set(constants)
        if missing:
            self._MustUse__silence = True  # a rejected core is not an unused one
            raise ValueError(f"no value for the constant registers {sorted(missing)}")
        self.ports = ports
        self.constants = dict(constants)
        members = {"bus": In(RegisterBus)}
        members.update({r.name: _member(r, global_init or {}) for r in GLOBAL if not r.const})
        members["port"] = Out(port_signature(port_init)).array(ports)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        sources = []        # (address, register, signal or constant)
        for reg in GLOBAL:
            value = self.constants[reg.name] if reg.const else getattr(self, reg.name)
            sources.append((address(reg.name), reg, value))
        for p in range(self.ports):
            for reg in PORT:
                sources.append((address(reg.name, p), reg, getattr(self.port[p], reg.name)))

        m.d.sync += bus.r_data.eq(0)
        with m.Switch(bus.r_addr):
            for addr, reg, value in sources:
                if reg.access != "W1P":
                    with m.Case(addr):
                        m.d.sync += bus.r_data.eq(value)

        for _, reg, value in sources:
            if reg.access == "W1P":
                m.d.sync += value.eq(0)
        with m.If(bus.w_en):
            with m.Switch(bus.w_addr):
                for addr, reg, value in sources:
                    if reg.access in ("RW", "W1P"):
                        with m.Case(addr):
                            m.d.sync += value.eq(bus.w_data[:reg.width])
        return m
