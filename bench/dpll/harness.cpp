// Free-running Verilator harness for the DPLL rig (sim/dpll_rig.py): drives the reference
// clock and four port clocks from an event scheduler on integer femtoseconds, and measures
// every port's time against true (simulation) time.
//
//   dpll_rig <interval_ns> <locked_broadcasts> <holdover_ms> <seed> <window_ns> <out.csv>
//            <relocked_broadcasts> <d0:d1:d2:d3> <hz0> <ppm0> <hz1> <ppm1> <hz2> <ppm2> <hz3> <ppm3>
//
// Edge n (rising or falling) of a clock of period P fs is at phase + floor(n * P / 2) fs, P
// rounded to 1 fs: frequencies are exact to 1e-7 ppm. The reference clock's first rising edge
// is at 0 (true time 0); port clocks start at a random phase in [0, P).
//
// Error of port i at one of its rising edges = its integer-ns `time` after the edge minus
// the edge's true time in ns. It is checked at every port edge (min, max, sum of |err|, and
// any edge at which `time` did not increase, which counts as a backward step). Skew = largest minus smallest
// error of the four ports, each taken at its latest edge, evaluated at every reference edge.
// One CSV row per window of `window_ns` carries those per-window figures.
//
// Phases: broadcasts with ±1 reference-cycle marker jitter until every port is locked, then
// <locked_broadcasts> more, then the time base stops sending (tb_enable = 0) for <holdover_ms>
// after the first missing marker (`locked` drops in that time). Then the broadcasts resume,
// with port i's wire now delayed by d_i reference cycles (the rig's `p{i}_delay`, set while the
// wire is idle): its markers arrive 10·d_i ns later, so at re-acquisition its local time is
// AHEAD of the broadcast by that much plus its holdover error, and it must slew back rather
// than step back. The run goes on until every port is locked again and <relocked_broadcasts>
// more. A delayed port locks to true time − 10·d_i ns: its error is taken against that.
// Backward steps are counted at every port edge of every phase, re-acquisition included.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>

#include "Vdpll_rig.h"
#include "verilated.h"

static constexpr int NPORTS = 4;
static constexpr int64_t FS_PER_NS = 1000000;

struct Clock {
    int64_t period_fs;
    int64_t phase_fs = 0;
    int64_t n = 0;  // next edge index; even = rising
    int64_t next_fs() const { return phase_fs + (n * period_fs) / 2; }
};

int main(int argc, char** argv) {
    constexpr int FIRST_PORT_ARG = 9;
    if (argc != FIRST_PORT_ARG + 2 * NPORTS) {
        std::fprintf(stderr, "usage: %s interval_ns locked_broadcasts holdover_ms seed window_ns out.csv"
                             " relocked_broadcasts d0:d1:d2:d3 (hz ppm) x %d\n", argv[0], NPORTS);
        return 2;
    }
    const int64_t interval_ns = std::atoll(argv[1]);
    const int64_t locked_broadcasts = std::atoll(argv[2]);
    const int64_t holdover_ms = std::atoll(argv[3]);
    const unsigned seed = static_cast<unsigned>(std::atoll(argv[4]));
    const int64_t window_fs = std::atoll(argv[5]) * FS_PER_NS;
    FILE* out = std::fopen(argv[6], "w");
    if (!out) { std::perror(argv[6]); return 2; }
    const int64_t relocked_broadcasts = std::atoll(argv[7]);
    int resume_delay[NPORTS] = {0};
    {
        const char* d = argv[8];
        for (int i = 0; i < NPORTS; ++i) {
            char* end = nullptr;
            resume_delay[i] = static_cast<int>(std::strtol(d, &end, 10));
            if (end == d || (i < NPORTS - 1 && *end != ':')) {
                std::fprintf(stderr, "bad delays %s\n", argv[8]);
                return 2;
            }
            d = end + 1;
        }
    }

    auto ctx = new VerilatedContext;
    auto top = new Vdpll_rig{ctx};
    const int64_t interval_fs = interval_ns * FS_PER_NS;

    Clock clocks[NPORTS + 1];
    clocks[0].period_fs = 10 * FS_PER_NS;  // reference: 100 MHz (sim/dpll_rig.py REF_HZ)
    for (int i = 0; i < NPORTS; ++i) {
        double hz = std::atof(argv[FIRST_PORT_ARG + 2 * i]), ppm = std::atof(argv[FIRST_PORT_ARG + 1 + 2 * i]);
        clocks[i + 1].period_fs = std::llround(1e15 / (hz * (1.0 + ppm * 1e-6)));
    }
    // Each port clock starts at a random phase (seeded): nothing aligns real oscillators, and
    // starting all at 0 would put port edges on reference edges, a corner case for the
    // marker capture. `phase_fs` shifts all of a clock's edges.
    std::mt19937 phase_rng(seed * 7919u + 1u);
    for (int c = 1; c <= NPORTS; ++c)
        clocks[c].phase_fs = std::uniform_int_distribution<int64_t>(0, clocks[c].period_fs - 1)(phase_rng);
    CData* clk[NPORTS + 1] = {&top->clk_ref, &top->clk_p0, &top->clk_p1, &top->clk_p2, &top->clk_p3};
    CData* rst[NPORTS] = {&top->rst_p0, &top->rst_p1, &top->rst_p2, &top->rst_p3};
    QData* ptime[NPORTS] = {&top->p0_time, &top->p1_time, &top->p2_time, &top->p3_time};
    CData* locked[NPORTS] = {&top->p0_locked, &top->p1_locked, &top->p2_locked, &top->p3_locked};
    SData* rejected[NPORTS] = {&top->p0_rejected, &top->p1_rejected, &top->p2_rejected, &top->p3_rejected};
    CData* state[NPORTS] = {&top->p0_state, &top->p1_state, &top->p2_state, &top->p3_state};
    IData* phase_error[NPORTS] = {&top->p0_phase_error, &top->p1_phase_error, &top->p2_phase_error,
                                  &top->p3_phase_error};
    CData* delay[NPORTS] = {&top->p0_delay, &top->p1_delay, &top->p2_delay, &top->p3_delay};
    CData* went_back[NPORTS] = {&top->p0_went_back, &top->p1_went_back, &top->p2_went_back,
                                &top->p3_went_back};
    constexpr int TRACK = 2;  // hdl/dpll.py

    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> jitter(-1, 1);
    top->tb_enable = 1;
    top->tb_corrupt = 0;
    top->tb_jitter = 0;
    for (int i = 0; i < NPORTS; ++i) { *rst[i] = 1; *clk[i + 1] = 0; *delay[i] = 0; }
    top->clk_ref = 0;
    top->eval();

    int64_t last_time[NPORTS] = {0};
    bool seen[NPORTS] = {false};
    double err[NPORTS] = {0};
    double holdover_err[NPORTS] = {0};     // at <holdover_ms> after the first missing marker
    int64_t acquired_err[NPORTS] = {0};    // phase error of the frame ending the re-acquisition
    bool reacquired[NPORTS] = {false};
    double relocked_max = 0;               // max |err| after every port is locked again
    // per-window accumulators
    double wmin[NPORTS], wmax[NPORTS], wsum[NPORTS];
    int64_t wcount[NPORTS];
    double wskew = 0;
    int64_t backward = 0, backward_total = 0;
    auto reset_window = [&] {
        for (int i = 0; i < NPORTS; ++i) { wmin[i] = 1e300; wmax[i] = -1e300; wsum[i] = 0; wcount[i] = 0; }
        wskew = 0;
    };
    reset_window();
    std::fprintf(out, "t_ns,enabled");
    for (int i = 0; i < NPORTS; ++i)
        std::fprintf(out, ",err%d,min%d,max%d,sumabs%d,n%d,locked%d,rejected%d", i, i, i, i, i, i, i);
    std::fprintf(out, ",skew,backward\n");

    int64_t next_window = window_fs;
    int64_t last_jitter_interval = -1;
    int64_t lock_fs = -1, stop_fs = -1, end_fs = -1, holdover_end_fs = -1, resume_fs = -1, relock_fs = -1;
    const int64_t release_fs = 100 * FS_PER_NS;  // port resets released at 100 ns
    bool released = false;

    while (true) {
        int64_t now = clocks[0].next_fs();
        for (int c = 1; c <= NPORTS; ++c) now = std::min(now, clocks[c].next_fs());
        if (end_fs >= 0 && now > end_fs) break;
        // Window bookkeeping happens before the edges at `now`.
        while (now > next_window) {
            std::fprintf(out, "%.6f,%d", next_window / 1e6, static_cast<int>(top->tb_enable));
            for (int i = 0; i < NPORTS; ++i)
                std::fprintf(out, ",%.3f,%.3f,%.3f,%.3f,%lld,%d,%d", err[i], wcount[i] ? wmin[i] : 0.0,
                             wcount[i] ? wmax[i] : 0.0, wsum[i], static_cast<long long>(wcount[i]),
                             static_cast<int>(*locked[i]), static_cast<int>(*rejected[i]));
            std::fprintf(out, ",%.3f,%lld\n", wskew, static_cast<long long>(backward));
            backward = 0;
            reset_window();
            next_window += window_fs;
        }
        if (!released && now >= release_fs) {
            for (int i = 0; i < NPORTS; ++i) *rst[i] = 0;
            released = true;
        }
        // Jitter for the next marker, chosen mid-interval (the time base latches it late).
        int64_t interval = now / interval_fs;
        if (interval != last_jitter_interval && now - interval * interval_fs >= interval_fs / 2) {
            top->tb_jitter = jitter(rng) & 3;
            last_jitter_interval = interval;
        }
        bool rising[NPORTS + 1] = {false};
        for (int c = 0; c <= NPORTS; ++c) {
            if (clocks[c].next_fs() == now) {
                rising[c] = (clocks[c].n % 2) == 0;
                *clk[c] = rising[c] ? 1 : 0;
                clocks[c].n++;
            }
        }
        ctx->time(now / 1000);  // ps, for any $time users
        top->eval();
        const double now_ns = now / 1e6;
        for (int i = 0; i < NPORTS; ++i) {
            if (!rising[i + 1]) continue;
            int64_t t = static_cast<int64_t>(*ptime[i]);
            if (seen[i] && t <= last_time[i]) { ++backward; ++backward_total; }
            last_time[i] = t;
            seen[i] = released;   // time holds 0 while the port is in reset: not a step
            err[i] = static_cast<double>(t) - now_ns + 10.0 * *delay[i];
            if (relock_fs >= 0) relocked_max = std::max(relocked_max, std::fabs(err[i]));
            wmin[i] = std::min(wmin[i], err[i]);
            wmax[i] = std::max(wmax[i], err[i]);
            wsum[i] += std::fabs(err[i]);
            wcount[i]++;
        }
        if (rising[0]) {
            double lo = err[0], hi = err[0];
            for (int i = 1; i < NPORTS; ++i) { lo = std::min(lo, err[i]); hi = std::max(hi, err[i]); }
            wskew = std::max(wskew, hi - lo);
            if (lock_fs < 0) {
                bool all = true;
                for (int i = 0; i < NPORTS; ++i) all = all && *locked[i];
                if (all) {
                    lock_fs = now;
                    // stop after `locked_broadcasts` more markers: disable mid-interval
                    stop_fs = (now / interval_fs + locked_broadcasts) * interval_fs + interval_fs / 2;
                    std::printf("all locked at %.3f us\n", now / 1e9);
                }
                if (now > 100 * interval_fs) { std::fprintf(stderr, "no lock in 100 intervals\n"); break; }
            }
            if (stop_fs >= 0 && holdover_end_fs < 0 && now >= stop_fs) {
                top->tb_enable = 0;
                // first missing marker is the next interval boundary
                int64_t first_missing = (now / interval_fs + 1) * interval_fs;
                holdover_end_fs = first_missing + holdover_ms * 1000000 * FS_PER_NS;
                std::printf("broadcasts stop: first missing marker at %.3f us\n", first_missing / 1e9);
            }
            if (holdover_end_fs >= 0 && resume_fs < 0 && now >= holdover_end_fs) {
                // The wire is idle (no broadcasts): change the delays, then resume.
                for (int i = 0; i < NPORTS; ++i) {
                    holdover_err[i] = err[i];
                    if (*locked[i]) { std::fprintf(stderr, "p%d still locked after holdover\n", i); return 1; }
                    *delay[i] = static_cast<CData>(resume_delay[i]);
                }
                top->tb_enable = 1;
                resume_fs = now;
                std::printf("broadcasts resume at %.3f us\n", now / 1e9);
            }
            if (resume_fs >= 0 && relock_fs < 0) {
                bool all = true;
                for (int i = 0; i < NPORTS; ++i) {
                    if (!reacquired[i] && *state[i] == TRACK) {
                        reacquired[i] = true;
                        acquired_err[i] = static_cast<int32_t>(*phase_error[i]);
                    }
                    all = all && *locked[i];
                }
                if (all) {
                    relock_fs = now;
                    end_fs = (now / interval_fs + relocked_broadcasts) * interval_fs + interval_fs / 2;
                    std::printf("all locked again at %.3f us\n", now / 1e9);
                }
                if (now > resume_fs + 100 * interval_fs) {
                    std::fprintf(stderr, "no re-lock in 100 intervals\n");
                    break;
                }
            }
        }
    }
    int64_t went_back_ports = 0;  // the rig's own per-cycle monitors, as a cross-check
    for (int i = 0; i < NPORTS; ++i) went_back_ports += *went_back[i];
    std::fprintf(out, "# lock_ns=%.3f stop_ns=%.3f resume_ns=%.3f relock_ns=%.3f end_ns=%.3f backward=%lld "
                 "went_back_ports=%lld relocked_max_abs_err_ns=%.3f holdover_err=",
                 lock_fs / 1e6, stop_fs / 1e6, resume_fs / 1e6, relock_fs / 1e6, end_fs / 1e6,
                 static_cast<long long>(backward_total), static_cast<long long>(went_back_ports), relocked_max);
    for (int i = 0; i < NPORTS; ++i) std::fprintf(out, "%s%.3f", i ? ":" : "", holdover_err[i]);
    std::fprintf(out, " acquired_err=");
    for (int i = 0; i < NPORTS; ++i) std::fprintf(out, "%s%lld", i ? ":" : "", static_cast<long long>(acquired_err[i]));
    std::fprintf(out, " delays=");
    for (int i = 0; i < NPORTS; ++i) std::fprintf(out, "%s%d", i ? ":" : "", resume_delay[i]);
    std::fprintf(out, "\n");
    std::fclose(out);
    std::printf("end at %.3f us, backward steps %lld\n", end_fs / 1e9, static_cast<long long>(backward_total));
    top->final();
    delete top;
    delete ctx;
    return lock_fs < 0 || relock_fs < 0 ? 1 : 0;
}
