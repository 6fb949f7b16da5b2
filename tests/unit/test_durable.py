"""The fsync journal (node setting `fsync = true`): the same file format as
pysyncobj's, with every entry and every term/vote change synced before returning."""

from __future__ import annotations

import os

import pysyncobj.syncobj as pysyncobj_syncobj
from pysyncobj.journal import FileJournal

from raftflow.raft.durable import SyncedJournal, journal_factory


def count_fsyncs(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)
    monkeypatch.setattr(os, "fsync", counting)
    return calls


def test_every_entry_and_vote_is_synced_before_add_returns(tmp_path, monkeypatch):
    journal = SyncedJournal(str(tmp_path / "journal"))
    calls = count_fsyncs(monkeypatch)
    for idx in range(1, 201):        # enough to make pysyncobj grow (re-map) the file
        before = len(calls)
        journal.add(b"\x00command-%d" % idx + b"x" * 100, idx, 1)
        assert len(calls) == before + 1, f"entry {idx} was not synced"
    before = len(calls)
    journal.setCurrentTerm(7, "n2")
    assert len(calls) >= before + 2, "term/vote meta must be synced with its directory"
    journal._destroy()

    reread = FileJournal(str(tmp_path / "journal"))      # pysyncobj reads the same format
    assert len(reread) == 200 and reread[199][1:] == (200, 1)
    assert reread.getCurrentTerm() == 7 and reread.getVotedForNodeId() == "n2"
    reread._destroy()


def test_compaction_rewrites_once_and_truncation_syncs(tmp_path, monkeypatch):
    journal = SyncedJournal(str(tmp_path / "journal"))
    for idx in range(1, 101):
        journal.add(b"\x00c%d" % idx, idx, 1)
    calls = count_fsyncs(monkeypatch)
    journal.deleteEntriesTo(60)
    assert len(calls) == 1, "a compaction rewrite is synced once, at its end"
    journal.deleteEntriesFrom(30)
    assert len(calls) == 2
    journal._destroy()
    reread = FileJournal(str(tmp_path / "journal"))
    assert [entry[1] for entry in reread] == list(range(61, 91))
    reread._destroy()


def test_the_factory_swaps_the_journal_only_when_asked_and_only_inside(tmp_path):
    original = pysyncobj_syncobj.createJournal
    with journal_factory(False):
        assert pysyncobj_syncobj.createJournal is original
    with journal_factory(True):
        assert isinstance(pysyncobj_syncobj.createJournal(str(tmp_path / "j")), SyncedJournal)
        assert not isinstance(pysyncobj_syncobj.createJournal(None), SyncedJournal)
    assert pysyncobj_syncobj.createJournal is original
