"""The read-only NBD export against real clients (nbdinfo, nbdcopy, qemu-img) and a raw socket client."""

import json
import socket
import struct
import subprocess
import threading

import numpy as np
import pytest
from click.testing import CliRunner
from scenario import build_journal

from firmware.abi.entry import Mode, Status
from host import nbd
from host.cli import cli
from host.nbd import BytesVolume, NBDError, NBDServer

SIZE = 3 * 1024 * 1024 + 4096      # not a power of two: sizes are taken from the server, not guessed


def run(*args, timeout=60):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def served():
    data = np.random.default_rng(7).integers(0, 256, SIZE, dtype=np.uint8).tobytes()
    with NBDServer(BytesVolume(data, 4096)) as server:
        yield server, data
    assert not server.errors


def test_nbdinfo_reports_size_and_read_only(served):
    server, data = served
    result = run("nbdinfo", "--json", server.uri)
    assert result.returncode == 0, result.stderr
    export = json.loads(result.stdout)["exports"][0]
    assert export["export-size"] == len(data)
    assert export["is_read_only"] is True
    assert export["can_flush"] is True and export["can_multi_conn"] is True
    assert export["block_size_preferred"] == 4096


def test_nbdcopy_reads_every_byte(served, tmp_path):
    server, data = served
    out = tmp_path / "out.img"
    result = run("nbdcopy", "--connections=4", server.uri, str(out))   # several clients at once
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == data


def test_qemu_img_info_and_convert(served, tmp_path):
    server, data = served
    info = run("qemu-img", "info", "-f", "raw", "--output=json", server.uri)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["virtual-size"] == len(data)
    out = tmp_path / "out.raw"
    result = run("qemu-img", "convert", "-f", "raw", "-O", "raw", server.uri, str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == data


def test_real_clients_refuse_to_write(served, tmp_path):
    server, data = served
    src = tmp_path / "in.img"
    src.write_bytes(bytes(len(data)))
    result = run("nbdcopy", str(src), server.uri)
    assert result.returncode != 0 and "read-only" in result.stderr


# --- a raw client: what the real ones will not send --------------------------------------------

class RawClient:
    def __init__(self, port, *, no_zeroes=True, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=10)
        magic, opt, flags = struct.unpack(">QQH", self.recv(18))
        assert (magic, opt) == (nbd.NBDMAGIC, nbd.IHAVEOPT)
        assert flags == nbd.FLAG_FIXED_NEWSTYLE | nbd.FLAG_NO_ZEROES
        self.no_zeroes = no_zeroes
        self.sock.sendall(struct.pack(">I", nbd.FLAG_C_FIXED_NEWSTYLE | (nbd.FLAG_C_NO_ZEROES * no_zeroes)))
        self.cookie = 0

    def recv(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            assert chunk, f"server closed after {len(buf)} of {n} bytes"
            buf += chunk
        return buf

    def option(self, option, data=b""):
        self.sock.sendall(struct.pack(">QII", nbd.IHAVEOPT, option, len(data)) + data)

    def reply(self):
        magic, option, kind, length = struct.unpack(">QIII", self.recv(20))
        assert magic == nbd.REPLY_MAGIC
        return option, kind, self.recv(length)

    def go(self, name=b"", infos=()):
        self.option(nbd.OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(f">H{len(infos)}H",
                                                                                  len(infos), *infos))
        replies = []
        while True:
            option, kind, data = self.reply()
            assert option == nbd.OPT_GO
            replies.append((kind, data))
            if kind != nbd.REP_INFO:
                return replies

    def request(self, kind, offset=0, length=0, payload=b""):
        self.cookie += 1
        self.sock.sendall(struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, kind, self.cookie, offset, length)
                          + payload)
        magic, error, cookie = struct.unpack(">IIQ", self.recv(16))
        assert magic == nbd.SIMPLE_REPLY_MAGIC and cookie == self.cookie
        return error

    def read(self, offset, length):
        error = self.request(nbd.CMD_READ, offset, length)
        return error, (self.recv(length) if error == 0 else b"")

    def close(self):
        self.sock.close()


def test_writes_and_trims_are_refused_and_change_nothing(served):
    server, data = served
    c = RawClient(server.port)
    replies = c.go(infos=(nbd.INFO_NAME, nbd.INFO_BLOCK_SIZE))
    assert replies[-1][0] == nbd.REP_ACK
    export = next(d for k, d in replies if struct.unpack_from(">H", d)[0] == nbd.INFO_EXPORT)
    size, flags = struct.unpack_from(">QH", export, 2)
    assert size == len(data) and flags & nbd.FLAG_READ_ONLY
    assert c.request(nbd.CMD_WRITE, 4096, 8192, b"\xaa" * 8192) == nbd.EPERM
    assert c.request(nbd.CMD_TRIM, 0, 65536) == nbd.EPERM
    assert c.read(0, 16384) == (0, data[:16384])     # the write's payload did not desync the stream
    assert c.request(nbd.CMD_FLUSH) == 0
    assert c.request(99) == nbd.EINVAL
    c.sock.sendall(struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, nbd.CMD_DISC, 0, 0, 0))
    assert c.sock.recv(1) == b""                      # DISC closes
    c.close()


def test_reads_past_the_end_get_einval(served):
    server, data = served
    c = RawClient(server.port)
    c.go()
    assert c.read(len(data) - 10, 10) == (0, data[-10:])
    assert c.read(len(data) - 10, 11) == (nbd.EINVAL, b"")
    assert c.read(len(data), 1) == (nbd.EINVAL, b"")
    assert c.read(2**63, 512) == (nbd.EINVAL, b"")
    assert c.read(0, nbd.MAX_REQUEST + 1) == (nbd.EINVAL, b"")
    assert c.read(1, 3) == (0, data[1:4])             # still in step after the errors
    c.close()


def test_export_name_list_info_abort_and_unknown_options(served):
    server, data = served
    c = RawClient(server.port, no_zeroes=False)
    c.option(nbd.OPT_STRUCTURED_REPLY)
    assert c.reply()[1] == nbd.REP_ERR_UNSUP
    c.option(42, b"whatever")
    assert c.reply()[1] == nbd.REP_ERR_UNSUP
    c.option(nbd.OPT_LIST)
    assert c.reply() == (nbd.OPT_LIST, nbd.REP_SERVER, struct.pack(">I", 0))
    assert c.reply()[1] == nbd.REP_ACK
    c.option(nbd.OPT_LIST, b"x")
    assert c.reply()[1] == nbd.REP_ERR_INVALID
    c.option(nbd.OPT_INFO, struct.pack(">I", 4) + b"nope" + struct.pack(">H", 0))
    assert c.reply()[1] == nbd.REP_ERR_UNKNOWN
    c.option(nbd.OPT_INFO, struct.pack(">IH", 0, 0))
    kinds = []
    while not kinds or kinds[-1] == nbd.REP_INFO:
        kinds.append(c.reply()[1])
    assert kinds[-1] == nbd.REP_ACK
    c.option(nbd.OPT_EXPORT_NAME)                      # old-style end of haggling, with the 124 zeroes
    size, flags = struct.unpack(">QH", c.recv(10))
    assert size == len(data) and flags & nbd.FLAG_READ_ONLY
    assert c.recv(124) == bytes(124)
    assert c.read(100, 50) == (0, data[100:150])
    c.close()
    c = RawClient(server.port)
    c.option(nbd.OPT_ABORT)
    assert c.reply()[1] == nbd.REP_ACK
    c.close()


def test_bad_handshakes_do_not_hurt_the_server(served, tmp_path):
    server, data = served
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.recv(18)
        s.sendall(b"\x00\x00\x00\x03" + b"GARBAGE!" * 4)       # client flags 0x3, then garbage magic
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.recv(18)
        s.sendall(b"\x00\x00\x00\x01\x00")                     # closes mid-option
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.recv(18)
        s.sendall(b"\xff\xff\xff\xff")                         # unknown client flags
    with socket.create_connection(("127.0.0.1", server.port)):
        pass                                                   # closes before saying anything
    c = RawClient(server.port)
    c.go()
    c.sock.sendall(b"\x12\x34\x56\x78" + bytes(24))             # bad request magic: dropped
    assert c.sock.recv(1) == b""
    c.close()
    out = tmp_path / "out.img"
    assert run("nbdcopy", server.uri, str(out)).returncode == 0
    assert out.read_bytes() == data
    server.errors.clear()    # the dropped connections were logged there; nothing else may be


def test_port_in_use_is_a_clear_error():
    with NBDServer(BytesVolume(bytes(4096))) as first:
        with pytest.raises(NBDError, match="already in use"):
            NBDServer(BytesVolume(bytes(4096)), port=first.port)


def test_shutdown_drops_connected_clients():
    server = NBDServer(BytesVolume(bytes(4096))).start()
    c = RawClient(server.port)
    c.go()
    server.shutdown()
    assert c.sock.recv(1) == b""
    c.close()


def test_listens_on_ipv6():
    data = bytes(range(256)) * 64
    with NBDServer(BytesVolume(data, 512), "::1", 0) as server:
        assert server.uri == f"nbd://[::1]:{server.port}"
        c = RawClient(server.port, host="::1")
        c.go()
        assert c.read(1000, 100) == (0, data[1000:1100])
        c.close()
        result = run("nbdinfo", "--json", server.uri)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["exports"][0]["export-size"] == len(data)
    assert not server.errors


def test_unresolvable_host_is_a_clear_error():
    with pytest.raises(NBDError, match="cannot listen on no-such-host.invalid:0"):
        NBDServer(BytesVolume(bytes(4096)), "no-such-host.invalid", 0)


def serve_once(tmp_path, fetched):
    """Instead of waiting for Ctrl-C: one real client (nbdcopy) reads the export, then stop."""
    real_serve = NBDServer.serve_forever

    def serve(self):
        t = threading.Thread(target=real_serve, args=(self,), daemon=True)
        t.start()
        out = tmp_path / "served.img"
        fetched["uri"] = self.uri
        fetched["rc"] = run("nbdcopy", self.uri, str(out)).returncode
        fetched["data"] = out.read_bytes()
        self._stop.set()
        t.join()

    return serve


def test_serve_exports_the_view_a_restore_writes(tmp_path, monkeypatch):
    """`portjournal serve --at T`: nbdcopy of the export equals the redo restore of T, and the model."""
    writes = [(t, t % 3, (7 * t) % 64, Status.OK) for t in range(0, 3000, 11)]
    journal, model, _ = build_journal(tmp_path, 3, writes, Mode.REDO, block=512, blocks=64)
    folder = journal.folder
    journal.close()
    fetched = {}
    monkeypatch.setattr(NBDServer, "serve_forever", serve_once(tmp_path, fetched))
    runner = CliRunner()
    assert runner.invoke(cli, ["bookmark", "add", "-j", str(folder), "mid", "--at", "1500"]).exit_code == 0
    result = runner.invoke(cli, ["serve", "-j", str(folder), "--at", "mid", "--listen", "127.0.0.1:0"])
    assert result.exit_code == 0, result.output
    assert "nbd://127.0.0.1:" in result.output
    restored = tmp_path / "restored.img"
    done = runner.invoke(cli, ["restore", "-j", str(folder), "--at", "mid", "-o", str(restored)])
    assert done.exit_code == 0, done.output
    assert fetched["rc"] == 0
    assert fetched["data"] == restored.read_bytes() == model.image_at(1500)


def test_serve_listens_on_an_ipv6_literal(tmp_path, monkeypatch):
    writes = [(t, 0, t % 8, Status.OK) for t in range(0, 300, 13)]
    journal, model, _ = build_journal(tmp_path, 1, writes, Mode.REDO, block=512, blocks=8)
    folder = journal.folder
    journal.close()
    fetched = {}
    monkeypatch.setattr(NBDServer, "serve_forever", serve_once(tmp_path, fetched))
    result = CliRunner().invoke(cli, ["serve", "-j", str(folder), "--at", "100", "--listen", "[::1]:0"])
    assert result.exit_code == 0, result.output
    assert fetched["uri"].startswith("nbd://[::1]:") and fetched["rc"] == 0
    assert fetched["data"] == model.image_at(100)


def test_serve_command_rejects_a_bad_listen_address(tmp_path):
    result = CliRunner().invoke(cli, ["serve", "-j", str(tmp_path), "--at", "0", "--listen", "nowhere"])
    assert result.exit_code == 2 and "HOST:PORT" in result.output
