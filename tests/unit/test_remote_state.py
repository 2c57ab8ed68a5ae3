"""``uploader.remotes.state`` branches that need no database: the common ``mark_ok`` after
every success must neither lock nor write, and the state names must be the ones
``uploader.completion.active`` compares with. The state machine itself runs against real PostgreSQL in
``tests/integration/test_remote_state.py``."""

from __future__ import annotations

from types import SimpleNamespace
from unittest.mock import MagicMock

from uploader.remotes import state as remote_state
from uploader.remotes.state import State


def test_mark_ok_on_a_healthy_remote_only_reads() -> None:
    session = MagicMock()
    session.execute.return_value.first.return_value = SimpleNamespace(state="ok", failures=0)
    assert not remote_state.mark_ok(session, "nextcloud")
    assert session.execute.call_count == 1
    (statement, _params), _ = session.execute.call_args
    assert str(statement).lstrip().upper().startswith("SELECT")


def test_get_state_without_a_row_is_ok() -> None:
    session = MagicMock()
    session.execute.return_value.first.return_value = None
    assert remote_state.get_state(session, "nextcloud") == remote_state.RemoteState(State.ok, None)


def test_state_names_are_the_stored_strings() -> None:
    # uploader.completion.active compares remote_status.state with the literal "misconfigured"
    assert [s.value for s in State] == ["ok", "unavailable", "misconfigured"]
