// The virtual board: a free-running Verilator harness around boards/sim.py's SimBoard.
//
// Owns main, the clock and everything outside the device image, in C++ so that no Python runs
// per cycle:
//   - the link: a pseudo-terminal pair it opens itself (raw mode, non-blocking master); its
//     slave path is printed as "pty /dev/pts/N". Bytes move between the master and the
//     image's rx/tx streams in batches (the fd is polled every --poll-cycles cycles), paced at
//     the line rate a UART at --baud would give (8N1: one byte per clock/(baud/10) cycles in
//     each direction), with optional seeded corruption (one bit flipped) or loss of bytes per
//     direction (rx = host to device, tx = device to host);
//   - servers: one per port, writing blocks into the port's ingress at --rate writes per ms of
//     simulated time (Poisson arrivals; a negative rate = back to back), to random blocks in
//     [--lba-min, --lba-max), with data a function of (seed, port, write number);
//   - primary storage: the volume image file (--volume, mmapped, --blocks x block bytes,
//     created if missing), written on each write's completion after --write-latency cycles,
//     failing with probability --write-fail (block left unchanged, completion ok=0); the
//     copy-on-write pre-image reads answer after --read-latency cycles and fail with
//     probability --read-fail;
//   - the time base's origin: the image carries the time base and one DPLL per port (on the
//     one clock, for now); the harness only sets the time base's T at the first clock edge,
//     `time_origin` = --time-origin / --unit-ns (ns since the Unix epoch, a whole number of
//     units; default: the wall clock at start, rounded down to a unit). Its own record of
//     time (the storage log, `time_ns` in status lines) is origin + edges x ns per cycle, which
//     a locked DPLL's time follows to within a few ns;
//   - servers wait for their port's DPLL to lock (`p{i}_locked`) before their first write
//     (--wait-lock 0: start at once, stamped with an unlocked time), so every entry carries
//     Unix-epoch time;
//   - the storage log (--log): every read and write storage answered, in the order it
//     answered them (see LOG FORMAT below), so a test can check the journal against it.
//
// THE DMA LINK (built with -DBOARD_DMA=1, from SimBoard(link="dma")): no pty; the host's memory
// is a file the harness creates and mmaps (--host-mem PATH, --host-mem-bytes N, zeroed at start),
// announced by a "dma PATH" line. Bus address A is file offset A: every beat of the image's
// memory-write stream (dma_*) is stored at its address (beats outside the file are counted in
// dma_errors=). The file's first 4 KiB page is the BAR mailbox, the host's way to the register
// map (host/link/dma.py): little-endian u32 words [0] request number, [1] op (0 read, 1 write),
// [2] register, [3] value to write, [4] number of the last request done, [5] value read. The
// host fills [1]-[3], then bumps [0]; the harness notices within 16 cycles, runs one register-bus
// access (READ_LATENCY cycles: a read's value is on the bus that many edges later), stores [5]
// and then [4] = [0]. `silence P` drops port P's doorbell writes (its host ring
// fills, its port back-pressures) until `speak P`. status/exit lines add dma_beats= (memory-write
// beats) and dma_busy_cycles= (cycles the ring writer had an entry to write).
//
// THE STANDALONE BOARD (built with -DBOARD_STANDALONE=1, from SimBoard(store_blocks=N)): the
// variant a dev board runs. Primary storage is inside the image (a BlockStore of N blocks in
// on-chip RAM) and the host injects the writes over the link (INJECT_WRITE), so the harness has
// no servers and no volume (--volume, --blocks, --rate, --writes, --lba-*, --*-latency, --*-fail
// and --log are ignored; nothing is logged) and only the ports' `locked` pins. It keeps the
// pty, the line pacing and damage, the time origin and `silence`/`speak`; `pause`, `resume` and
// `ransom` are refused (the host is the traffic source). The board line says standalone=1.
//
// Runs until SIGINT/SIGTERM (or --max-cycles), then writes the volume back (msync), flushes
// the log and prints an "exit ..." line. Progress: a "status ..." line every --report-ms of
// wall time. Both lines are key=value pairs: cycles, wall_s, sim_ns, rx_bytes, tx_bytes, ...
//
// COMMANDS: one per line on stdin, read (without blocking) once per batch, when the pty is
// polled; EOF on stdin only ends the commands. Each is answered by "event KIND key=value ..."
// lines on stdout (time_ns: the harness's time, the storage log's time base):
//   pause            servers start no new write (Poisson arrivals meanwhile are discarded, writes
//                    that arrived before wait; a write already offered to ingress completes):
//                    "event pause time_ns=..", then, once every server is idle and every write
//                    its port accepted has been answered by storage (a primary write each, or a
//                    failed pre-image read in copy-on-write mode) for QUIET_CYCLES cycles,
//                    "event quiet time_ns=T cycle=C" with T in the middle of that quiet: every
//                    write whose header went in before T was answered before T, and none goes in
//                    after T until `resume`. So the volume at T is the volume at start with the
//                    log's ok writes of time_ns <= T applied. A server back-pressured by a full
//                    ring (host not acknowledging, port silenced) keeps the quiet away.
//   resume           servers go on: "event resume time_ns=..".
//   ransom P LBA N   server P, after its current write, writes N blocks back to back (no --rate;
//                    ingress back-pressure and `pause` still hold) to LBA, LBA+1, .., LBA+N-1,
//                    then returns to its traffic: "event ransom port=P lba=LBA count=N time_ns=.."
//                    when the first header goes in, "event ransom_done port=P time_ns=.." when the
//                    last write has been accepted. They count as the server's writes (status
//                    writes=), but their data is garbage from a generator of (seed, port), not a
//                    server block, and they take no write number: normal write n still carries
//                    the block of (seed, port, n). The range must lie in the volume; one ransom
//                    per port at a time.
//   silence P        drop every host->device frame of port P of type FLUSH, ACK or RESEND (frames
//                    are COBS-decoded and checked up to their 0x00, after the --corrupt-rx and
//                    --drop-rx damage; one that is not a well-formed frame passes, for the image
//                    to refuse): the port stops answering the host, its ring fills, its server is
//                    back-pressured. "event silence port=P time_ns=.."; dropped frames are
//                    counted in silenced_frames=. With no port silenced, bytes pass straight
//                    through, as without this feature.
//   speak P          end that: "event speak port=P time_ns=..".
// A blank line is ignored. A command that is malformed, unknown or cannot be done is refused
// with an "event error what=..." line (the reason, double-quoted) and changes nothing.
//
// LOG FORMAT (little-endian): a 32-byte file header
//     magic "PJVBLOG1", u32 version (1), u32 block_bytes, u32 ports, u32 record_bytes,
//     u64 time_origin_ns
// then records of record_bytes = 32 + block_bytes:
//     u64 time_ns (device time when storage answered), u64 cycle, u64 lba, u32 index, u8 port,
//     u8 kind (1 write, 2 pre-image read), u8 ok, u8 zero, then the block (the data written,
//     or read), block_bytes.
// `index` numbers the port's requests as storage saw them: a read takes the next number, a
// write takes the number of the successful read before it (copy-on-write) or the next one
// (redo), so in redo mode write index k is the port's k-th journaled write (entry seq k).
// Only records with kind 1 and ok 1 changed the volume: applying them in order to the volume
// as it was at start gives the volume at exit.
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <sstream>
#include <string>
#include <vector>

#include "Vvboard.h"
#include "verilated.h"

#ifndef BOARD_PORTS
#define BOARD_PORTS 4
#endif
#ifndef BOARD_DMA
#define BOARD_DMA 0
#endif
#ifndef BOARD_BLOCK_BYTES
#define BOARD_BLOCK_BYTES 512
#endif
#ifndef BOARD_STANDALONE
#define BOARD_STANDALONE 0
#endif
#ifndef BOARD_READ_LATENCY
#define BOARD_READ_LATENCY 2
#endif

static constexpr int NPORTS = BOARD_PORTS;
static constexpr int BLOCK = BOARD_BLOCK_BYTES;
static constexpr int WORDS = BLOCK / 8;
static constexpr uint64_t QUIET_CYCLES = 4096;   // a pause's quiet lasts this long before it is told
// The register bus's read latency (`hdl.link.READ_LATENCY`): bar_r_data is the register read
// this many edges after bar_r_addr is set.
static constexpr int READ_LATENCY = BOARD_READ_LATENCY;

static volatile sig_atomic_t g_stop = 0;
static void on_signal(int) { g_stop = 1; }

// --- PRNG: splitmix64 seeding, xoshiro-ish 64-bit generator --------------------------------
static inline uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed = 1) : s(splitmix64(seed) | 1) {}
    uint64_t next() {   // xorshift64*
        s ^= s >> 12; s ^= s << 25; s ^= s >> 27;
        return s * 0x2545F4914F6CDD1Dull;
    }
    double uniform() { return (next() >> 11) * (1.0 / 9007199254740992.0); }
    bool chance(double p) { return p > 0 && uniform() < p; }
    uint64_t below(uint64_t n) { return n ? next() % n : 0; }
};

// The block a server writes: a function of (seed, port, write number) only.
static inline uint64_t data_word(uint64_t seed, int port, uint64_t n, int w) {
    return splitmix64(splitmix64(seed ^ (uint64_t(port) << 56)) ^ (n << 12) ^ uint64_t(w));
}

// --- events: the answers to commands, on stdout -----------------------------------------------
__attribute__((format(printf, 1, 2))) static void event(const char* fmt, ...) {
    std::fputs("event ", stdout);
    va_list ap;
    va_start(ap, fmt);
    std::vprintf(fmt, ap);
    va_end(ap);
    std::fputc('\n', stdout);
    std::fflush(stdout);
}

// A refused command; `what` is quoted, so quotes and control characters in it are replaced.
static void event_error(std::string what) {
    for (char& c : what)
        if (c == '"' || c == '\\') c = '\'';
        else if (uint8_t(c) < 0x20) c = '?';
    event("error what=\"%s\"", what.c_str());
}

// --- silencing a port: host frames checked as firmware/abi/frames.py decodes them -------------
static constexpr size_t FRAME_HEADER = 8, FRAME_CRC = 4;
static constexpr size_t MAX_WIRE_FRAME = 8192;   // more than any frame's COBS bytes (payload <= 4096)
enum : uint8_t { FRAME_FLUSH = 0x04, FRAME_ACK = 0x05, FRAME_RESEND = 0x06 };

static uint32_t crc32c(const uint8_t* p, size_t n) {
    uint32_t c = ~0u;
    while (n--) {
        c ^= *p++;
        for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
    }
    return ~c;
}

static bool cobs_decode(const uint8_t* in, size_t n, std::vector<uint8_t>& out) {
    out.clear();
    for (size_t i = 0; i < n;) {
        const size_t code = in[i++];
        if (code == 0 || i + code - 1 > n) return false;
        for (size_t k = 1; k < code; ++k) {
            if (in[i] == 0) return false;
            out.push_back(in[i++]);
        }
        if (code < 0xFF && i < n) out.push_back(0);
    }
    return true;
}

struct Options {
    std::string volume = "volume.img", log;
    int64_t blocks = -1;
    double clock_hz = 125e6, baud = 12.5e6;
    double rate = 10;                 // writes per ms of simulated time per port; < 0: back to back
    int64_t writes = 0;               // per port; 0 = no limit
    int64_t lba_min = 0, lba_max = -1;
    uint64_t seed = 1;
    int64_t write_latency = 200, read_latency = 200;
    double write_fail = 0, read_fail = 0;
    double corrupt_rx = 0, corrupt_tx = 0, drop_rx = 0, drop_tx = 0;
    int64_t time_origin = -1, unit_ns = 100000;
    bool wait_lock = true;
    int64_t poll_cycles = 2048;
    int64_t report_ms = 1000;
    int64_t max_cycles = 0;
    int ports = NPORTS;
    std::string host_mem = "host-mem.bin";   // the DMA link's host memory (BOARD_DMA builds)
    int64_t host_mem_bytes = 16 << 20;
};

static void usage(const char* argv0) {
    std::fprintf(stderr,
        "usage: %s [--volume PATH] [--blocks N] [--log PATH] [--clock-hz HZ] [--baud B]\n"
        "  [--rate W_PER_MS] [--writes N] [--lba-min A] [--lba-max B] [--seed S]\n"
        "  [--write-latency CYC] [--read-latency CYC] [--write-fail P] [--read-fail P]\n"
        "  [--corrupt-rx P] [--corrupt-tx P] [--drop-rx P] [--drop-tx P] [--time-origin NS]\n"
        "  [--unit-ns NS] [--wait-lock 0|1] [--poll-cycles N] [--report-ms MS] [--max-cycles N] [--ports N]\n"
        "  [--host-mem PATH] [--host-mem-bytes N]   (DMA link builds)\n", argv0);
}

static bool parse(int argc, char** argv, Options& o) {
    enum { VOLUME = 1, BLOCKS, LOG, CLOCK, BAUD, RATE, WRITES, LBA_MIN, LBA_MAX, SEED, WLAT, RLAT, WFAIL,
           RFAIL, CRX, CTX, DRX, DTX, ORIGIN, POLL, REPORT, MAXC, PORTS, UNIT, WAITLOCK, HOSTMEM, HOSTMEMBYTES };
    static const option longopts[] = {
        {"volume", 1, nullptr, VOLUME}, {"blocks", 1, nullptr, BLOCKS}, {"log", 1, nullptr, LOG},
        {"clock-hz", 1, nullptr, CLOCK}, {"baud", 1, nullptr, BAUD}, {"rate", 1, nullptr, RATE},
        {"writes", 1, nullptr, WRITES}, {"lba-min", 1, nullptr, LBA_MIN}, {"lba-max", 1, nullptr, LBA_MAX},
        {"seed", 1, nullptr, SEED}, {"write-latency", 1, nullptr, WLAT}, {"read-latency", 1, nullptr, RLAT},
        {"write-fail", 1, nullptr, WFAIL}, {"read-fail", 1, nullptr, RFAIL},
        {"corrupt-rx", 1, nullptr, CRX}, {"corrupt-tx", 1, nullptr, CTX}, {"drop-rx", 1, nullptr, DRX},
        {"drop-tx", 1, nullptr, DTX}, {"time-origin", 1, nullptr, ORIGIN}, {"poll-cycles", 1, nullptr, POLL},
        {"report-ms", 1, nullptr, REPORT}, {"max-cycles", 1, nullptr, MAXC}, {"ports", 1, nullptr, PORTS},
        {"unit-ns", 1, nullptr, UNIT}, {"wait-lock", 1, nullptr, WAITLOCK},
        {"host-mem", 1, nullptr, HOSTMEM}, {"host-mem-bytes", 1, nullptr, HOSTMEMBYTES},
        {nullptr, 0, nullptr, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, nullptr)) != -1) {
        const char* a = optarg;
        switch (c) {
            case VOLUME: o.volume = a; break;
            case BLOCKS: o.blocks = std::atoll(a); break;
            case LOG: o.log = a; break;
            case CLOCK: o.clock_hz = std::atof(a); break;
            case BAUD: o.baud = std::atof(a); break;
            case RATE: o.rate = std::atof(a); break;
            case WRITES: o.writes = std::atoll(a); break;
            case LBA_MIN: o.lba_min = std::atoll(a); break;
            case LBA_MAX: o.lba_max = std::atoll(a); break;
            case SEED: o.seed = std::strtoull(a, nullptr, 0); break;
            case WLAT: o.write_latency = std::atoll(a); break;
            case RLAT: o.read_latency = std::atoll(a); break;
            case WFAIL: o.write_fail = std::atof(a); break;
            case RFAIL: o.read_fail = std::atof(a); break;
            case CRX: o.corrupt_rx = std::atof(a); break;
            case CTX: o.corrupt_tx = std::atof(a); break;
            case DRX: o.drop_rx = std::atof(a); break;
            case DTX: o.drop_tx = std::atof(a); break;
            case ORIGIN: o.time_origin = std::atoll(a); break;
            case POLL: o.poll_cycles = std::atoll(a); break;
            case REPORT: o.report_ms = std::atoll(a); break;
            case MAXC: o.max_cycles = std::atoll(a); break;
            case PORTS: o.ports = std::atoi(a); break;
            case UNIT: o.unit_ns = std::atoll(a); break;
            case WAITLOCK: o.wait_lock = std::atoi(a) != 0; break;
            case HOSTMEM: o.host_mem = a; break;
            case HOSTMEMBYTES: o.host_mem_bytes = std::atoll(a); break;
            default: return false;
        }
    }
    if (optind != argc) return false;
    if (o.ports != NPORTS) {
        std::fprintf(stderr, "this harness was built for %d ports, not %d\n", NPORTS, o.ports);
        return false;
    }
    if (o.unit_ns <= 0 || (o.time_origin >= 0 && o.time_origin % o.unit_ns)) {
        std::fprintf(stderr, "need unit-ns > 0 and a time-origin that is a whole number of units\n");
        return false;
    }
    if (BOARD_DMA && (o.host_mem_bytes < 8192 || o.host_mem_bytes % 4096)) {
        std::fprintf(stderr, "need host-mem-bytes >= 8192, a multiple of 4096\n");
        return false;
    }
    if (o.clock_hz <= 0 || o.baud <= 0 || o.baud / 10 > o.clock_hz || o.poll_cycles < 1) {
        std::fprintf(stderr, "need clock-hz > 0, 0 < baud <= 10 x clock-hz, poll-cycles >= 1\n");
        return false;
    }
    return true;
}

// --- the port's signals, bound by name ------------------------------------------------------
struct PortPins {
    CData* locked;
    CData *in_valid, *in_ready, *in_first, *in_last; QData* in_data;
    CData *wr_valid, *wr_ready, *wr_first, *wr_last; QData* wr_data;
    CData *wresp_valid, *wresp_ready, *wresp_ok;
    CData *rcmd_valid, *rcmd_ready; QData* rcmd_lba;
    CData *rdata_valid, *rdata_ready, *rdata_last, *rdata_ok; QData* rdata_data;
};
#if BOARD_STANDALONE
#define BIND(i) pins[i] = PortPins{&top->p##i##_locked}
#else
#define BIND(i) pins[i] = PortPins{&top->p##i##_locked, \
    &top->p##i##_in_valid, &top->p##i##_in_ready, &top->p##i##_in_first, &top->p##i##_in_last, &top->p##i##_in_data, \
    &top->p##i##_wr_valid, &top->p##i##_wr_ready, &top->p##i##_wr_first, &top->p##i##_wr_last, &top->p##i##_wr_data, \
    &top->p##i##_wresp_valid, &top->p##i##_wresp_ready, &top->p##i##_wresp_ok, \
    &top->p##i##_rcmd_valid, &top->p##i##_rcmd_ready, &top->p##i##_rcmd_lba, \
    &top->p##i##_rdata_valid, &top->p##i##_rdata_ready, &top->p##i##_rdata_last, &top->p##i##_rdata_ok, \
    &top->p##i##_rdata_data}
#endif

static void bind_ports(Vvboard* top, PortPins* pins) {
    BIND(0);
#if BOARD_PORTS > 1
    BIND(1);
#endif
#if BOARD_PORTS > 2
    BIND(2);
#endif
#if BOARD_PORTS > 3
    BIND(3);
#endif
#if BOARD_PORTS > 4
    BIND(4);
#endif
#if BOARD_PORTS > 5
    BIND(5);
#endif
#if BOARD_PORTS > 6
    BIND(6);
#endif
#if BOARD_PORTS > 7
    BIND(7);
#endif
}

// --- storage and its log ---------------------------------------------------------------------
struct Volume {
    uint8_t* base = nullptr;
    int64_t blocks = 0;
    int fd = -1;
};

struct Log {
    FILE* f = nullptr;
    uint64_t records = 0;
    void record(uint64_t time_ns, uint64_t cycle, uint64_t lba, uint32_t index, int port, int kind, bool ok,
                const uint8_t* data) {
        if (!f) return;
        uint8_t head[32] = {0};
        std::memcpy(head, &time_ns, 8);
        std::memcpy(head + 8, &cycle, 8);
        std::memcpy(head + 16, &lba, 8);
        std::memcpy(head + 24, &index, 4);
        head[28] = uint8_t(port);
        head[29] = uint8_t(kind);
        head[30] = ok ? 1 : 0;
        std::fwrite(head, 1, sizeof head, f);
        std::fwrite(data, 1, BLOCK, f);
        ++records;
    }
};

struct PendingWrite {
    uint64_t lba = 0;
    uint32_t index = 0;
    uint64_t due = 0;          // cycle at which storage answers
    bool answered = false, ok = false;
    int words = 0;
    uint8_t data[BLOCK];
};

struct PortState {
    // server
    bool live = false;         // writing: the port's DPLL has locked (or --wait-lock 0)
    Rng gen_rng{1};
    double next_arrival = 0;   // cycle of the next write's arrival
    int64_t due = 0;           // writes arrived but not yet started
    int64_t issued = 0;        // normal writes whose header beat went in: the next write's number
    int64_t started = 0;       // writes wholly accepted (ransom ones too)
    uint64_t cur = 0;          // number of the write being sent
    int beat = -1;             // -1 idle; 0 header; 1..WORDS data
    uint64_t lba = 0;
    // ransom (the `ransom` command): garbage writes to [ransom_first, ransom_end), the next to
    // start at ransom_next; ransom_end 0 = none under way
    uint64_t ransom_first = 0, ransom_next = 0, ransom_end = 0;
    bool ransom_write = false; // the write being sent is one of them
    Rng ransom_rng{3};
    uint64_t ransom_block[WORDS];
    // storage
    Rng store_rng{2};
    std::deque<PendingWrite> writes;   // in issue order; front answers first
    std::deque<uint32_t> read_ok;      // indices of successful pre-image reads awaiting their write
    uint32_t next_index = 0;
    bool reading = false;
    uint64_t read_due = 0, read_lba = 0;
    uint32_t read_index = 0;
    bool read_ok_now = false;
    int read_beat = 0;
    uint8_t read_data[BLOCK];
    // counters
    uint64_t applied = 0, write_failed = 0, reads = 0, read_failed = 0, stall_cycles = 0;
};

// --- link byte queue (ring buffer) ------------------------------------------------------------
struct ByteQueue {
    std::vector<uint8_t> buf;
    size_t head = 0, size = 0;
    explicit ByteQueue(size_t cap) : buf(cap) {}
    size_t room() const { return buf.size() - size; }
    void push(uint8_t b) { buf[(head + size) % buf.size()] = b; ++size; }
    uint8_t front() const { return buf[head]; }
    void pop(size_t n = 1) { head = (head + n) % buf.size(); size -= n; }
    // contiguous readable span at the front
    size_t span() const { return std::min(size, buf.size() - head); }
};

// Host -> device bytes while some port is silenced: held until their frame's delimiter, then
// passed to the image, or dropped if the frame is a FLUSH, ACK or RESEND for a silenced port.
struct RxFilter {
    uint32_t silenced = 0;            // one bit per port
    std::vector<uint8_t> frame;       // the frame being received, not yet passed
    std::vector<uint8_t> body;        // scratch: its decoded bytes
    uint64_t dropped = 0;

    void take(uint8_t b, ByteQueue& q) {
        if (b != 0) {
            frame.push_back(b);
            if (frame.size() >= MAX_WIRE_FRAME) release(q);   // no frame: the image will refuse it
        } else if (silencing()) {
            ++dropped;
            frame.clear();
        } else {
            frame.push_back(0);
            release(q);
        }
    }
    void release(ByteQueue& q) {
        for (uint8_t x : frame) q.push(x);
        frame.clear();
    }
    bool silencing() {   // is `frame` (up to its delimiter) a journal request of a silenced port?
        if (!cobs_decode(frame.data(), frame.size(), body) || body.size() < FRAME_HEADER + FRAME_CRC) return false;
        const size_t n = body.size() - FRAME_CRC;
        uint32_t crc;
        std::memcpy(&crc, &body[n], 4);
        const size_t length = body[4] | size_t(body[5]) << 8;
        const uint8_t type = body[0], port = body[1];
        return crc32c(body.data(), n) == crc && length == n - FRAME_HEADER && port < 32 &&
               (silenced >> port & 1) && (type == FRAME_FLUSH || type == FRAME_ACK || type == FRAME_RESEND);
    }
};

static double wall_now() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char** argv) {
    Options o;
    if (!parse(argc, argv, o)) { usage(argv[0]); return 2; }
    prctl(PR_SET_PDEATHSIG, SIGTERM);   // never outlive the launcher
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);

    // Volume: mmapped, created (sparse, zero) if missing (a standalone board has its own inside).
    Volume vol;
    off_t vol_bytes = 0;
#if !BOARD_STANDALONE
    vol.fd = open(o.volume.c_str(), O_RDWR | O_CREAT, 0644);
    if (vol.fd < 0) { std::perror(o.volume.c_str()); return 2; }
    struct stat st;
    fstat(vol.fd, &st);
    if (o.blocks < 0) o.blocks = st.st_size ? st.st_size / BLOCK : 2048;
    vol_bytes = off_t(o.blocks) * BLOCK;
    if (o.blocks <= 0) { std::fprintf(stderr, "need a volume of at least one block\n"); return 2; }
    if (st.st_size != 0 && st.st_size != vol_bytes) {
        std::fprintf(stderr, "%s holds %lld bytes, not %lld blocks of %d\n", o.volume.c_str(),
                     (long long)st.st_size, (long long)o.blocks, BLOCK);
        return 2;
    }
    if (st.st_size == 0 && ftruncate(vol.fd, vol_bytes) != 0) { std::perror("ftruncate"); return 2; }
    vol.blocks = o.blocks;
    vol.base = static_cast<uint8_t*>(mmap(nullptr, vol_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, vol.fd, 0));
    if (vol.base == MAP_FAILED) { std::perror("mmap"); return 2; }
    if (o.lba_max < 0 || o.lba_max > o.blocks) o.lba_max = o.blocks;
    if (o.lba_min < 0 || o.lba_min >= o.lba_max) { std::fprintf(stderr, "empty lba range\n"); return 2; }
#endif

    // Time origin: ns since the Unix epoch.
    if (o.time_origin < 0) {
        timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        o.time_origin = int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
        o.time_origin -= o.time_origin % o.unit_ns;
    }

    Log log;
    if (!o.log.empty()) {
        log.f = std::fopen(o.log.c_str(), "wb");
        if (!log.f) { std::perror(o.log.c_str()); return 2; }
        uint8_t head[32] = {'P', 'J', 'V', 'B', 'L', 'O', 'G', '1'};
        uint32_t version = 1, bb = BLOCK, np = NPORTS, rb = 32 + BLOCK;
        uint64_t origin = uint64_t(o.time_origin);
        std::memcpy(head + 8, &version, 4);
        std::memcpy(head + 12, &bb, 4);
        std::memcpy(head + 16, &np, 4);
        std::memcpy(head + 20, &rb, 4);
        std::memcpy(head + 24, &origin, 8);
        std::fwrite(head, 1, sizeof head, log.f);
        std::fflush(log.f);
    }

#if BOARD_DMA
    // The host's memory: a file both processes map; its first page is the BAR mailbox.
    const int hm_fd = open(o.host_mem.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (hm_fd < 0 || ftruncate(hm_fd, o.host_mem_bytes) != 0) { std::perror(o.host_mem.c_str()); return 2; }
    uint8_t* const hm = static_cast<uint8_t*>(mmap(nullptr, size_t(o.host_mem_bytes), PROT_READ | PROT_WRITE,
                                                   MAP_SHARED, hm_fd, 0));
    if (hm == MAP_FAILED) { std::perror("mmap host memory"); return 2; }
    uint32_t* const mailbox = reinterpret_cast<uint32_t*>(hm);
    enum { MB_REQ = 0, MB_OP = 1, MB_ADDR = 2, MB_WDATA = 3, MB_DONE = 4, MB_RDATA = 5 };
    int mb_step = 0;                      // 0 idle, else the edges since the register-bus cycle began
    uint32_t mb_req = 0;
#else
    // The pseudo-terminal: we keep the slave open too, so the master never sees a hang-up
    // between two host sessions (bytes left over are flushed by the next opener, as pyserial does).
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0) { std::perror("posix_openpt"); return 2; }
    const char* slave_path = ptsname(master);
    int slave = open(slave_path, O_RDWR | O_NOCTTY);
    if (slave < 0) { std::perror(slave_path); return 2; }
    termios tio;
    tcgetattr(slave, &tio);
    cfmakeraw(&tio);
    tcsetattr(slave, TCSANOW, &tio);
    fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK);
#endif

    auto ctx = new VerilatedContext;
    auto top = new Vvboard{ctx};
    PortPins pins[NPORTS];
    bind_ports(top, pins);
    PortState ports[NPORTS];
    for (int p = 0; p < NPORTS; ++p) {
        ports[p].gen_rng = Rng(o.seed * 1000003ull + p * 2 + 1);
        ports[p].store_rng = Rng(o.seed * 1000003ull + p * 2 + 2 + 0x5000);
        ports[p].ransom_rng = Rng(o.seed * 1000003ull + p * 2 + 1 + 0xBAD0000);
    }
    Rng link_rng(o.seed ^ 0x11CC);

    // Time: ns per cycle as an integer part and a remainder over the clock (exact for any clock).
    // time_ns is the time of the last rising edge; the first edge is the time base's origin.
    const uint64_t clock = uint64_t(std::llround(o.clock_hz));
    const uint64_t ns_q = 1000000000ull / clock, ns_r = 1000000000ull % clock;
    uint64_t time_ns = uint64_t(o.time_origin), time_rem = 0;
    auto advance = [&] {
        time_ns += ns_q;
        time_rem += ns_r;
        if (time_rem >= clock) { time_rem -= clock; ++time_ns; }
    };
    top->time_origin = uint64_t(o.time_origin / o.unit_ns);
    // Line pacing in 1/65536 cycles per byte.
    const uint64_t cpb = uint64_t(std::llround(o.clock_hz / (o.baud / 10.0) * 65536.0));
    uint64_t rx_next = 0, tx_next = 0;    // fixed point, cycle << 16
    const double cycles_per_write = o.rate > 0 ? o.clock_hz / 1000.0 / o.rate : 0;
    for (int p = 0; p < NPORTS; ++p) {
        if (o.rate > 0) ports[p].next_arrival = -std::log(1.0 - ports[p].gen_rng.uniform()) * cycles_per_write;
        ports[p].live = !o.wait_lock;
    }

    ByteQueue rxq(1 << 16), txq(1 << 16);
    RxFilter filter;                      // rxq.size + filter.frame.size() <= rxq's capacity
    uint64_t rx_bytes = 0, tx_bytes = 0, rx_corrupted = 0, rx_dropped = 0, tx_corrupted = 0, tx_dropped = 0;
    uint64_t tx_backpressure = 0, dma_beats = 0, dma_busy_cycles = 0, dma_errors = 0;
    std::vector<uint8_t> iobuf(1 << 16);

#if BOARD_DMA
    std::printf("dma %s\n", o.host_mem.c_str());
#else
    std::printf("pty %s\n", slave_path);
#endif
    std::printf("board ports=%d block_bytes=%d clock_hz=%.0f baud=%.0f blocks=%lld time_origin_ns=%lld "
                "unit_ns=%lld wait_lock=%d volume=%s log=%s standalone=%d\n", NPORTS, BLOCK, o.clock_hz, o.baud,
                (long long)vol.blocks, (long long)o.time_origin, (long long)o.unit_ns, int(o.wait_lock),
                BOARD_STANDALONE ? "-" : o.volume.c_str(), o.log.empty() ? "-" : o.log.c_str(), BOARD_STANDALONE);
    std::fflush(stdout);

    const double wall_start = wall_now();
    double next_report = wall_start + o.report_ms / 1000.0;
    uint64_t cycle = 0;
    auto report = [&](const char* what) {
        uint64_t applied = 0, failed = 0, reads = 0, rfailed = 0, written = 0, stalls = 0;
        for (auto& s : ports) {
            applied += s.applied; failed += s.write_failed; reads += s.reads; rfailed += s.read_failed;
            written += s.started; stalls += s.stall_cycles;
        }
        std::printf("%s cycles=%" PRIu64 " wall_s=%.3f sim_ns=%" PRIu64 " time_ns=%" PRIu64
                    " rx_bytes=%" PRIu64 " tx_bytes=%" PRIu64 " writes=%" PRIu64 " applied=%" PRIu64
                    " write_failed=%" PRIu64 " reads=%" PRIu64 " read_failed=%" PRIu64
                    " ingress_stall_cycles=%" PRIu64 " rx_corrupted=%" PRIu64 " rx_dropped=%" PRIu64
                    " tx_corrupted=%" PRIu64 " tx_dropped=%" PRIu64 " tx_backpressure_cycles=%" PRIu64
                    " silenced_frames=%" PRIu64 " log_records=%" PRIu64 " dma_beats=%" PRIu64
                    " dma_busy_cycles=%" PRIu64 " dma_errors=%" PRIu64 "\n",
                    what, cycle, wall_now() - wall_start, time_ns - uint64_t(o.time_origin), time_ns,
                    rx_bytes, tx_bytes, written, applied, failed, reads, rfailed, stalls, rx_corrupted,
                    rx_dropped, tx_corrupted, tx_dropped, tx_backpressure, filter.dropped, log.records,
                    dma_beats, dma_busy_cycles, dma_errors);
        std::fflush(stdout);
        if (log.f) std::fflush(log.f);
    };

    // The control channel (COMMANDS above): run once per batch, before the pty is polled.
    bool paused = false, quiet_told = false, commands_open = true;
    uint64_t quiet_cycles = 0, quiet_ns = 0, quiet_cycle = 0;   // the quiet so far; its middle
    std::string commands;                                        // bytes of a line not yet whole
    auto run_command = [&](const std::string& line) {
        static const std::string usage = "pause, resume, ransom P LBA N, silence P, speak P";
        std::istringstream in(line);
        std::string verb;
        std::vector<long long> args;
        if (!(in >> verb)) return;
        for (long long v; in >> v;) args.push_back(v);
        const size_t arity = verb == "pause" || verb == "resume" ? 0 : verb == "ransom" ? 3
                           : verb == "silence" || verb == "speak" ? 1 : SIZE_MAX;
        if (arity == SIZE_MAX) {
            event_error("'" + line + "' is not a command: " + usage);
        } else if (!in.eof() || args.size() != arity) {
            event_error("'" + line + "': wrong arguments (" + usage + ")");
        } else if (arity && (args[0] < 0 || args[0] >= NPORTS)) {
            event_error("'" + line + "': no port " + std::to_string(args[0]) + " (the board has " +
                        std::to_string(NPORTS) + ")");
        } else if (BOARD_STANDALONE && (verb == "pause" || verb == "resume" || verb == "ransom")) {
            event_error("'" + line + "': a standalone board has no servers (the host injects the writes)");
        } else if (verb == "pause") {
            paused = true;
            quiet_told = false;
            quiet_cycles = 0;
            event("pause time_ns=%" PRIu64, time_ns);
        } else if (verb == "resume") {
            paused = false;
            event("resume time_ns=%" PRIu64, time_ns);
        } else if (verb == "ransom") {
            PortState& s = ports[args[0]];
            const long long lba = args[1], count = args[2];
            if (s.ransom_end) {
                event_error("'" + line + "': port " + std::to_string(args[0]) + " is under a ransom already");
            } else if (lba < 0 || lba >= vol.blocks || count < 1 || count > vol.blocks - lba) {
                event_error("'" + line + "': blocks outside the volume's " + std::to_string(vol.blocks));
            } else {
                s.ransom_first = s.ransom_next = uint64_t(lba);
                s.ransom_end = uint64_t(lba + count);
            }
        } else {   // silence, speak
            const uint32_t bit = 1u << args[0];
            filter.silenced = verb == "silence" ? filter.silenced | bit : filter.silenced & ~bit;
            if (!filter.silenced) filter.release(rxq);
            event("%s port=%lld time_ns=%" PRIu64, verb.c_str(), args[0], time_ns);
        }
    };
    auto read_commands = [&] {
        pollfd in{0, POLLIN, 0};
        if (poll(&in, 1, 0) <= 0) return;
        char buf[4096];
        const ssize_t n = read(0, buf, sizeof buf);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
        if (n <= 0) { commands_open = false; return; }     // EOF (or no stdin): no more commands
        commands.append(buf, size_t(n));
        for (size_t eol; (eol = commands.find('\n')) != std::string::npos; commands.erase(0, eol + 1))
            run_command(commands.substr(0, eol));
        if (commands.size() > sizeof buf) {
            event_error("a command line longer than " + std::to_string(sizeof buf) + " bytes");
            commands.clear();
        }
    };

    // A few idle cycles first (the image has no reset input: it starts at its init values).
#if BOARD_DMA
    top->dma_ready = 1;
    top->bar_w_en = 0;
#else
    top->rx_valid = 0;
    top->tx_ready = 0;
#endif
    // Edge 0 is at time_origin; time_ns stays the time of the last edge.
    for (int i = 0; i < 4; ++i) {
        top->clk = 0; top->eval();
        top->clk = 1; top->eval();
        if (i > 0) advance();
    }

#if !BOARD_DMA
    bool master_dead = false;
#endif
    while (!g_stop) {
        // --- batch: take commands, poll the pty, then run poll_cycles cycles ------------------
        if (commands_open) read_commands();
#if !BOARD_DMA
        if (!master_dead) {
            // host -> device
            while (rxq.room() > filter.frame.size()) {
                ssize_t n = read(master, iobuf.data(), std::min(rxq.room() - filter.frame.size(), iobuf.size()));
                if (n <= 0) {
                    if (n < 0 && errno != EAGAIN && errno != EINTR && errno != EIO) master_dead = true;
                    break;
                }
                for (ssize_t i = 0; i < n; ++i) {
                    uint8_t b = iobuf[i];
                    if (link_rng.chance(o.drop_rx)) { ++rx_dropped; continue; }
                    if (link_rng.chance(o.corrupt_rx)) { b ^= uint8_t(1u << link_rng.below(8)); ++rx_corrupted; }
                    if (filter.silenced) filter.take(b, rxq);
                    else rxq.push(b);
                }
            }
            // device -> host
            while (txq.size) {
                ssize_t n = write(master, &txq.buf[txq.head], txq.span());
                if (n <= 0) break;
                txq.pop(size_t(n));
            }
        }
#endif
        const uint64_t batch_end = cycle + uint64_t(o.poll_cycles);
        for (; cycle < batch_end; ++cycle) {
            // Inputs for this cycle.
#if BOARD_DMA
            // BAR mailbox: a register-bus cycle per request (a write for one edge); r_data is
            // there READ_LATENCY edges later.
            if (mb_step == READ_LATENCY) {
                if (__atomic_load_n(&mailbox[MB_OP], __ATOMIC_RELAXED) == 0)
                    __atomic_store_n(&mailbox[MB_RDATA], uint32_t(top->bar_r_data), __ATOMIC_RELAXED);
                top->bar_w_en = 0;
                __atomic_store_n(&mailbox[MB_DONE], mb_req, __ATOMIC_RELEASE);
                mb_step = 0;
            } else if (mb_step > 0) {
                top->bar_w_en = 0;
                ++mb_step;
            } else if ((cycle & 15) == 0 && __atomic_load_n(&mailbox[MB_REQ], __ATOMIC_ACQUIRE) != mb_req) {
                mb_req = __atomic_load_n(&mailbox[MB_REQ], __ATOMIC_ACQUIRE);
                const uint32_t addr = mailbox[MB_ADDR], port_block = addr / BOARD_PORT_STRIDE;
                const bool silenced_doorbell = mailbox[MB_OP] == 1 && port_block >= 1 && port_block <= uint32_t(NPORTS)
                    && addr % BOARD_PORT_STRIDE == BOARD_DOORBELL_OFFSET
                    && (filter.silenced >> (port_block - 1) & 1);
                top->bar_r_addr = addr;
                top->bar_w_addr = addr;
                top->bar_w_data = mailbox[MB_WDATA];
                top->bar_w_en = mailbox[MB_OP] == 1 && !silenced_doorbell;
                if (silenced_doorbell) ++filter.dropped;
                mb_step = 1;
            }
#else
            const uint64_t now16 = cycle << 16;
            const bool rx_on = rxq.size && now16 >= rx_next;
            top->rx_valid = rx_on;
            if (rx_on) top->rx_data = rxq.front();
            const bool tx_on = now16 >= tx_next && txq.room() > 0;
            top->tx_ready = tx_on;
            if (!tx_on && now16 >= tx_next) ++tx_backpressure;
#endif
#if !BOARD_STANDALONE
            for (int p = 0; p < NPORTS; ++p) {
                PortState& s = ports[p];
                PortPins& q = pins[p];
                // server: waits for the DPLL's lock; then arrivals (none while paused), then the
                // next write (a ransom one first, none while paused), then the current write's beat
                if (!s.live && *q.locked) {
                    s.live = true;
                    s.next_arrival += double(cycle);
                }
                if (!s.live) {
                } else if (o.rate < 0) {
                    if (!paused && s.due == 0 && (o.writes == 0 || s.issued < o.writes)) s.due = 1;
                } else if (o.rate > 0) {
                    while (double(cycle) >= s.next_arrival) {
                        if (!paused && (o.writes == 0 || s.issued + s.due < o.writes)) ++s.due;
                        s.next_arrival += -std::log(1.0 - s.gen_rng.uniform()) * cycles_per_write;
                    }
                }
                if (s.beat < 0 && s.live && !paused) {
                    s.ransom_write = s.ransom_next < s.ransom_end;
                    if (s.ransom_write) {
                        s.beat = 0;
                        s.lba = s.ransom_next++;
                        for (auto& word : s.ransom_block) word = s.ransom_rng.next();
                    } else if (s.due > 0) {
                        s.beat = 0;
                        s.lba = uint64_t(o.lba_min) + s.gen_rng.below(uint64_t(o.lba_max - o.lba_min));
                    }
                }
                *q.in_valid = s.beat >= 0;
                if (s.beat == 0) {
                    *q.in_data = s.lba; *q.in_first = 1; *q.in_last = 0;
                } else if (s.beat > 0) {
                    *q.in_data = s.ransom_write ? s.ransom_block[s.beat - 1] : data_word(o.seed, p, s.cur, s.beat - 1);
                    *q.in_first = 0; *q.in_last = s.beat == WORDS;
                }
                // storage: write completions (the front write answers once due)
                *q.wr_ready = 1;
                bool resp = false;
                if (!s.writes.empty()) {
                    PendingWrite& w = s.writes.front();
                    if (w.words == WORDS && cycle >= w.due) {
                        if (!w.answered) {
                            w.answered = true;
                            w.ok = !s.store_rng.chance(o.write_fail) && int64_t(w.lba) < vol.blocks;
                            if (w.ok) {
                                std::memcpy(vol.base + w.lba * BLOCK, w.data, BLOCK);
                                ++s.applied;
                            } else {
                                ++s.write_failed;
                            }
                            log.record(time_ns, cycle, w.lba, w.index, p, 1, w.ok, w.data);
                        }
                        resp = true;
                    }
                }
                *q.wresp_valid = resp;
                *q.wresp_ok = resp && s.writes.front().ok;
                // storage: pre-image reads
                *q.rcmd_ready = !s.reading;
                bool rd = s.reading && cycle >= s.read_due;
                *q.rdata_valid = rd;
                if (rd) {
                    uint64_t word;
                    std::memcpy(&word, s.read_data + 8 * s.read_beat, 8);
                    *q.rdata_data = word;
                    *q.rdata_last = s.read_beat == WORDS - 1;
                    *q.rdata_ok = s.read_ok_now;
                }
            }
#endif
            top->clk = 0;
            top->eval();
            // Transfers this cycle (valid & ready before the edge).
#if BOARD_DMA
            dma_busy_cycles += top->dma_busy;
            if (top->dma_valid) {       // dma_ready is always 1
                const uint64_t addr = top->dma_addr, word = top->dma_data;
                ++dma_beats;
                if (addr >= 4096 && addr + 8 <= uint64_t(o.host_mem_bytes)) std::memcpy(hm + addr, &word, 8);
                else ++dma_errors;
            }
#else
            if (rx_on && top->rx_ready) {
                rxq.pop();
                ++rx_bytes;
                rx_next = std::max(rx_next, now16) + cpb;
            }
            if (tx_on && top->tx_valid) {
                uint8_t b = top->tx_data;
                tx_next = std::max(tx_next, now16) + cpb;
                ++tx_bytes;
                if (link_rng.chance(o.drop_tx)) {
                    ++tx_dropped;
                } else {
                    if (link_rng.chance(o.corrupt_tx)) { b ^= uint8_t(1u << link_rng.below(8)); ++tx_corrupted; }
                    txq.push(b);
                }
            }
#endif
#if !BOARD_STANDALONE
            for (int p = 0; p < NPORTS; ++p) {
                PortState& s = ports[p];
                PortPins& q = pins[p];
                if (s.beat >= 0) {
                    if (!*q.in_ready) {
                        ++s.stall_cycles;
                    } else if (s.beat == 0 && s.ransom_write) {
                        if (s.lba == s.ransom_first)
                            event("ransom port=%d lba=%" PRIu64 " count=%" PRIu64 " time_ns=%" PRIu64, p,
                                  s.ransom_first, s.ransom_end - s.ransom_first, time_ns);
                        ++s.beat;
                    } else if (s.beat == 0) {
                        --s.due;
                        s.cur = uint64_t(s.issued++);
                        ++s.beat;
                    } else if (s.beat < WORDS) {
                        ++s.beat;
                    } else {
                        s.beat = -1;
                        ++s.started;
                        if (s.ransom_write && s.lba + 1 == s.ransom_end) {
                            event("ransom_done port=%d time_ns=%" PRIu64, p, time_ns);
                            s.ransom_first = s.ransom_next = s.ransom_end = 0;
                        }
                    }
                }
                if (*q.wr_valid) {      // wr_ready is always 1
                    if (*q.wr_first) {
                        PendingWrite w;
                        w.lba = *q.wr_data;
                        if (!s.read_ok.empty()) { w.index = s.read_ok.front(); s.read_ok.pop_front(); }
                        else w.index = s.next_index++;
                        s.writes.push_back(w);
                    } else if (!s.writes.empty()) {
                        PendingWrite& w = s.writes.back();
                        if (w.words < WORDS) {
                            uint64_t word = *q.wr_data;
                            std::memcpy(w.data + 8 * w.words, &word, 8);
                            ++w.words;
                        }
                        if (*q.wr_last) w.due = cycle + uint64_t(o.write_latency);
                    }
                }
                if (*q.wresp_valid && *q.wresp_ready) s.writes.pop_front();
                if (*q.rcmd_valid && *q.rcmd_ready) {
                    s.reading = true;
                    s.read_lba = *q.rcmd_lba;
                    s.read_due = cycle + 1 + uint64_t(o.read_latency);
                    s.read_beat = 0;
                    s.read_index = s.next_index++;
                    s.read_ok_now = !s.store_rng.chance(o.read_fail) && int64_t(s.read_lba) < vol.blocks;
                    if (int64_t(s.read_lba) < vol.blocks)
                        std::memcpy(s.read_data, vol.base + s.read_lba * BLOCK, BLOCK);
                    else
                        std::memset(s.read_data, 0, BLOCK);
                    ++s.reads;
                    if (!s.read_ok_now) ++s.read_failed;
                    else s.read_ok.push_back(s.read_index);
                    log.record(time_ns, cycle, s.read_lba, s.read_index, p, 2, s.read_ok_now, s.read_data);
                }
                if (*q.rdata_valid && *q.rdata_ready) {
                    if (++s.read_beat == WORDS) s.reading = false;
                }
            }
#endif
            // Paused: quiet while every server is idle and storage has answered every write its
            // port accepted (a write is accepted after its pre-image read, so no read is left).
            if (paused && !quiet_told) {
                bool quiet = true;
                for (auto& s : ports)
                    quiet = quiet && s.beat < 0 && uint64_t(s.started) == s.applied + s.write_failed + s.read_failed;
                quiet_cycles = quiet ? quiet_cycles + 1 : 0;
                if (quiet_cycles == QUIET_CYCLES / 2) { quiet_ns = time_ns; quiet_cycle = cycle; }
                if (quiet_cycles == QUIET_CYCLES) {
                    event("quiet time_ns=%" PRIu64 " cycle=%" PRIu64, quiet_ns, quiet_cycle);
                    quiet_told = true;
                }
            }
            top->clk = 1;
            top->eval();
            advance();
        }
        if (o.max_cycles && cycle >= uint64_t(o.max_cycles)) break;
        if (o.report_ms > 0) {
            double now = wall_now();
            if (now >= next_report) {
                report("status");
                next_report = now + o.report_ms / 1000.0;
            }
        }
    }

    // Stop: whatever storage applied is in the volume and in the log, nothing else.
    if (vol.base) {
        msync(vol.base, vol_bytes, MS_SYNC);
        munmap(vol.base, vol_bytes);
        close(vol.fd);
    }
    if (log.f) { std::fflush(log.f); fsync(fileno(log.f)); }
#if BOARD_DMA
    munmap(hm, size_t(o.host_mem_bytes));
    close(hm_fd);
#else
    // Hand the host what the device had sent (best effort, never blocking).
    while (txq.size) {
        ssize_t n = write(master, &txq.buf[txq.head], txq.span());
        if (n <= 0) break;
        txq.pop(size_t(n));
    }
#endif
    report("exit");
    if (log.f) std::fclose(log.f);
    top->final();
    delete top;
    delete ctx;
#if !BOARD_DMA
    close(slave);
    close(master);
#endif
    return 0;
}
