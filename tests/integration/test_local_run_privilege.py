"""What another local user can do against the servers ``run`` starts: nothing.

As ``nobody``, through real clients: no PostgreSQL login and no Redis command without the
passwords (which only the owner can read), no look into the data folder, and no folder above it
changed its mode. The servers keep no root group and PostgreSQL keeps fsync on. Each check has a
positive control (the same client, as ``nobody``, with the password gets in), so a denial cannot
come from ``nobody`` simply being unable to run the client.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import psycopg2
import pytest

from silvasonic_uploader.cli.local_run import DataDir, LocalRun
from silvasonic_uploader.cli.local_servers import SERVER_USER, server_account
from tests.fixtures.services import server_home

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching to the user nobody needs root")

NOBODY = pwd.getpwnam("nobody")


def as_nobody(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        user=NOBODY.pw_uid,
        group=NOBODY.pw_gid,
        extra_groups=[],
        env={"PATH": "/usr/bin:/bin", **env},
        cwd="/",
    )


def redis_says(port: int, *commands: str) -> str:
    """Speak RESP's inline form through bash's /dev/tcp, as nobody: no client library needed."""
    script = (
        'exec 3<>"/dev/tcp/127.0.0.1/$1"; shift; '
        'for c in "$@"; do printf "%s\\r\\n" "$c" >&3; IFS= read -r -t 5 line <&3; '
        'echo "$line"; done'
    )
    done = as_nobody(["/bin/bash", "-c", script, "bash", str(port), *commands])
    return done.stdout + done.stderr


def modes_up_from(path: Path) -> dict[Path, int]:
    return {p: stat.S_IMODE(p.stat().st_mode) for p in (path, *path.parents)}


def groups_of(pid: int) -> tuple[set[int], set[int], set[int]]:
    """(uids, gids, supplementary groups) of a process, from /proc."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (
        {int(x) for x in fields["Uid"].split()},
        {int(x) for x in fields["Gid"].split()},
        {int(x) for x in fields["Groups"].split()},
    )


@pytest.fixture
def home() -> Iterator[Path]:
    with server_home("privilege") as path:
        yield path


def _run(data: Path) -> LocalRun:
    return LocalRun(DataDir(data), isolated=True, echo=lambda _line: None)


def test_another_local_user_can_neither_connect_nor_read_the_data_folder(home: Path) -> None:
    # given
    before = modes_up_from(home)
    data = home / "data"
    # when
    with _run(data) as local:
        assert local._pg is not None and local._redis is not None
        pg, rds = local._pg, local._redis
        psql = str(pg.bin / "psql")
        # then: PostgreSQL wants the password; with it, nobody gets in (the control)
        denied = as_nobody([psql, "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-w",
                            "-d", "postgres", "-Atc", "select 1"])  # fmt: skip
        assert denied.returncode != 0
        assert "password" in denied.stderr, denied.stderr
        wrong = as_nobody(
            [psql, "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-w", "-Atc", "1"],
            PGPASSWORD="postgres",
        )
        assert "password authentication failed" in wrong.stderr, wrong.stderr
        allowed = as_nobody(
            [psql, "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-w",
             "-d", "postgres", "-Atc", "show fsync; show full_page_writes"],
            PGPASSWORD=pg.password,
        )  # fmt: skip
        assert allowed.stdout.split() == ["on", "on"], allowed.stderr  # run keeps fsync on
        # Redis: every command, CONFIG SET dir included, wants AUTH first
        said = redis_says(rds.port, "PING", "CONFIG SET dir /root", "SAVE")
        assert said.count("NOAUTH") == 3 and "PONG" not in said, said
        assert "+PONG" in redis_says(rds.port, f"AUTH {rds.password}", "PING")
        # the data folder and what is in it are the owner's
        for path in (data, data / "server-credentials", data / "env", data / "postgres"):
            peek = as_nobody(["/bin/ls", "-l", str(path)])
            assert peek.returncode != 0 and "Permission denied" in peek.stderr, (path, peek)
        read = as_nobody(["/bin/cat", str(data / "server-credentials")])
        assert read.returncode != 0 and pg.password not in read.stdout
        assert stat.S_IMODE((data / "server-credentials").stat().st_mode) == 0o600
        assert stat.S_IMODE(data.stat().st_mode) == 0o750
        # the servers: an unprivileged user, no root group, no password in argv
        account = server_account()
        assert account is not None and account.name == SERVER_USER
        for proc in (pg.proc, rds.proc):
            assert proc is not None
            uids, gids, extra = groups_of(proc.pid)
            assert uids == {account.uid} and gids == {account.gid}, (uids, gids)
            assert 0 not in extra and extra <= {account.gid}, extra
            argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
            assert pg.password not in argv and rds.password not in argv
    # and no folder above the data folder changed its mode
    assert modes_up_from(home) == before


def test_a_data_folder_of_an_earlier_version_is_given_passwords_and_keeps_its_data(
    home: Path,
) -> None:
    # given: a folder as earlier versions left it: a cluster that trusts every local
    # connection, no passwords file, and a row in the station database
    data = home / "data"
    with _run(data) as local:
        conn = psycopg2.connect(local.database_url.replace("+psycopg2", ""))
        conn.autocommit = True
        conn.cursor().execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
        conn.close()
    (data / "server-credentials").unlink()
    (data / "postgres" / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")
    # when
    with _run(data) as local:
        assert local._pg is not None
        port = local._pg.port
        # then: the row is there, through the new password …
        conn = psycopg2.connect(local.database_url.replace("+psycopg2", ""))
        with conn.cursor() as cur:
            cur.execute("SELECT x FROM kept")
            assert cur.fetchall() == [(7,)]
        conn.close()
        # … and without a password nobody gets in any more
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
    assert stat.S_IMODE((data / "server-credentials").stat().st_mode) == 0o600


def test_a_data_folder_the_server_user_cannot_reach_is_refused_with_what_to_do(
    home: Path,
) -> None:
    # given: a folder only root may pass
    closed = home / "closed"
    closed.mkdir(mode=0o700)
    before = modes_up_from(closed)
    # when / then
    with pytest.raises(click.ClickException) as raised, _run(closed / "data"):
        pass
    message = raised.value.message
    assert str(closed) in message and "--data-dir" in message, message
    assert modes_up_from(closed) == before
