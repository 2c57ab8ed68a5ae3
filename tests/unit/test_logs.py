"""``uploader.ops.logs``: our events and the libraries' records through one renderer, JSON lines
with upstream's keys in production, Celery's per-task lines kept quiet."""

from __future__ import annotations

import io
import json
import logging
import warnings

import pytest
import structlog

from uploader.ops.logs import StdlibHandler, configure_logging, set_library_level


def _lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


@pytest.fixture
def json_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SILVASONIC_DEVELOPMENT_MODE", "false")


def test_our_events_and_library_records_are_json_lines_with_the_same_keys(
    json_mode: None,
) -> None:
    buf = io.StringIO()
    configure_logging("uploader-x", stream=buf)
    structlog.get_logger("t").info("upload.completed", size_bytes=3)
    logging.getLogger("kombu.connection").warning("lost %s, retrying", "redis")
    ours, theirs = _lines(buf)
    assert ours["event"] == "upload.completed" and ours["size_bytes"] == 3
    assert theirs["event"] == "lost redis, retrying"
    assert theirs["logger_name"] == "kombu.connection"
    for line, level in ((ours, "info"), (theirs, "warning")):
        assert line["service"] == "uploader-x" and line["level"] == level
        assert str(line["timestamp"]).endswith("Z")


def test_a_library_traceback_stays_on_one_json_line(json_mode: None) -> None:
    buf = io.StringIO()
    configure_logging("uploader-x", stream=buf)
    try:
        raise ConnectionError("broker gone")
    except ConnectionError:
        logging.getLogger("celery.worker").exception("consumer: connection lost")
    (line,) = _lines(buf)
    assert line["level"] == "error" and "broker gone" in json.dumps(line["exception"])


def test_a_python_warning_is_one_json_line(json_mode: None) -> None:
    buf = io.StringIO()
    configure_logging("uploader-x", stream=buf)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("running the worker with superuser privileges\nsecond line", stacklevel=1)
    (line,) = _lines(buf)
    assert line["logger_name"] == "py.warnings" and line["level"] == "warning"
    assert "superuser privileges" in str(line["event"])


def test_library_records_start_at_warning_then_follow_celerys_loglevel(json_mode: None) -> None:
    buf = io.StringIO()
    configure_logging("uploader-x", stream=buf)
    lib = logging.getLogger("celery.apps.worker")
    lib.info("hidden before --loglevel is known")
    set_library_level("INFO")
    lib.info("uploader-a@host ready.")
    assert [line["event"] for line in _lines(buf)] == ["uploader-a@host ready."]


def test_celerys_per_task_lines_stay_quiet_but_failures_show(json_mode: None) -> None:
    buf = io.StringIO()
    configure_logging("uploader-x", stream=buf)
    set_library_level(logging.DEBUG)
    logging.getLogger("celery.worker.strategy").info("Task uploader.encode[1] received")
    logging.getLogger("celery.app.trace").info("Task uploader.encode[1] succeeded in 0.03s")
    logging.getLogger("celery.app.trace").error("Task uploader.audit[2] raised unexpected")
    assert [line["event"] for line in _lines(buf)] == ["Task uploader.audit[2] raised unexpected"]


def test_configuring_again_replaces_the_handler_and_keeps_others(json_mode: None) -> None:
    other = logging.StreamHandler(io.StringIO())
    logging.getLogger().addHandler(other)
    try:
        first, second = io.StringIO(), io.StringIO()
        configure_logging("a", stream=first)
        configure_logging("b", stream=second)
        logging.getLogger("redis").warning("once")
        ours = [h for h in logging.getLogger().handlers if isinstance(h, StdlibHandler)]
        assert len(ours) == 1 and other in logging.getLogger().handlers
        assert first.getvalue() == "" and [x["service"] for x in _lines(second)] == ["b"]
    finally:
        logging.getLogger().removeHandler(other)


def test_development_mode_renders_console_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SILVASONIC_DEVELOPMENT_MODE", "true")
    buf = io.StringIO()
    configure_logging("uploader-x", stream=buf)
    structlog.get_logger("t").info("upload.completed")
    logging.getLogger("kombu").warning("lost")
    ours, theirs = buf.getvalue().splitlines()
    assert "upload.completed" in ours and "[info" in ours
    assert "lost" in theirs and "[warning" in theirs and "kombu" in theirs
    with pytest.raises(json.JSONDecodeError):
        json.loads(ours)


def test_json_tracebacks_carry_no_local_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import logging

    import structlog

    from uploader.ops.logs import configure_logging

    monkeypatch.setenv("SILVASONIC_DEVELOPMENT_MODE", "false")
    out = io.StringIO()
    configure_logging("uploader", stream=out)

    def connect() -> None:
        dsn = "postgresql://station:Hunter2-never-logged@db/silvasonic"
        raise ConnectionError(f"cannot reach {dsn.split('@')[1]}")

    try:
        connect()
    except ConnectionError:
        structlog.get_logger("t").exception("db.unreachable")
        logging.getLogger("celery.app.trace").error("Task failed", exc_info=True)
    text = out.getvalue()
    assert text.count("ConnectionError") >= 2  # the traceback is there, twice
    assert "Hunter2-never-logged" not in text


def test_console_logs_render_a_library_record_with_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io
    import logging

    from uploader.ops.logs import configure_logging

    monkeypatch.setenv("SILVASONIC_DEVELOPMENT_MODE", "true")
    out = io.StringIO()
    configure_logging("uploader", stream=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("celery.app.trace").error("Task x raised", exc_info=True)
    assert "Traceback" in out.getvalue() and "RuntimeError: boom" in out.getvalue()
    assert "Logging error" not in capsys.readouterr().err
