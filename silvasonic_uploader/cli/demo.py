"""``silvasonic-uploader demo``: ``run`` plus a demo station, on embedded servers only.

A fresh data folder each time (``./.silvasonic/demo``, emptied at start), synthetic recordings
(``silvasonic_uploader.cli.demo_station``), two remotes on this machine, live progress per remote,
and a closing table once every recording is on both remotes and flagged ``uploaded`` — after
checking that every FLAC decodes to exactly its WAV's samples. Exit 0 then; 1 with what is missing
on timeout.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import soundfile as sf
from sqlalchemy import Engine, create_engine, pool, text

from silvasonic_uploader.cli import demo_station as station
from silvasonic_uploader.cli.flower import DEFAULT_PORT
from silvasonic_uploader.cli.local_run import DataDir, LocalRun
from silvasonic_uploader.cli.run import build_supervisor, logs_to, supervise
from uploader.audio import flac_encoder

DEFAULT_DATA_DIR = Path(".silvasonic") / "demo"
# quicker than a station: beat every second, the controller reconciles every second
DEMO_ENV = {"SILVASONIC_DISPATCH_TICK_S": "1", "SILVASONIC_RECONCILE_INTERVAL_S": "1"}
PROGRESS_EVERY_S = 1.0
RATE_WINDOW_S = 5.0  # rates are over this many seconds
QUIET_LINE_EVERY_S = 15.0  # without a terminal: a line per change, or this often


@dataclass(frozen=True)
class RemoteProgress:
    slug: str
    done: int
    flac_bytes: int
    last_s: float | None  # seconds from the start to its last success


def read_progress(engine: Engine, slugs: list[str], t0: float) -> tuple[list[RemoteProgress], int]:
    """Per remote: success rows, FLAC bytes, time of the last one; and recordings flagged."""
    with engine.connect() as conn:
        rows = {
            r.remote_slug: r
            for r in conn.execute(
                text(
                    "SELECT remote_slug, count(*) AS n, coalesce(sum(size), 0) AS bytes,"
                    " extract(epoch FROM max(attempt_at)) AS last FROM uploads WHERE success"
                    " GROUP BY remote_slug"
                )
            )
        }
        flagged = int(
            conn.execute(text("SELECT count(*) FROM recordings WHERE uploaded")).scalar_one()
        )
    out = []
    for slug in slugs:
        r = rows.get(slug)
        out.append(
            RemoteProgress(
                slug,
                int(r.n) if r else 0,
                int(r.bytes) if r else 0,
                float(r.last) - t0 if r and r.last is not None else None,
            )
        )
    return out, flagged


@dataclass
class Monitor:
    """Prints progress every second; when all is done (or the time is up) it asks the
    supervisor to stop, as Ctrl-C would."""

    engine: Engine
    slugs: list[str]
    total: int
    timeout_s: float
    t0: float  # the database's clock, epoch seconds, when the service started
    outcome: str = "interrupted"  # -> "done" | "timeout"
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="demo-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        started = time.monotonic()
        tty = sys.stdout.isatty()
        window: deque[tuple[float, list[RemoteProgress]]] = deque()
        last_line, last_print = "", 0.0
        while not self._stop.wait(PROGRESS_EVERY_S):
            now = time.monotonic()
            try:
                remotes, flagged = read_progress(self.engine, self.slugs, self.t0)
            except Exception as exc:  # the database is stopping, or a hiccup: say so, go on
                click.echo(f"  (progress unavailable: {type(exc).__name__})")
                continue
            window.append((now, remotes))
            while now - window[0][0] > RATE_WINDOW_S:
                window.popleft()
            line = self._line(remotes, flagged, window[0])
            if tty:
                click.echo(f"\r  [{now - started:5.0f} s] {line}", nl=False)
            elif line != last_line or now - last_print >= QUIET_LINE_EVERY_S:
                click.echo(f"  [{now - started:5.0f} s] {line}")
                last_print = now
            last_line = line
            if all(r.done >= self.total for r in remotes) and flagged >= self.total:
                self._finish("done", tty)
                return
            if now - started >= self.timeout_s:
                self._finish("timeout", tty)
                return

    def _line(
        self,
        remotes: list[RemoteProgress],
        flagged: int,
        earlier: tuple[float, list[RemoteProgress]],
    ) -> str:
        """``slug done/total (files/s, MB/s)`` per remote; rates over the last few seconds."""
        span = max(time.monotonic() - earlier[0], PROGRESS_EVERY_S)
        parts = []
        for now_r, then_r in zip(remotes, earlier[1], strict=True):
            files = (now_r.done - then_r.done) / span
            mb = (now_r.flac_bytes - then_r.flac_bytes) / span / 1e6
            parts.append(
                f"{now_r.slug} {now_r.done}/{self.total} ({files:.1f} files/s, {mb:.1f} MB/s)"
            )
        return "   ".join(parts) + f"   flagged uploaded {flagged}/{self.total}"

    def _finish(self, outcome: str, tty: bool) -> None:
        self.outcome = outcome
        if tty:
            click.echo("")
        os.kill(os.getpid(), signal.SIGTERM)  # the supervisor's own stop path


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _flac_paths(engine: Engine, slug: str, served_root: Path | None) -> dict[int, Path]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT recording_id, remote_path FROM uploads WHERE success AND remote_slug = :s"
            ),
            {"s": slug},
        ).all()
    return {
        int(rid): (served_root / path if served_root is not None else Path(path))
        for rid, path in rows
        if path
    }


def check_lossless(
    workspace: Path, recordings: list[station.DemoRecording], flacs: dict[int, Path]
) -> list[str]:
    """Problems found with the uploaded ones (``flacs``: recording id -> where its FLAC is);
    empty when every FLAC is there and holds exactly its WAV's samples."""
    problems = []
    for rec in recordings:
        flac = flacs.get(rec.id)
        if flac is None:
            continue  # not uploaded: counted by the caller
        if not flac.is_file():
            problems.append(f"recording {rec.id}: uploaded, but there is no {flac}")
            continue
        wav, _ = sf.read(str(workspace / rec.file_raw), dtype="int16")
        decoded, _ = sf.read(str(flac), dtype="int16")
        if not np.array_equal(wav, decoded):
            problems.append(f"recording {rec.id}: {flac} differs from its WAV")
    return problems


def closing_table(
    engine: Engine,
    local: LocalRun,
    webdav: station.WebDAVServer,
    recordings: list[station.DemoRecording],
    t0: float,
) -> tuple[list[str], list[str]]:
    """The table's lines, and the problems (empty when everything is where it should be)."""
    slugs = [station.WEBDAV_SLUG, station.LOCAL_SLUG]
    remotes, flagged = read_progress(engine, slugs, t0)
    wav_bytes = sum(r.wav_bytes for r in recordings)
    total = len(recordings)
    lines = [
        f"  {'remote':<12} {'type':<7} {'pairs':>7} {'WAV':>9} {'FLAC':>9} {'ratio':>6}"
        f" {'time':>7}  FLACs are in",
    ]
    problems: list[str] = []
    for r in remotes:
        webdav_side = r.slug == station.WEBDAV_SLUG
        flacs = _flac_paths(engine, r.slug, webdav.root if webdav_side else None)
        folders = sorted({str(p.parent) for p in flacs.values()})
        where = (
            folders[0] if len(folders) == 1 else (os.path.commonpath(folders) if folders else "-")
        )
        if webdav_side and folders:
            where += f"  (served at {webdav.url}/{station.WEBDAV_FOLDER}/…)"
        ratio = f"{r.flac_bytes / wav_bytes:.0%}" if wav_bytes else "-"
        took = f"{r.last_s:.1f} s" if r.last_s is not None else "-"
        lines.append(
            f"  {r.slug:<12} {'webdav' if webdav_side else 'local':<7} {r.done:>3}/{total:<3}"
            f" {_mb(wav_bytes):>9} {_mb(r.flac_bytes):>9} {ratio:>6} {took:>7}  {where}"
        )
        if r.done < total:
            problems.append(f"{r.slug}: {r.done} of {total} recordings uploaded")
        problems += [f"{r.slug}: {p}" for p in check_lossless(local.workspace, recordings, flacs)]
    lines.append(f"  recordings flagged uploaded (the Janitor may delete them): {flagged}/{total}")
    if flagged < total:
        problems.append(f"{total - flagged} recordings are not flagged uploaded")
    if not problems:
        lines.append(f"  lossless: all {2 * total} FLACs decode to exactly their WAV's samples")
    return lines, problems


def diagnose(engine: Engine, local: LocalRun) -> list[str]:
    """What an operator would look at first when the demo did not finish."""
    lines = []
    with engine.connect() as conn:
        for slug, state, detail in conn.execute(
            text("SELECT remote_slug, state, detail FROM remote_status ORDER BY remote_slug")
        ):
            lines.append(f"  remote {slug}: {state}{f' ({detail})' if detail else ''}")
        for slug, error in conn.execute(
            text(
                "SELECT DISTINCT ON (remote_slug) remote_slug, error_message FROM uploads"
                " WHERE NOT success ORDER BY remote_slug, attempt_at DESC"
            )
        ):
            lines.append(f"  last failure on {slug}: {error}")
    lines.append(f"  logs: {local.data.logs} and {local.data.workers}")
    return lines


@click.command()
@click.option(
    "--recordings",
    type=click.IntRange(1, 10_000),
    default=18,
    show_default=True,
    help="How many 10 s segments (48 kHz, 16 bit) the demo station records.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA_DIR,
    show_default=True,
    help="Emptied at start (only if it is a data folder we made).",
)
@click.option(
    "--timeout", type=float, default=600.0, show_default=True, help="Seconds before giving up."
)
@click.option(
    "--bwlimit", default="off", show_default=True, help="uploader.bandwidth_limit for the demo."
)
@click.option("--flower", "with_flower", is_flag=True, help="Also run Flower (read-only, local).")
@click.option("--flower-port", type=int, default=DEFAULT_PORT, show_default=True)
def demo(
    recordings: int,
    data_dir: Path,
    timeout: float,
    bwlimit: str,
    with_flower: bool,
    flower_port: int,
) -> None:
    """Run a demo station on this machine: synthetic audio, two remotes, live progress.

    Everything runs locally from the installed wheels (PostgreSQL, Redis, rclone, ffmpeg);
    a configured database or Redis is never touched.
    """
    data = DataDir(data_dir.resolve())
    try:  # the station's engine (SILVASONIC_FLAC_ENGINE, default libflac), checked up front
        flac_engine = flac_encoder.default_engine()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("silvasonic-uploader demo")
    click.echo(f"  fresh data dir {data.root} (emptied at start; the FLACs stay afterwards)")
    for var in ("SILVASONIC_DATABASE_URL", "SILVASONIC_REDIS_URL", "POSTGRES_HOST"):
        if os.environ.get(var):
            click.echo(f"  ignoring {var}: the demo uses its own embedded servers only")
    local = LocalRun(
        data,
        isolated=True,
        fresh=True,
        durable=False,  # a demo's data is thrown away: speed over crash safety
        own_log="demo",
        extra_env={**DEMO_ENV, "SILVASONIC_FLAC_ENGINE": flac_engine},
        flower_port=flower_port if with_flower else None,
    )
    try:
        with local:
            outcome, table, problems = _demo(local, recordings, timeout, bwlimit)
    except KeyboardInterrupt:
        click.echo("interrupted during start-up; stopped")
        sys.exit(130)
    click.echo("stopped")
    click.echo("")
    for line in table:
        click.echo(line)
    if outcome == "interrupted":
        click.echo("demo interrupted before everything was uploaded")
        sys.exit(130)
    if problems:
        click.echo("", err=True)
        for problem in problems:
            click.echo(f"demo FAILED: {problem}", err=True)
        sys.exit(1)
    click.echo(f"demo finished: every recording is on both remotes (data in {data.root})")


def _demo(
    local: LocalRun, count: int, timeout_s: float, bwlimit: str
) -> tuple[str, list[str], list[str]]:
    data = local.data
    engine = create_engine(local.database_url, poolclass=pool.NullPool)
    webdav = station.WebDAVServer(data.root / "remotes" / "webdav", data.logs / "webdav.log")
    with logs_to(data.logs / "demo.log"):
        try:
            webdav.start()
            assert webdav.proc is not None
            local.remember_pid("webdav", webdav.proc.pid, webdav.marker)
            local.on_close(webdav.stop)
            station.write_settings(engine, bandwidth_limit=bwlimit)
            click.echo(f"  writing {count} × {station.SEGMENT_S} s of synthetic field audio …")
            recordings = station.write_recordings(engine, local.workspace, count)
            encrypted = station.write_remotes(engine, webdav, data.root / "remotes" / "usb")
            sup = build_supervisor(local)
            for line in local.banner():
                click.echo(line)
            stored = "encrypted" if encrypted else "in plain text (no SILVASONIC_ENCRYPTION_KEY)"
            click.echo(
                f"  remotes    {station.WEBDAV_SLUG}: {webdav.url}, password stored {stored}"
            )
            click.echo(f"             {station.LOCAL_SLUG}: {data.root / 'remotes' / 'usb'}")
            click.echo(f"  encoder    {local.extra_env['SILVASONIC_FLAC_ENGINE']} (WAV -> FLAC)")
            click.echo(f"Uploading {count} recordings to 2 remotes (Ctrl-C stops) …")
            with engine.connect() as conn:
                t0 = float(conn.execute(text("SELECT extract(epoch FROM now())")).scalar_one())
            slugs = [station.WEBDAV_SLUG, station.LOCAL_SLUG]
            monitor = Monitor(engine, slugs, count, timeout_s, t0)
            monitor.start()
            supervise(local, sup)
            monitor.stop()
            table, problems = closing_table(engine, local, webdav, recordings, t0)
            if monitor.outcome == "timeout":
                problems.insert(0, f"not finished within {timeout_s:.0f} s")
                table += ["", "What to look at:", *diagnose(engine, local)]
            return monitor.outcome, table, problems
        finally:
            engine.dispose()
