"""``TransfersAhead``'s bookkeeping: the bound on running transfers, the pair lock held while
one runs, lease tokens and paths, and that every transfer nobody will wait for is stopped.
The rclone side and the lock are faked here (the real ones are in
tests/integration/test_transfer_ahead_e2e.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from uploader.pipeline import transfer_ahead
from uploader.pipeline.transfer_ahead import TransfersAhead


@dataclass
class FakePending:
    name: str
    remote_path: str
    running: bool = True


@dataclass
class FakeClient:
    abandoned: list[str] = field(default_factory=list)
    waited: list[str] = field(default_factory=list)

    def upload_running(self, pending: FakePending) -> bool:
        return pending.running

    def abandon_upload(self, pending: FakePending) -> None:
        self.abandoned.append(pending.name)
        pending.running = False

    def finish_upload(self, pending: FakePending) -> str:
        self.waited.append(pending.name)
        pending.running = False
        return f"result of {pending.name}"


class FakeLocks:
    taken_elsewhere: set[tuple[int, str]] = set()

    def __init__(self, engine: Any) -> None:
        self.held: set[tuple[int, str]] = set()

    def acquire(self, rid: int, slug: str) -> bool:
        if (rid, slug) in self.taken_elsewhere:
            return False
        self.held.add((rid, slug))
        return True

    def release(self, rid: int, slug: str) -> None:
        self.held.discard((rid, slug))

    def close(self) -> None:
        self.held.clear()


@dataclass(frozen=True)
class Remote:
    slug: str = "r1"


@dataclass(frozen=True)
class Job:
    recording_id: int
    remote: Remote = Remote()


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[FakePending]:
    made: list[FakePending] = []

    def fake_start(ctx: Any, job: Job, client: Any, encoded: Any) -> FakePending | None:
        if job.recording_id < 0:
            raise OSError("disk full")
        if job.recording_id == 0:
            return None
        path = f"path/{job.recording_id}"
        again = sum(1 for m in made if m.remote_path == path)  # a restarted pair: p1, p1#2, …
        name = f"p{job.recording_id}" + (f"#{again + 1}" if again else "")
        made.append(FakePending(name, path))
        return made[-1]

    monkeypatch.setattr(transfer_ahead, "start_transfer", fake_start)
    monkeypatch.setattr(transfer_ahead, "PairLocks", FakeLocks)
    FakeLocks.taken_elsewhere = set()
    return made


def start(ahead: TransfersAhead, client: FakeClient, rid: int, token: str = "t") -> bool:
    return ahead.start(None, Job(rid), client, token, None)  # type: ignore[arg-type]


def held(ahead: TransfersAhead) -> set[tuple[int, str]]:
    return ahead._locks.held if ahead._locks is not None else set()  # type: ignore[attr-defined]


def test_only_max_running_go_ahead_and_a_finished_one_frees_its_place_and_lock(
    started: list[FakePending],
) -> None:
    ahead, client = TransfersAhead(lambda: None), FakeClient()  # type: ignore[arg-type,return-value]
    for rid in range(1, transfer_ahead.MAX_RUNNING + 1):
        assert start(ahead, client, rid)
    assert not start(ahead, client, 99)  # the bound holds
    assert held(ahead) == {(rid, "r1") for rid in range(1, transfer_ahead.MAX_RUNNING + 1)}
    started[0].running = False  # one finished: its lock goes, its place is free
    assert start(ahead, client, 99)
    assert (1, "r1") not in held(ahead) and (99, "r1") in held(ahead)
    assert ahead.running() == transfer_ahead.MAX_RUNNING


def test_a_pair_locked_elsewhere_is_not_started(started: list[FakePending]) -> None:
    FakeLocks.taken_elsewhere = {(5, "r1")}
    ahead, client = TransfersAhead(lambda: None), FakeClient()  # type: ignore[arg-type,return-value]
    assert not start(ahead, client, 5)
    assert started == [] and len(ahead) == 0


def test_finish_waits_then_releases_the_lock(started: list[FakePending]) -> None:
    ahead, client = TransfersAhead(lambda: None), FakeClient()  # type: ignore[arg-type,return-value]
    start(ahead, client, 1, "mine")
    assert ahead.finish(1, "r1", "mine", "path/1") == "result of p1"
    assert client.waited == ["p1"] and held(ahead) == set() and len(ahead) == 0
    assert ahead.finish(1, "r1", "mine", "path/1") is None  # handed over once


def test_finish_trusts_nothing_under_another_token_or_path(started: list[FakePending]) -> None:
    ahead, client = TransfersAhead(lambda: None), FakeClient()  # type: ignore[arg-type,return-value]
    start(ahead, client, 1, "old")
    start(ahead, client, 2, "t")
    assert ahead.finish(1, "r1", "new", "path/1") is None
    assert ahead.finish(2, "r1", "t", "another/path") is None
    assert client.abandoned == ["p1", "p2"] and client.waited == []
    assert held(ahead) == set()


def test_a_restarted_pair_replaces_its_old_transfer(started: list[FakePending]) -> None:
    ahead, client = TransfersAhead(lambda: None), FakeClient()  # type: ignore[arg-type,return-value]
    start(ahead, client, 1, "first")
    started[0].running = False
    start(ahead, client, 1, "second")
    assert client.abandoned == ["p1"] and len(ahead) == 1
    assert ahead.finish(1, "r1", "second", "path/1") == "result of p1#2"


def test_nothing_is_kept_or_locked_that_cannot_be_started(started: list[FakePending]) -> None:
    ahead, client = TransfersAhead(lambda: None), FakeClient()  # type: ignore[arg-type,return-value]
    assert not start(ahead, client, 0)  # the transport cannot (cli)
    assert not start(ahead, client, -1)  # the FLAC cannot be read: the upload step reports it
    assert len(ahead) == 0 and held(ahead) == set()


def test_old_entries_are_stopped_beyond_max_kept(
    started: list[FakePending], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer_ahead, "MAX_KEPT", 3)
    ahead, client = TransfersAhead(lambda: None), FakeClient()  # type: ignore[arg-type,return-value]
    for rid in range(1, 6):
        for p in started:
            p.running = False  # each finished before the next starts
        assert start(ahead, client, rid)
    assert len(ahead) == 3 and client.abandoned == ["p1", "p2"]


def test_discard_and_close_stop_what_nobody_waits_for(started: list[FakePending]) -> None:
    ahead, client = TransfersAhead(lambda: None), FakeClient()  # type: ignore[arg-type,return-value]
    start(ahead, client, 1)
    start(ahead, client, 2)
    ahead.discard((1, "r1"))
    ahead.discard((7, "r1"))  # unknown: nothing happens
    assert client.abandoned == ["p1"] and held(ahead) == {(2, "r1")}
    ahead.close()
    assert client.abandoned == ["p1", "p2"] and len(ahead) == 0 and held(ahead) == set()


def test_the_watcher_releases_the_lock_of_a_finished_transfer_nobody_took(
    started: list[FakePending], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle worker must not keep a pair locked that another worker could upload."""
    import time

    monkeypatch.setattr(transfer_ahead, "WATCH_S", 0.01)
    ahead, client = TransfersAhead(lambda: None), FakeClient()  # type: ignore[arg-type,return-value]
    start(ahead, client, 1)
    assert held(ahead) == {(1, "r1")}
    started[0].running = False
    deadline = time.monotonic() + 5
    while held(ahead) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert held(ahead) == set()
    assert ahead.finish(1, "r1", "t", "path/1") == "result of p1"  # still handed over
