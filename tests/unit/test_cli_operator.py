"""The pure parts of the operator commands: option and stdin parsing (secrets refused or read
without ever being echoed), masking, the one-word remote state, and that none of them imports
Celery."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from silvasonic_uploader.cli.operator_common import human_age
from silvasonic_uploader.cli.remotes import masked_options, parse_options, parse_secret_lines
from uploader.completion.active import ActiveRemotes, RemoteRef, Skipped, SkipReason
from uploader.remotes.config import REMOTE_TYPES
from uploader.remotes.state import State
from uploader.station_status import RemoteHealth, remote_health

SECRET = "hunter2-do-not-print"
WEBDAV = REMOTE_TYPES["webdav"]


def test_options_are_parsed_and_a_secret_field_is_refused_without_its_value() -> None:
    assert parse_options(["url=https://x/?a=b", "vendor=nextcloud"], "webdav", WEBDAV) == {
        "url": "https://x/?a=b",
        "vendor": "nextcloud",
    }
    with pytest.raises(click.BadParameter) as refused:
        parse_options([f"pass={SECRET}"], "webdav", WEBDAV)
    assert "'pass' is a secret of a webdav remote" in refused.value.message
    assert SECRET not in refused.value.message


@pytest.mark.parametrize("bad", ["novalue", "=x", "url=a,url=b"])
def test_malformed_or_repeated_options_are_refused(bad: str) -> None:
    with pytest.raises(click.BadParameter):
        parse_options(bad.split(","), "webdav", WEBDAV)


def test_secret_lines_skip_comments_and_blank_lines() -> None:
    lines = ["# from the password manager", "", f"pass={SECRET}=with=equals", "user=alice\r"]
    assert parse_secret_lines(lines, "webdav", WEBDAV) == {
        "pass": f"{SECRET}=with=equals",
        "user": "alice",
    }


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (SECRET, "line 1 is not key=value"),
        (f"url={SECRET}", "'url' is not a secret field"),
        ("pass=", "'pass' has an empty value"),
    ],
)
def test_bad_secret_lines_name_the_line_never_the_value(line: str, says: str) -> None:
    with pytest.raises(click.ClickException) as refused:
        parse_secret_lines([line], "webdav", WEBDAV)
    assert says in refused.value.message
    assert SECRET not in refused.value.message


def test_masked_options_hide_secrets_and_url_credentials() -> None:
    shown = masked_options(
        "webdav",
        {"url": f"https://bob:{SECRET}@dav.example/", "user": "enc:gAAAA", "pass": SECRET},
    )
    assert shown == {"pass": "***", "url": "https://***@dav.example/", "user": "enc:***"}
    # an unknown type: every string is treated as a secret
    assert masked_options("ftp", {"password": SECRET, "port": 21}) == {
        "password": "***",
        "port": 21,
    }


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "-"), (-5, "0s"), (42, "42s"), (600, "10m"), (7800, "2h 10m"), (90000, "1d 1h")],
)
def test_human_age(seconds: float | None, shown: str) -> None:
    assert human_age(seconds) == shown


def _active(*skipped: Skipped) -> ActiveRemotes:
    ref = RemoteRef("a", "local", "A", None)
    return ActiveRemotes(required=(ref,), running=(), skipped=skipped)


@pytest.mark.parametrize(
    ("skipped", "marked", "state"),
    [
        ((), State.ok, RemoteHealth.ok),
        ((), State.unavailable, RemoteHealth.unavailable),
        ((Skipped("a", SkipReason.paused),), State.unavailable, RemoteHealth.paused),
        ((Skipped("a", SkipReason.misconfigured),), State.ok, RemoteHealth.misconfigured),
        ((Skipped("a", SkipReason.over_cap),), State.unavailable, RemoteHealth.over_cap),
        ((Skipped("b", SkipReason.over_cap),), State.ok, RemoteHealth.ok),
    ],
)
def test_remote_health_reports_the_strongest_news(
    skipped: tuple[Skipped, ...], marked: State, state: RemoteHealth
) -> None:
    assert remote_health(_active(*skipped), "a", marked) is state


def test_operator_commands_do_not_import_celery() -> None:
    code = (
        "import sys, silvasonic_uploader.cli.status, silvasonic_uploader.cli.remotes, silvasonic_uploader.cli.parked, uploader.station_status\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('celery', 'kombu')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
