"""Link frames: encoding round trip and every kind of damage is refused."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware.abi.frames import IDENTITY, IMAGE_VERSION, FrameError, FrameType, NakReason, decode, encode


@given(st.sampled_from(FrameType), st.integers(0, 255), st.integers(0, 65535), st.binary(max_size=3000))
def test_roundtrip_and_single_delimiter(ftype, port, seq, payload):
    wire = encode(ftype, payload, port=port, seq=seq)
    assert wire.count(0) == 1 and wire.endswith(b"\0")
    assert decode(wire[:-1]) == (ftype, port, seq, payload)


@pytest.mark.parametrize("damage", ["flip", "truncate", "extend"])
def test_damage_is_refused(damage):
    wire = bytearray(encode(FrameType.JOURNAL, bytes(range(1, 200)), port=2, seq=7)[:-1])
    if damage == "flip":
        wire[50] ^= 0x04
    elif damage == "truncate":
        del wire[-3:]
    else:
        wire += b"\x01"
    with pytest.raises(FrameError):
        decode(bytes(wire))


def test_identity_and_nak_reasons():
    assert IDENTITY.size == 16 and 0 < IMAGE_VERSION < 2**32
    assert len(set(NakReason)) == len(NakReason) and max(NakReason) < 256
    assert NakReason.BAD_PORT == 5
