"""DPLL rig: one TimeBase in a `ref` domain and one DigitalPLL + Timestamper per port.

The composition the DPLL test bench and `make bench-dpll` simulate. Every clock is a
top-level input (`clk_ref`, `clk_p0`…), so the harness (cocotb or C++) drives each at its own
frequency; port resets are inputs too (`rst_p0`…), the reference domain has none (its
counters start at their initial values, so the first reference edge is time 0). Per port `i`
the outputs are `p{i}_time`, `p{i}_locked`, `p{i}_state`, `p{i}_phase_error`,
`p{i}_increment`, `p{i}_frames`, `p{i}_rejected`, `p{i}_lock_count` and the Timestamper's
`p{i}_stamp_time`/`p{i}_stamp_seq` for the request `p{i}_take`.

Test scaffolding around the DPLLs (not part of them):

- `p{i}_went_back`: a monitor in the port's domain, sticky from the port's reset: 1 once the
  port's `time` did not increase from one port clock edge to the next (a backward step, or a
  stall). It checks every cycle in the simulation, so a harness need not sample every edge.
- `p{i}_delay`: the wire reaches port i through a delay line of that many reference cycles
  (0 to `MAX_DELAY`, 10 ns each), in the reference domain. Raised while broadcasts are stopped
  (the wire idle), it makes the port's markers arrive later, so at the next acquisition its
  local time is *ahead* of the broadcast by the added delay: the case where a DPLL must slew
  back, never step back.
"""

from amaranth.hdl import Cat, ClockDomain, DomainRenamer, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hdl.dpll import DigitalPLL
from hdl.timebase import DEFAULT_REF_HZ, TimeBase
from hdl.timestamper import SEQ_BITS, TIME_BITS, Timestamper

# (nominal clock Hz, offset in ppm) of each port: the scenario of issue 3.
PORTS = ((125_000_000, -200), (125_000_000, 100), (125_000_000, 200), (100_000_000, -50))
REF_HZ = DEFAULT_REF_HZ
MAX_DELAY = 127         # reference cycles of the per-port wire delay line

# The DPLL's outputs (its register view, `firmware.abi.regmap.DPLL_OUTPUTS`) with their shapes.
_OUTPUTS = tuple((name, member.shape) for name, member in DigitalPLL.members().items() if name != "wire")


class DpllRig(wiring.Component):
    def __init__(self, *, interval_ns: int = 1_000_000, unit_ns: int | None = None,
                 ports=PORTS, holdover_intervals: int = 16):
        self.interval_ns = interval_ns
        self.unit_ns = unit_ns or interval_ns
        self.ports = tuple(ports)
        self.holdover_intervals = holdover_intervals
        members = {"clk_ref": In(1), "wire": Out(1), "tb_enable": In(1), "tb_jitter": In(signed(2)),
                   "tb_corrupt": In(1), "tb_t": Out(48)}
        for i in range(len(self.ports)):
            members[f"clk_p{i}"] = In(1)
            members[f"rst_p{i}"] = In(1)
            members[f"p{i}_take"] = In(1)
            members[f"p{i}_stamp_time"] = Out(TIME_BITS)
            members[f"p{i}_stamp_seq"] = Out(SEQ_BITS)
            members[f"p{i}_went_back"] = Out(1)
            members[f"p{i}_delay"] = In(range(MAX_DELAY + 1))
            for name, shape in _OUTPUTS:
                members[f"p{i}_{name}"] = Out(shape)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        ref = ClockDomain("ref", reset_less=True)
        m.domains += ref
        m.d.comb += ref.clk.eq(self.clk_ref)
        tb = TimeBase(ref_hz=REF_HZ, interval_ns=self.interval_ns, unit_ns=self.unit_ns)
        m.submodules.timebase = DomainRenamer("ref")(tb)
        m.d.comb += [self.wire.eq(tb.wire), tb.enable.eq(self.tb_enable), tb.jitter.eq(self.tb_jitter),
                     tb.corrupt.eq(self.tb_corrupt), self.tb_t.eq(tb.t)]
        for i, (hz, _ppm) in enumerate(self.ports):
            domain = f"p{i}"
            cd = ClockDomain(domain)
            m.domains += cd
            m.d.comb += [cd.clk.eq(getattr(self, f"clk_p{i}")), cd.rst.eq(getattr(self, f"rst_p{i}"))]
            dpll = DigitalPLL(clk_hz=hz, interval_ns=self.interval_ns, unit_ns=self.unit_ns,
                              holdover_intervals=self.holdover_intervals)
            stamper = Timestamper(port=i)
            m.submodules[f"dpll{i}"] = DomainRenamer(domain)(dpll)
            m.submodules[f"stamper{i}"] = DomainRenamer(domain)(stamper)
            line = Signal(MAX_DELAY, init=(1 << MAX_DELAY) - 1)   # idle high
            m.d.ref += line.eq(Cat(tb.wire, line[:-1]))
            m.d.comb += dpll.wire.eq(Cat(tb.wire, line).bit_select(getattr(self, f"p{i}_delay"), 1))
            prev = Signal(TIME_BITS)
            started = Signal()
            went_back = getattr(self, f"p{i}_went_back")
            m.d[domain] += [prev.eq(dpll.time), started.eq(1)]
            with m.If(started & (dpll.time <= prev)):
                m.d[domain] += went_back.eq(1)
            m.d.comb += [
                stamper.time.eq(dpll.time),
                stamper.take.eq(getattr(self, f"p{i}_take")),
                getattr(self, f"p{i}_stamp_time").eq(stamper.stamp.timestamp),
                getattr(self, f"p{i}_stamp_seq").eq(stamper.stamp.seq),
            ]
            for name, _shape in _OUTPUTS:
                m.d.comb += getattr(self, f"p{i}_{name}").eq(getattr(dpll, name))
        return m
