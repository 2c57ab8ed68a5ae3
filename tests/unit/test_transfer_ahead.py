"""``TransfersAhead``'s bookkeeping: the bound on running transfers, lease tokens, and that
every transfer nobody will wait for is stopped. The rclone side is faked here (the real
daemon is in tests/integration/test_transfer_ahead_e2e.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from uploader import transfer_ahead
from uploader.transfer_ahead import TransfersAhead


@dataclass
class FakePending:
    name: str
    running: bool = True


@dataclass
class FakeClient:
    abandoned: list[str] = field(default_factory=list)

    def upload_running(self, pending: FakePending) -> bool:
        return pending.running

    def abandon_upload(self, pending: FakePending) -> None:
        self.abandoned.append(pending.name)
        pending.running = False


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

    def fake_start(ctx: Any, job: Job, client: Any) -> FakePending | None:
        if job.recording_id < 0:
            raise OSError("disk full")
        if job.recording_id == 0:
            return None
        made.append(FakePending(f"p{job.recording_id}"))
        return made[-1]

    monkeypatch.setattr(transfer_ahead, "start_transfer", fake_start)
    return made


def start(ahead: TransfersAhead, client: FakeClient, rid: int, token: str = "t") -> bool:
    return ahead.start(None, Job(rid), client, token)  # type: ignore[arg-type]


def test_only_max_running_go_ahead_and_finished_ones_free_a_place(
    started: list[FakePending],
) -> None:
    ahead, client = TransfersAhead(), FakeClient()
    for rid in range(1, transfer_ahead.MAX_RUNNING + 1):
        assert start(ahead, client, rid)
    assert not start(ahead, client, 99)  # the bound holds
    started[0].running = False  # one finished
    assert start(ahead, client, 99)
    assert ahead.running() == transfer_ahead.MAX_RUNNING


def test_take_hands_over_only_under_the_same_lease_token(started: list[FakePending]) -> None:
    ahead, client = TransfersAhead(), FakeClient()
    start(ahead, client, 1, "mine")
    start(ahead, client, 2, "old")
    assert ahead.take(1, "r1", "mine") is started[0]
    assert client.abandoned == []
    # a step under a newer lease must not trust a transfer started under an older one
    assert ahead.take(2, "r1", "new") is None
    assert client.abandoned == ["p2"]
    assert ahead.take(3, "r1", "mine") is None and len(ahead) == 0


def test_a_restarted_pair_replaces_its_old_transfer(started: list[FakePending]) -> None:
    ahead, client = TransfersAhead(), FakeClient()
    start(ahead, client, 1, "first")
    started[0].running = False
    start(ahead, client, 1, "second")
    assert client.abandoned == ["p1"] and len(ahead) == 1
    assert ahead.take(1, "r1", "second") is started[1]


def test_nothing_is_kept_that_cannot_be_started(started: list[FakePending]) -> None:
    ahead, client = TransfersAhead(), FakeClient()
    assert not start(ahead, client, 0)  # the transport cannot (cli)
    assert not start(ahead, client, -1)  # the FLAC cannot be read: the upload step reports it
    assert len(ahead) == 0


def test_old_entries_are_stopped_beyond_max_kept(
    started: list[FakePending], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer_ahead, "MAX_KEPT", 3)
    ahead, client = TransfersAhead(), FakeClient()
    for rid in range(1, 6):
        for p in started:
            p.running = False  # each finished before the next starts
        assert start(ahead, client, rid)
    assert len(ahead) == 3 and client.abandoned == ["p1", "p2"]


def test_discard_and_close_stop_what_nobody_waits_for(started: list[FakePending]) -> None:
    ahead, client = TransfersAhead(), FakeClient()
    start(ahead, client, 1)
    start(ahead, client, 2)
    ahead.discard((1, "r1"))
    ahead.discard((7, "r1"))  # unknown: nothing happens
    assert client.abandoned == ["p1"]
    ahead.close()
    assert client.abandoned == ["p1", "p2"] and len(ahead) == 0
