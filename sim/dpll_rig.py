"""DPLL rig: one TimeBase in a `ref` domain and one DigitalPLL + Timestamper per port.

The composition the DPLL test bench and `make bench-dpll` simulate. Every clock is a
top-level input (`clk_ref`, `clk_p0`…), so the harness (cocotb or C++) drives each at its own
frequency; port resets are inputs too (`rst_p0`…), the reference domain has none (its
counters start at their initial values, so the first reference edge is time 0). Per port `i`
the outputs are `p{i}_time`, `p{i}_locked`, `p{i}_state`, `p{i}_phase_error`,
`p{i}_increment`, `p{i}_frames`, `p{i}_rejected`, `p{i}_lock_count` and the Timestamper's
`p{i}_stamp_time`/`p{i}_stamp_seq` for the request `p{i}_take`.
"""

from amaranth.hdl import ClockDomain, DomainRenamer, Module, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hdl.dpll import INC_BITS, PHASE_BITS, DigitalPLL
from hdl.timebase import DEFAULT_REF_HZ, TimeBase
from hdl.timestamper import SEQ_BITS, TIME_BITS, Timestamper

# (nominal clock Hz, offset in ppm) of each port: the scenario of issue 3.
PORTS = ((125_000_000, -200), (125_000_000, 100), (125_000_000, 200), (100_000_000, -50))
REF_HZ = DEFAULT_REF_HZ

_OUTPUTS = (("time", TIME_BITS), ("locked", 1), ("state", 2), ("phase_error", signed(PHASE_BITS)),
            ("increment", INC_BITS), ("frames", 16), ("rejected", 16), ("lock_count", 8))


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
            m.d.comb += [
                dpll.wire.eq(tb.wire),
                stamper.time.eq(dpll.time),
                stamper.take.eq(getattr(self, f"p{i}_take")),
                getattr(self, f"p{i}_stamp_time").eq(stamper.stamp.timestamp),
                getattr(self, f"p{i}_stamp_seq").eq(stamper.stamp.seq),
            ]
            for name, _shape in _OUTPUTS:
                m.d.comb += getattr(self, f"p{i}_{name}").eq(getattr(dpll, name))
        return m
