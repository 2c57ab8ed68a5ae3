"""Pairs drain depth-first: a real worker runs each pair's encode → upload → audit before the
next pair's encode, although the dispatcher queued the whole batch's encodes first. Watched
through the worker's own task events on the real Redis (switched on for this test).

Breadth-first, the old order, encoded a whole batch before auditing its first pair: a batch
of FLACs in the temp folder and the success rows (the Janitor's signal) a batch late."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.fixtures.celery_events import EventTap
from tests.fixtures.stack import Stack, wait_until
from tests.integration.e2e_helpers import seed_station, success_rows

WORKER = "uploader-archive@"
PAIR = ["uploader.encode", "uploader.upload", "uploader.audit"]


@pytest.fixture
def tap(stack: Stack) -> Iterator[EventTap]:
    t = EventTap(stack.redis_url)
    yield t
    t.close()


def test_each_pair_is_audited_before_the_next_pair_is_encoded(
    engine: Engine, stack: Stack, tap: EventTap, tmp_path: Path
) -> None:
    # given a batch of 8 pairs queued at once, with the worker started only afterwards, so
    # that every encode waits in the queue ahead of the steps the encodes publish
    (tmp_path / "archive").mkdir()
    ids = seed_station(
        engine, stack.workspace, recordings=8, uploader={"batch_size": 8},
        remotes={"archive": {"type": "local", "target_path": str(tmp_path / "archive")}},
    )  # fmt: skip
    stack.start_dispatcher()
    assert wait_until(lambda: stack.queued("archive") == len(ids), 60), stack.logs("beat")
    # when the worker drains them
    stack.start_worker("archive", SILVASONIC_TASK_EVENTS="1")
    assert wait_until(lambda: success_rows(engine, "archive") == len(ids), 120)
    # then it ran one pair at a time: encode, upload, audit, then the next pair
    assert wait_until(lambda: len(tap.started_task_names(WORKER)) >= 3 * len(ids), 10)
    assert tap.started_task_names(WORKER) == PAIR * len(ids)
