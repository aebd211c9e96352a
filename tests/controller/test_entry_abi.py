"""Entry format: packing, checking and the numpy record agree."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware.abi.entry import (
    EntryError,
    Kind,
    Mode,
    Status,
    entry_bytes,
    entry_dtype,
    pack,
    unpack,
)

fields = st.fixed_dictionaries({
    "seq": st.integers(0, 2**32 - 1), "port": st.integers(0, 255),
    "mode": st.sampled_from(Mode), "status": st.sampled_from(Status), "kind": st.just(Kind.WRITE),
    "timestamp": st.integers(0, 2**64 - 1), "lba": st.integers(0, 2**64 - 1),
})


@given(fields, st.binary(min_size=16, max_size=16))
def test_roundtrip(f, data):
    raw = pack(**f, data=data)
    assert len(raw) == entry_bytes(16) and len(raw) % 8 == 0
    got, got_data = unpack(raw)
    assert got_data == data
    assert got == {**{k: int(v) for k, v in f.items()}, "length": 16}
    record = np.frombuffer(raw, entry_dtype(16))[0]
    assert int(record["header"]["lba"]) == f["lba"] and bytes(record["data"]) == data


@pytest.mark.parametrize("offset", [0, 5, 8, 31, 32, 40, 47])
def test_any_flipped_bit_is_caught(offset):
    raw = bytearray(pack(seq=1, port=2, mode=Mode.REDO, status=Status.OK, kind=Kind.WRITE,
                         timestamp=3, lba=4, data=bytes(range(8))))
    raw[offset] ^= 0x10
    with pytest.raises(EntryError):
        unpack(bytes(raw))


def test_truncated_entry_is_rejected():
    raw = pack(seq=1, port=0, mode=Mode.REDO, status=Status.OK, kind=Kind.WRITE, timestamp=1, lba=0,
               data=bytes(64))
    with pytest.raises(EntryError, match="header says"):
        unpack(raw[:-8])
