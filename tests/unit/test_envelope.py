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
    (tmp_path / "snapshot").write_bytes(b"\x1f\x8b\x08\x00 an old gzip snapshot")
    with pytest.raises(StorageDamaged, match="is not a raftflow snapshot"):
        check_snapshot(tmp_path / "snapshot")


def test_an_entry_from_before_checksums_still_decodes():
    from raftflow.core.commands import encode_payload
    from raftflow.proto import command_pb2

    command = c.SetPaused("etl", False, 1.0)
    old = command_pb2.CommandEnvelope(type=command.TYPE, version=command.VERSION, payload=encode_payload(command))
    assert decode_envelope(old.SerializeToString()) == command


def test_time_zone_rules_come_from_the_pinned_package_not_the_host():
    import zoneinfo

    import tzdata  # noqa: F401 - the pinned rules must be installed

    assert zoneinfo.TZPATH == ()
    assert zoneinfo.ZoneInfo("Europe/Berlin").key == "Europe/Berlin"
