"""Merge (seed figure 9): one merged entry per block per window, with a port bit vector.

Windows are aligned on multiples of the window length in device time. For every window before
the consistency horizon and every block written in it, the merged entry keeps the net value:
the last write for redo, the first pre-image for copy-on-write (order: timestamp, port,
sequence). Only entries whose status is OK, that are block writes, and whose port was valid at
their timestamp count. The port bit vector of a window has bit p set when port p was valid for
the whole window.
"""

import numpy as np

from firmware.abi.entry import Kind, Mode, Status

# `seg`/`offset` locate the chosen entry in the received portion (stable across compaction).
MERGED_DTYPE = np.dtype([("window_end", "<u8"), ("lba", "<u8"), ("port_mask", "<u8"), ("seg", "<u4"),
                         ("offset", "<u8")])


def port_masks(windows: np.ndarray, window_ns: int, valid_from: np.ndarray,
               invalid_since: np.ndarray) -> np.ndarray:
    """Bit vector of the ports valid throughout each window index in `windows`."""
    start = windows.astype(np.uint64)[:, None] * np.uint64(window_ns)
    end = start + np.uint64(window_ns)
    valid = (valid_from[None, :] <= start) & (invalid_since[None, :] >= end)
    weights = np.left_shift(np.uint64(1), np.arange(len(valid_from), dtype=np.uint64))
    return (valid.astype(np.uint64) * weights[None, :]).sum(axis=1, dtype=np.uint64)


def merge(index: np.ndarray, *, mode: Mode, window_ns: int, start_ns: int, end_ns: int,
          valid_from: np.ndarray, invalid_since: np.ndarray) -> np.ndarray:
    """Merged entries for windows in [start_ns, end_ns) (both multiples of window_ns), by (window, lba).

    `index` rows are in storage order (host.journal.entries.INDEX_DTYPE)."""
    if start_ns % window_ns or end_ns % window_ns:
        raise ValueError("merge bounds must fall on window boundaries")
    ids = usable(index, start_ns, end_ns, valid_from, invalid_since)
    if not len(ids):
        return np.zeros(0, MERGED_DTYPE)
    everything = len(ids) == len(index)
    sub = {name: index[name] if everything else index[name][ids] for name in ("timestamp", "lba", "port")}
    order, window, lba = _block_time_order(sub, window_ns)
    change = (window[1:] != window[:-1]) | (lba[1:] != lba[:-1])
    if Mode(mode) == Mode.REDO:
        pick = np.flatnonzero(np.append(change, True))
    else:
        pick = np.flatnonzero(np.insert(change, 0, True))
    out = np.empty(len(pick), MERGED_DTYPE)
    out["window_end"] = (window[pick] + np.uint64(1)) * np.uint64(window_ns)
    out["lba"] = lba[pick]
    chosen = ids[order[pick]]
    out["seg"], out["offset"] = index["seg"][chosen], index["offset"][chosen]
    picked = window[pick]  # sorted
    uniq = picked[np.insert(picked[1:] != picked[:-1], 0, True)]
    out["port_mask"] = port_masks(uniq, window_ns, valid_from, invalid_since)[np.searchsorted(uniq, picked)]
    return out


def _bits(n: int) -> int:
    return max(int(n).bit_length(), 1)


def _block_time_order(sub: dict[str, np.ndarray], window_ns: int | None):
    """Sort entries by (window, lba, timestamp, port, sequence): (permutation, windows, lbas).

    `sub` holds columns in storage order, which per port is sequence order. With `window_ns`
    None everything is one window. Fast path: pack the first four keys into one uint64, sort
    it and read window and lba back out of the sorted keys; equal packed keys (one port
    writing one block twice in one nanosecond) need a stable sort to keep sequence order. Keys
    too wide to pack take a lexsort."""
    ts = sub["timestamp"]
    if window_ns is None:
        window = np.zeros(len(ts), np.uint64)
        offset = ts - ts.min()
        off_span = int(offset.max())
    else:
        window = ts // np.uint64(window_ns)
        offset = ts - window * np.uint64(window_ns)
        off_span = window_ns - 1
    w0 = window.min()
    spans = (_bits(int(window.max() - w0)), _bits(int(sub["lba"].max())), _bits(off_span),
             _bits(int(sub["port"].max())))
    if sum(spans) > 64:
        order = np.lexsort((sub["port"], ts, sub["lba"], window))
        return order, window[order], sub["lba"][order]
    _, lba_bits, off_bits, port_bits = (np.uint64(b) for b in spans)
    key = (((window - w0) << lba_bits | sub["lba"]) << (off_bits + port_bits)
           | offset << port_bits | sub["port"].astype(np.uint64))
    order = np.argsort(key)
    ordered = key[order]
    if np.any(ordered[1:] == ordered[:-1]):
        order = np.argsort(key, kind="stable")
        ordered = key[order]
    group = ordered >> (off_bits + port_bits)
    return order, (group >> lba_bits) + w0, group & ((np.uint64(1) << lba_bits) - np.uint64(1))


def usable(index: np.ndarray, start_ns: int, end_ns: int, valid_from: np.ndarray,
           invalid_since: np.ndarray) -> np.ndarray:
    """Ids of OK block writes stamped in [start_ns, end_ns) by a port valid at that time."""
    ts = index["timestamp"]
    ids = np.flatnonzero((ts >= start_ns) & (ts < end_ns))    # often a narrow span: filter it first
    rows = index[ids] if len(ids) < len(index) else index
    port = rows["port"]
    keep = ((rows["status"] == Status.OK) & (rows["kind"] == Kind.WRITE)
            & (rows["timestamp"] >= valid_from[port]) & (rows["timestamp"] < invalid_since[port]))
    return ids[keep]


def pick_per_block(index: np.ndarray, ids: np.ndarray, *, last: bool) -> tuple[np.ndarray, np.ndarray]:
    """Among entries `ids`, each block's last (or first) write: (lbas sorted, chosen ids)."""
    if not len(ids):
        return np.zeros(0, np.uint64), ids
    sub = {name: index[name][ids] for name in ("timestamp", "lba", "port")}
    order, _, lba = _block_time_order(sub, None)
    change = lba[1:] != lba[:-1]
    pick = np.flatnonzero(np.append(change, True) if last else np.insert(change, 0, True))
    return lba[pick], ids[order[pick]]


def merge_reference(headers: list[dict], *, mode: Mode, window_ns: int, start_ns: int, end_ns: int,
                    valid_from: list[int], invalid_since: list[int]) -> list[tuple[int, int, int, int]]:
    """The same result by a plain per-entry loop: the baseline and the tests' reference.

    `headers` are entry fields in storage order. Returns rows of (window_end, lba, port_mask,
    position of the chosen entry in `headers`) sorted by (window_end, lba).
    """
    best: dict[tuple[int, int], tuple[tuple[int, int, int], int]] = {}
    redo = Mode(mode) == Mode.REDO
    for eid, h in enumerate(headers):
        ts, p = h["timestamp"], h["port"]
        if not (start_ns <= ts < end_ns) or h["status"] != Status.OK or h["kind"] != Kind.WRITE:
            continue
        if not (valid_from[p] <= ts < invalid_since[p]):
            continue
        key = (ts // window_ns, h["lba"])
        rank = (ts, p, h["seq"])
        held = best.get(key)
        if held is None or (rank > held[0] if redo else rank < held[0]):
            best[key] = (rank, eid)
    rows = []
    for (w, lba), (_, eid) in sorted(best.items()):
        mask = sum(1 << p for p in range(len(valid_from))
                   if valid_from[p] <= w * window_ns and invalid_since[p] >= (w + 1) * window_ns)
        rows.append(((w + 1) * window_ns, lba, mask, eid))
    return rows
