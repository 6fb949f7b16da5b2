"""The Raft command envelope: round trip, and damage detected instead of applied."""

from __future__ import annotations

import pytest

from raftflow.core import commands as c
from raftflow.raft.adapter import StorageDamaged, check_snapshot, decode_envelope, encode_envelope


def test_envelope_round_trips():
    command = c.SetPaused("etl", True, 1234.5)
    assert decode_envelope(encode_envelope(command, "n1")) == command


def test_a_flipped_byte_is_damage_not_a_command():
    data = bytearray(encode_envelope(c.SetPaused("etl", True, 1234.5), "n1"))
    data[data.find(b"etl")] ^= 0x01
    with pytest.raises(StorageDamaged, match="checksum mismatch in a 'set_paused' entry"):
        decode_envelope(bytes(data))
    with pytest.raises(StorageDamaged):
        decode_envelope(b"\xff\xff\xff")


def test_an_unreadable_snapshot_is_damage(tmp_path):
    check_snapshot(tmp_path / "absent")            # no snapshot yet: fine
    (tmp_path / "snapshot").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    with pytest.raises(StorageDamaged, match="cannot be read"):
        check_snapshot(tmp_path / "snapshot")
