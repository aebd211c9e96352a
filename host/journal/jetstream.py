"""The primary journal on NATS JetStream: one replicated stream per protected volume.

Named by a URL, `nats://HOST:PORT[,HOST:PORT...]/VOLUME` (several servers: the client fails
over among them). In the cluster, for volume V:

    stream PJ_V, replicas 3, with the subjects
      pj.V.j.port.P     port P's entry batches, in sequence order
      pj.V.j.merged     merged tables (more windows, or a rewrite of the whole portion)
      pj.V.j.state      the JournalState document (geometry, base copy, port validity,
                        bookmarks): its last message is the state, changed by compare-and-set
      pj.V.base.NAME    the base copy image NAME, in chunks (dropped by a purge of the subject)

One stream, so one replicated log (one Raft group) per volume: making a volume costs one
stream, and the journal's parts cannot be out of step with each other. Opening reads the
pj.V.j.> subjects from the start; base images are read only when a restore needs them.

An entry's location is (stream sequence of its batch, byte offset in the batch): the index's
`seg` and `offset`, the same on every host, so merged rows written by one host point at the
same entries for all. Any host can open the URL and restore.

A batch is published with the message id "PORT:FIRST-LAST:FLUSHED" and the header
Nats-Expected-Last-Subject-Sequence naming the port subject's last message this journal knows.
A publish whose acknowledgement was lost is retried as it was and deduplicated by its id; a
batch that would follow another writer's (a collector restarted after a crash, a zombie one)
is refused by JetStream, the journal reads what was stored and sends only what is new.
`append_round` publishes a round's batches (one per port, each on its own subject, so their
fences are independent) all at once and returns only once JetStream has acknowledged them,
i.e. once a majority of the replicas has each: only then may the collector acknowledge to the
port.
"""

import asyncio
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nats
import nats.errors
import numpy as np
from nats.js import api
from nats.js import errors as js_errors

from firmware.abi.entry import HEADER_BYTES

from .base import file_crc
from .entries import parse
from .event_loop import LoopThread
from .merge import MERGED_DTYPE
from .primary import Batch, JournalError, JournalRules
from .state import JournalState

REPLICAS = 3
DEDUP_WINDOW_S = 600            # a resend within 10 minutes of the first try is recognised by its id
MAX_MESSAGE_BYTES = 8 << 20     # the servers' max_payload (cluster/nats-N.conf)
DEADLINE_S = 60.0               # how long a request keeps trying through a leader election
REQUEST_TIMEOUT_S = 2.0
CONNECT_DEADLINE_S = 10.0       # how long opening a journal waits for a first server to answer
FLUSHED = "Pj-Flushed"          # header: the device time up to which the port has flushed
THROUGH = "Pj-Through"          # header: merged-table messages, windows merged up to this time
MERGED_KIND = "Pj-Merged"       # header: "append" (more windows) or "rewrite" (the whole portion)
CHUNKS = "Pj-Chunks"            # header: base image chunks, how many the image has
CHUNK_BYTES = 4 << 20
WRONG_LAST_SEQUENCE = 10071     # JetStream's error code for a failed expected-last-sequence check
VOLUME_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
# What a publish meets while a node is down or a stream leader is being elected: try again.
TRANSIENT = (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError,
             nats.errors.ConnectionReconnectingError, js_errors.ServiceUnavailableError,
             js_errors.NoStreamResponseError, asyncio.TimeoutError)


async def _ignore(exc: Exception) -> None:
    """The client's own reports of lost servers: a publish that meets one retries (or says so)."""


async def _all_of(coros: list[Coroutine]) -> list:
    """Each coroutine's result or exception, all run at once on the journal's loop."""
    return await asyncio.gather(*coros, return_exceptions=True)


class WrongLastSequence(JournalError):
    """Someone else published to this subject since this journal last looked."""


def is_journal_url(spec) -> bool:
    return str(spec).startswith("nats://")


def parse_url(url: str) -> tuple[list[str], str]:
    """(server URLs, volume name) of `nats://HOST:PORT[,HOST:PORT...]/VOLUME`."""
    parts = urlsplit(url)
    volume = parts.path.strip("/")
    if parts.scheme != "nats" or not parts.netloc or not VOLUME_NAME.match(volume):
        raise JournalError(f"{url} is not a journal URL: write nats://HOST:PORT[,HOST:PORT...]/VOLUME, with "
                           "a volume name of letters, digits, '-' and '_'")
    return [f"nats://{host}" for host in parts.netloc.split(",")], volume


class JetStreamJournal(JournalRules):
    """The primary journal of one volume, kept in a JetStream cluster."""

    def __init__(self, url: str, *, cache: Path | None = None):
        self.url = url
        self.servers, self.volume = parse_url(url)
        self.stream = f"PJ_{self.volume}"
        self.subject = f"pj.{self.volume}.j"          # the journal's subjects; base images beside it
        self.state_subject = f"{self.subject}.state"
        self._own_cache = cache is None
        self.folder = Path(tempfile.mkdtemp(prefix=f"pj-{self.volume}-")) if cache is None else Path(cache)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.state: JournalState | None = None
        self._loop = LoopThread(f"nats-{self.volume}")
        try:
            # Reconnects go on for as long as it takes; the first connection gives up in time.
            self._nc = self._run(asyncio.wait_for(
                nats.connect(self.servers, connect_timeout=REQUEST_TIMEOUT_S, reconnect_time_wait=0.2,
                             max_reconnect_attempts=-1, error_cb=_ignore), CONNECT_DEADLINE_S))
        except BaseException as exc:
            self._loop.close()
            if self._own_cache:
                shutil.rmtree(self.folder, ignore_errors=True)
            why = str(exc) or type(exc).__name__
            raise JournalError(f"cannot reach the NATS servers of {url}: {why} (is the cluster running? "
                               "'make cluster' starts one on 127.0.0.1:4222)") from exc
        self._js = self._nc.jetstream(timeout=REQUEST_TIMEOUT_S)

    def _run(self, coro):
        return self._loop.run(coro)

    def _ask(self, make: Callable[[], Coroutine], what: str):
        """Run the coroutine `make()` makes, again and again through a node's outage or a leader
        election, for up to DEADLINE_S; then JournalError naming `what` was asked."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            try:
                return self._run(make())
            except TRANSIENT as exc:
                if time.monotonic() > deadline:
                    raise JournalError(f"{self.url}: no answer from JetStream to {what} for "
                                       f"{DEADLINE_S:g} s ({type(exc).__name__}): is a majority of "
                                       "the cluster up?") from exc
                time.sleep(0.1)

    # --- creating and opening -------------------------------------------------------------

    @classmethod
    def create(cls, url: str, *, block_bytes: int, ports: int, mode, window_ns: int,
               replicas: int = REPLICAS, cache: Path | None = None) -> "JetStreamJournal":
        """Make the volume's stream, replicated `replicas` times, and store its first state."""
        state = JournalState(block_bytes=block_bytes, ports=ports, mode=int(mode), window_ns=window_ns)
        journal = cls(url, cache=cache)
        try:
            config = api.StreamConfig(name=journal.stream, subjects=[f"pj.{journal.volume}.>"],
                                      num_replicas=replicas, storage=api.StorageType.FILE,
                                      duplicate_window=DEDUP_WINDOW_S, max_msg_size=MAX_MESSAGE_BYTES)
            journal._ask(lambda: journal._js.add_stream(config), "making the stream")
            journal._tails = {journal.state_subject: 0}
            try:
                journal._publish(journal.state_subject, state.to_json(), f"create:{uuid.uuid4()}")
            except WrongLastSequence:
                raise JournalError(f"{url} already holds a journal: open it as it is, or choose another "
                                   "volume name") from None
            journal._load()
        except BaseException:
            journal.close()
            raise
        return journal

    @classmethod
    def open(cls, url: str, *, readonly: bool = False, cache: Path | None = None) -> "JetStreamJournal":
        """Open the volume's journal and read it all (any host, any number at once).

        `readonly` is accepted for the local store's callers: JetStream's own checks keep
        concurrent writers apart, so opening never locks."""
        journal = cls(url, cache=cache)
        try:
            journal._load()
        except BaseException:
            journal.close()
            raise
        return journal

    def _load(self) -> None:
        try:
            self._ask(lambda: self._js.stream_info(self.stream), "a look at the stream")
            first = self._ask(lambda: self._js.get_last_msg(self.stream, self.state_subject), "the state")
        except js_errors.NotFoundError:
            raise JournalError(f"{self.url} holds no journal: create one ('portjournal journal create -j "
                               f"{self.url} --ports N')") from None
        self.state = self._state_of(first.data)
        ports = self.state.ports
        self.last_seq = np.array([p.compacted_seq for p in self.state.port_state], dtype=np.int64)
        self.flushed_through = np.zeros(ports, np.uint64)
        self.merged = np.zeros(0, MERGED_DTYPE)
        self.merged_through = 0
        self._chunks: list[np.ndarray] = []
        self._index: np.ndarray | None = None
        self._markers = None
        self._payloads: dict[int, bytes] = {}
        self._read_through = 0           # stream sequence up to which every message is taken in
        self._ahead: set[int] = set()    # own messages taken in before the reader reached them
        self._tails = {f"{self.subject}.port.{p}": 0 for p in range(ports)}   # last sequence per subject
        self._tails |= {f"{self.subject}.merged": 0, self.state_subject: 0}
        self._epoch = 0                  # set by the first state message: see _publish
        self.catch_up()

    def _state_of(self, data: bytes) -> JournalState:
        try:
            return JournalState.from_json(data)
        except ValueError as exc:
            raise JournalError(f"{self.url}: the journal state is unreadable: {exc}") from exc

    def close(self) -> None:
        if self._loop.loop.is_closed():
            return
        try:
            self._run(self._nc.close())
        finally:
            self._loop.close()
            if self._own_cache:
                shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @classmethod
    def delete(cls, url: str, *, keep_stream: bool = False) -> None:
        """Remove the volume's journal and base copies from the cluster. With `keep_stream` the
        stream is only emptied, and a journal can be created in it again without making one."""
        journal = cls(url)
        try:
            if keep_stream:
                journal._run(journal._js.purge_stream(journal.stream))
            else:
                journal._run(journal._js.delete_stream(journal.stream))
        except js_errors.NotFoundError:
            pass
        finally:
            journal.close()

    def cluster_info(self) -> api.ClusterInfo:
        """Which server leads the volume's stream, and how its replicas stand."""
        return self._ask(lambda: self._js.stream_info(self.stream), "a look at the stream").cluster

    # --- the small state ----------------------------------------------------------------------

    def update_state(self, change: Callable[[JournalState], None]) -> JournalState:
        """Apply `change` to the state as the cluster holds it, by compare-and-set on the state
        subject: another host's change made meanwhile is read again and kept."""
        while True:
            last = self._ask(lambda: self._js.get_last_msg(self.stream, self.state_subject), "the state")
            fresh = self._state_of(last.data)
            change(fresh)
            self._tails[self.state_subject] = max(self._tails[self.state_subject], last.seq)
            try:
                seq = self._publish(self.state_subject, fresh.to_json(), f"{self._epoch}:state:{last.seq}")
            except WrongLastSequence:
                continue
            self._take_own(seq, self.state_subject, fresh.to_json(), {})
            return self.state

    # --- the base copy ------------------------------------------------------------------------

    def _base_subject(self, name: str) -> str:
        return f"pj.{self.volume}.base.{name.replace('.', '_')}"

    def keep_base(self, image: Path, name: str) -> None:
        """Store the image `name` in the volume's stream (replicated, in chunks) and keep it cached."""
        subject = self._base_subject(name)
        size = image.stat().st_size
        count = max(-(-size // CHUNK_BYTES), 1)
        self._ask(lambda: self._js.purge_stream(self.stream, subject=subject), "a purge")  # an earlier try
        with open(image, "rb") as f:
            for n in range(count):
                chunk = f.read(CHUNK_BYTES)
                headers = {CHUNKS: str(count), "Nats-Msg-Id": f"{self._epoch}:base:{name}:{n}:{uuid.uuid4()}"}
                self._ask(partial(self._js.publish, subject, chunk, timeout=30, headers=headers),
                          f"a chunk of {name}")
        image.replace(self.folder / name)

    def drop_base(self, name: str) -> None:
        self._run(self._js.purge_stream(self.stream, subject=self._base_subject(name)))
        (self.folder / name).unlink(missing_ok=True)

    def base_image(self) -> Path:
        """The current base copy, fetched from the cluster into the local cache the first time
        and checked against the CRC-32C the state recorded."""
        base = self.state.base
        path = self.folder / base.path
        if not path.exists():
            partial = path.with_name(base.path + ".partial")
            with open(partial, "wb") as f:
                self._run(self._fetch_base(self._base_subject(base.path), f))
            if base.crc32c is not None and file_crc(partial) != base.crc32c:
                partial.unlink()
                raise JournalError(f"{self.url}: the base copy {base.path} read from the cluster does not "
                                   "match its recorded CRC-32C")
            partial.replace(path)
        return path

    async def _fetch_base(self, subject: str, out) -> None:
        sub = await self._js.subscribe(subject, stream=self.stream, ordered_consumer=True)
        try:
            done = count = 0
            while not count or done < count:
                msg = await sub.next_msg(timeout=30)
                out.write(msg.data)
                done, count = done + 1, int(msg.headers[CHUNKS])
        finally:
            await sub.unsubscribe()

    # --- the received portion -------------------------------------------------------------

    def append_round(self, batches: Sequence[Batch]) -> list[int | JournalError]:
        """Publish a round of batches (one per port) all at once and wait for every acknowledgement;
        per batch, the highest sequence of its port JetStream acknowledged, or the JournalError
        that kept that batch out while the others were stored.

        As LocalJournal.append_round: a resend is dropped, a gap is a SequenceGap. Each publish
        is fenced by its own port subject's last sequence, so the ports' publishes are
        independent of each other; a batch refused because another writer published to its
        subject meanwhile is cut, after reading what was stored, to what is new and sent again."""
        self.check_round(batches)
        outcomes: list[int | JournalError | None] = [None] * len(batches)
        todo = list(range(len(batches)))
        for _ in range(3):
            sends = {}
            for i in todo:
                port, raw, flushed_through, device_port = batches[i]
                try:
                    rows, starts = self.fresh_entries(port, raw, device_port)
                except JournalError as exc:
                    outcomes[i] = exc
                    continue
                flushed = max(int(flushed_through), int(self.flushed_through[port]))
                if not len(rows) and flushed == int(self.flushed_through[port]):
                    outcomes[i] = int(self.last_seq[port])
                    continue
                payload = bytes(memoryview(raw)[int(starts[0]):]) if len(rows) else b""
                span = f"{rows['seq'][0]}-{rows['seq'][-1]}" if len(rows) else "none"
                sends[i] = (f"{self.subject}.port.{port}", payload, f"{self._epoch}:{port}:{span}:{flushed}",
                            {FLUSHED: str(flushed)})
            acks = self._run(_all_of([self._publish_async(*m) for m in sends.values()])) if sends else []
            todo, crash = [], None
            for (i, (subject, payload, _, headers)), ack in zip(sends.items(), acks, strict=True):
                if isinstance(ack, WrongLastSequence):
                    todo.append(i)
                elif isinstance(ack, JournalError):
                    outcomes[i] = ack
                elif isinstance(ack, BaseException):
                    crash = crash or ack
                else:
                    self._take_own(ack, subject, payload, headers)
                    outcomes[i] = int(self.last_seq[batches[i].port])
            if crash is not None:
                raise crash
            if not todo:
                return outcomes
            self.catch_up()
        for i in todo:
            outcomes[i] = JournalError(f"port {batches[i].port}: other writers keep publishing to its "
                                       "subject: is a second collector collecting this port?")
        return outcomes

    def _publish(self, subject: str, payload: bytes, msg_id: str, headers: dict | None = None) -> int:
        """Publish until JetStream acknowledges (retrying through outages); return the stream sequence."""
        return self._run(self._publish_async(subject, payload, msg_id, headers))

    def _publish_async(self, subject: str, payload: bytes, msg_id: str,
                       headers: dict | None = None) -> Coroutine[Any, Any, int]:
        """A publish, retried through a node's outage or a leader election for up to DEADLINE_S.

        `msg_id` names the message for deduplication: a retry of the same publish is stored once.
        Ids start with the journal's epoch (the sequence of its first state message), so a
        journal created again in an emptied stream does not collide with the one before. The
        expected last sequence of `subject` is this journal's, taken now (before any await)."""
        headers = (headers or {}) | {"Nats-Msg-Id": msg_id,
                                     "Nats-Expected-Last-Subject-Sequence": str(self._tails[subject])}

        async def publish() -> int:
            deadline = time.monotonic() + DEADLINE_S
            while True:
                try:
                    return (await self._js.publish(subject, payload, timeout=REQUEST_TIMEOUT_S,
                                                   headers=headers)).seq
                except TRANSIENT as exc:
                    if time.monotonic() > deadline:
                        raise JournalError(f"{self.url}: no answer from JetStream to a publish to {subject} "
                                           f"for {DEADLINE_S:g} s ({type(exc).__name__}): is a majority of "
                                           "the cluster up?") from exc
                    await asyncio.sleep(0.1)
                except js_errors.BadRequestError as exc:
                    if exc.err_code == WRONG_LAST_SEQUENCE:
                        raise WrongLastSequence(f"{subject}: {exc.description}") from exc
                    raise JournalError(f"{subject}: JetStream refused the publish: "
                                       f"{exc.description}") from exc

        return publish()

    def _take_own(self, seq: int, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        """Take in a message this journal published, unless the reader has already (a deduplicated
        resend is acknowledged with the first copy's sequence)."""
        if seq <= self._read_through or seq in self._ahead:
            return
        self._ahead.add(seq)
        self._take(seq, subject, payload, headers)

    def catch_up(self) -> int:
        """Read what every writer stored since this journal last looked, and the state; return how
        many entries came in."""
        before = len(self.index)
        news = self._ask(lambda: self._fetch(self._read_through + 1), "a read of the stream")
        for seq, subject, data, headers in news:
            if seq in self._ahead:
                self._ahead.discard(seq)
            else:
                self._take(seq, subject, data, headers)
            self._read_through = seq
        return len(self.index) - before

    async def _fetch(self, start: int) -> list[tuple[int, str, bytes, dict]]:
        """Every message of the stream from sequence `start` to the last one now stored."""
        try:
            last = (await self._js.get_last_msg(self.stream, f"{self.subject}.>")).seq
        except js_errors.NotFoundError:
            return []
        if last < start:
            return []
        sub = await self._js.subscribe(f"{self.subject}.>", stream=self.stream, ordered_consumer=True,
                                       config=api.ConsumerConfig(
                                           deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                                           opt_start_seq=start))
        got = []
        try:
            while True:
                msg = await sub.next_msg(timeout=10)
                seq = msg.metadata.sequence.stream
                got.append((seq, msg.subject, msg.data, msg.headers or {}))
                if seq >= last:
                    return got
        finally:
            await sub.unsubscribe()

    def _take(self, seq: int, subject: str, data: bytes, headers: dict) -> None:
        if seq <= self._tails.get(subject, 0):
            return                        # older than one taken in already (update_state reads ahead)
        self._tails[subject] = seq
        if subject == self.state_subject:
            self.state = self._state_of(data)
            self._epoch = self._epoch or seq
            return
        if subject == f"{self.subject}.merged":
            rows = np.frombuffer(data, MERGED_DTYPE).copy()
            through = int(headers[THROUGH])
            if headers[MERGED_KIND] == "rewrite":
                self.merged, self.merged_through = rows, through
            else:
                self.merged = np.concatenate([self.merged, rows])
                self.merged_through = max(self.merged_through, through)
            return
        port = int(subject.rsplit(".", 1)[1])
        rows, starts = parse(data, self.state.block_bytes)
        rows["port"] = port                       # the volume's port (the device's may differ)
        if len(rows):
            rows["seg"], rows["offset"] = seq, starts
            self._add_rows(rows)
            self._payloads[seq] = data
            self.last_seq[port] = max(int(self.last_seq[port]), int(rows["seq"][-1]))
        self.flushed_through[port] = max(int(self.flushed_through[port]), int(headers[FLUSHED]))


    def read_at(self, segs: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """The data blocks of the entries at (stream sequence, offset in the batch)."""
        block = self.state.block_bytes
        out = np.empty((len(segs), block), np.uint8)
        for seq in np.unique(segs):
            sel = np.flatnonzero(segs == seq)
            raw = np.frombuffer(self._payload(int(seq)), np.uint8)
            rows = np.lib.stride_tricks.as_strided(raw, shape=(max(len(raw) - block + 1, 0), block),
                                                   strides=(1, 1), writeable=False)
            out[sel] = rows[offsets[sel].astype(np.int64) + HEADER_BYTES]
        return out

    def _payload(self, seq: int) -> bytes:
        data = self._payloads.get(seq)
        if data is None:
            data = self._ask(lambda: self._js.get_msg(self.stream, seq), f"message {seq}").data
            self._payloads[seq] = data
        return data

    # --- the merged portion -----------------------------------------------------------------

    def merge(self) -> np.ndarray:
        """Merge up to the horizon as every collector's flushes set it (read first)."""
        self.catch_up()
        return super().merge()

    def append_merged(self, table: np.ndarray, through_ns: int) -> None:
        """Publish merged windows up to `through_ns`, in messages that fit the cluster's limit
        (cut at window boundaries). Another host that merged the same windows first wins: its
        rows are read instead."""
        for rows, through in self._merged_pieces(table.astype(MERGED_DTYPE), through_ns):
            self._publish_merged(rows, f"{self._epoch}:merged:{self.merged_through}-{through}",
                                 {THROUGH: str(through), MERGED_KIND: "append"})

    def rewrite_merged(self, rows: np.ndarray, through_ns: int) -> None:
        """Replace the merged portion with `rows`, merged through `through_ns`, in one message."""
        rows = rows.astype(MERGED_DTYPE)
        if rows.nbytes > MAX_MESSAGE_BYTES:
            raise JournalError(f"the merged portion ({rows.nbytes} bytes) is larger than one message")
        self._publish_merged(rows, f"{self._epoch}:rewrite:{self._tails[f'{self.subject}.merged']}",
                             {THROUGH: str(through_ns), MERGED_KIND: "rewrite"})

    def _publish_merged(self, rows: np.ndarray, msg_id: str, headers: dict[str, str]) -> None:
        subject = f"{self.subject}.merged"
        try:
            seq = self._publish(subject, rows.tobytes(), msg_id, headers)
        except WrongLastSequence:
            self.catch_up()
            return
        self._take_own(seq, subject, rows.tobytes(), headers)

    def _merged_pieces(self, table: np.ndarray, through_ns: int):
        """(rows, merged-through time) pieces of `table`, each within one message."""
        per_message = MAX_MESSAGE_BYTES // MERGED_DTYPE.itemsize
        ends = table["window_end"]
        start = 0
        while len(table) - start > per_message:
            cut = int(np.searchsorted(ends, ends[start + per_message], side="left"))
            if cut == start:
                raise JournalError(f"one merge window holds more than {per_message} blocks: use a shorter "
                                   "window")
            yield table[start:cut], int(ends[cut]) - self.state.window_ns
            start = cut
        yield table[start:], through_ns
