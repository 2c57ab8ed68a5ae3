"""``celeryconfig`` reads switches from the environment at import: each case runs in a fresh
interpreter (the module is read once per process)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _events(value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SILVASONIC_TASK_EVENTS"}
    if value is not None:
        env["SILVASONIC_TASK_EVENTS"] = value
    code = "import celeryconfig as c; print(c.worker_send_task_events, c.task_send_sent_event)"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, "False False"), ("", "False False"), ("1", "True True"), ("on", "True True"),
     ("0", "False False"), ("false", "False False"), ("No", "False False")],
)  # fmt: skip
def test_task_events_switch(value: str | None, expected: str) -> None:
    done = _events(value)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


def test_a_value_that_is_no_switch_is_refused_with_the_spellings() -> None:
    done = _events("maybe")
    assert done.returncode != 0
    assert "SILVASONIC_TASK_EVENTS='maybe'" in done.stderr and "true/false" in done.stderr
