"""The demo's station: synthetic field recordings written and indexed as Silvasonic's Recorder
and Indexer would, its two remotes (a password-protected WebDAV server that the demo serves
itself with ``rclone serve webdav``, and a local folder), and the settings rows.

Audio: a pink noise floor (wind, distant traffic), plus bird-like calls — short frequency
sweeps with a harmonic, some repeated as trills — at random times and levels. Real field
recordings compress to roughly half with FLAC; this does too, so the numbers are plausible.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import soundfile as sf
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from silvasonic_uploader.cli.local_servers import free_port
from uploader.db.models import Device, Recording, StorageRemote, SystemConfig
from uploader.rclone.client import find_rclone_binary
from uploader.remotes.secrets import encrypt_value, load_encryption_key

SEGMENT_S = 10
SAMPLE_RATE = 48_000
DEVICE = "demo-mic-0001"
STATION_NAME = "Silvasonic Demo"
WEBDAV_SLUG = "demo-webdav"
LOCAL_SLUG = "demo-usb"
WEBDAV_USER = "silvasonic-demo"
WEBDAV_FOLDER = "archive"  # the WebDAV remote's target_path
READY_TIMEOUT_S = 15.0


def field_audio(seconds: float, rate: int, seed: int) -> np.ndarray:
    """Mono float audio in [-1, 1]: pink noise floor at about -48 dBFS plus bird calls."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    # pink noise: white noise shaped by 1/sqrt(f) in the frequency domain
    spectrum = rng.normal(size=n // 2 + 1) + 1j * rng.normal(size=n // 2 + 1)
    freqs = np.fft.rfftfreq(n, 1 / rate)
    spectrum /= np.sqrt(np.maximum(freqs, 20.0))
    floor = np.fft.irfft(spectrum, n)
    out = floor / (np.std(floor) or 1.0) * 10 ** (-48 / 20)
    for _ in range(int(rng.integers(3, 9))):  # calls per segment
        start_s = rng.uniform(0, seconds - 1.0)
        notes = int(rng.integers(1, 7))  # 1 = a single call, more = a trill
        f_high, f_low = rng.uniform(3500, 7500), rng.uniform(1800, 3500)
        level = 10 ** (rng.uniform(-30, -12) / 20)
        note_s, gap_s = rng.uniform(0.04, 0.2), rng.uniform(0.03, 0.1)
        for k in range(notes):
            i0 = int((start_s + k * (note_s + gap_s)) * rate)
            m = min(int(note_s * rate), n - i0)
            if m <= 8:
                break
            sweep = np.linspace(f_high, f_low, m)  # a falling call
            phase = 2 * np.pi * np.cumsum(sweep) / rate
            note = np.sin(phase) + 0.3 * np.sin(2 * phase)
            out[i0 : i0 + m] += level * np.hanning(m) * note
    return np.clip(out, -1.0, 1.0)


@dataclass(frozen=True)
class DemoRecording:
    id: int
    file_raw: str
    wav_bytes: int


def recording_name(start: datetime, run_hex: str, seq: int) -> str:
    """Silvasonic's segment name: ``YYYY-MM-DDTHH-MM-SSZ_10s_<run8hex>_<seq:08d>.wav``."""
    return f"{start.strftime('%Y-%m-%dT%H-%M-%SZ')}_{SEGMENT_S}s_{run_hex}_{seq:08d}.wav"


def write_recordings(engine: Engine, workspace: Path, count: int) -> list[DemoRecording]:
    """``count`` segments of the last ``count × 10 s``, each file written before its row is
    committed (the Indexer indexes only finished files)."""
    run_hex = secrets.token_hex(4)
    now = datetime.now(UTC).replace(microsecond=0)
    first = now - timedelta(seconds=SEGMENT_S * count + now.second % SEGMENT_S)
    folder = Path(DEVICE) / "data" / "raw"
    made: list[DemoRecording] = []
    with Session(engine) as session:
        if session.get(Device, DEVICE) is None:
            session.add(
                Device(
                    name=DEVICE,
                    serial_number="DEMO-0001",
                    model="Synthetic field microphone (demo)",
                    status="online",
                    enrollment_status="enrolled",
                    config={},
                    workspace_name=DEVICE,
                )
            )
            session.flush()
        for seq in range(count):
            start = first + timedelta(seconds=SEGMENT_S * seq)
            relative = folder / recording_name(start, run_hex, seq)
            path = workspace / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            audio = field_audio(SEGMENT_S, SAMPLE_RATE, seed=seq + 1)
            sf.write(str(path), audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
            size = path.stat().st_size
            row = Recording(
                time=start,
                sensor_id=DEVICE,
                file_raw=str(relative),
                duration=float(SEGMENT_S),
                sample_rate=SAMPLE_RATE,
                filesize_raw=size,
            )
            session.add(row)
            session.flush()
            made.append(DemoRecording(row.id, str(relative), size))
        session.commit()
    return made


def _upsert_config(session: Session, key: str, value: dict[str, object]) -> None:
    row = session.get(SystemConfig, key)
    if row is None:
        session.add(SystemConfig(key=key, value=value))
    else:
        row.value = value


def write_settings(engine: Engine, *, bandwidth_limit: str) -> None:
    """Settings for a quick demo: new recordings are looked for every second."""
    with Session(engine) as session:
        _upsert_config(
            session,
            "uploader",
            {"enabled": True, "poll_interval": 1, "batch_size": 50,
             "bandwidth_limit": bandwidth_limit},
        )  # fmt: skip
        _upsert_config(session, "system", {"station_name": STATION_NAME, "max_uploaders": 3})
        session.commit()


@dataclass
class WebDAVServer:
    """``rclone serve webdav`` on a free 127.0.0.1 port; user and password in its environment
    (RCLONE_USER/RCLONE_PASS), never in its argv."""

    root: Path
    log_path: Path
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def marker(self) -> str:
        """What its command line contains (to find it again after a ``kill -9`` of the demo)."""
        return f"serve webdav {self.root}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        env = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
        env.update(RCLONE_CONFIG="/notfound", RCLONE_USER=WEBDAV_USER, RCLONE_PASS=self.password)
        argv = [find_rclone_binary(), "serve", "webdav", str(self.root),
                "--addr", f"127.0.0.1:{self.port}"]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rclone serve webdav exited; see {self.log_path}")
            with socket.socket() as s:
                s.settimeout(0.2)
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"rclone serve webdav did not listen on {self.url}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def write_remotes(engine: Engine, webdav: WebDAVServer, local_folder: Path) -> bool:
    """The two remotes; the WebDAV password is stored ``enc:`` when SILVASONIC_ENCRYPTION_KEY
    is set (returns whether it was)."""
    key = load_encryption_key()
    password = encrypt_value(webdav.password, key) if key else webdav.password
    local_folder.mkdir(parents=True, exist_ok=True)
    with Session(engine) as session:
        session.add_all(
            [
                StorageRemote(
                    slug=WEBDAV_SLUG,
                    type="webdav",
                    name="Demo WebDAV (rclone serve webdav on 127.0.0.1)",
                    config={"url": webdav.url, "user": WEBDAV_USER, "pass": password},
                    target_path=WEBDAV_FOLDER,
                    is_active=True,
                ),
                StorageRemote(
                    slug=LOCAL_SLUG,
                    type="local",
                    name="Demo USB folder",
                    config={},
                    target_path=str(local_folder),
                    is_active=True,
                ),
            ]
        )
        session.commit()
    return key is not None
