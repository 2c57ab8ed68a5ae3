"""Factories for rows and files, in one place: devices, recordings, remotes, settings, WAVs."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from sqlalchemy import text
from sqlalchemy.orm import Session

from uploader.db.models import Device, Recording, StorageRemote, SystemConfig
from uploader.remotes.destination import current_one as current_destination

_seq = itertools.count(1)
BASE_TIME = datetime(2026, 3, 26, 1, 35, 0, tzinfo=UTC)


def make_device(session: Session, name: str = "ultramic-384-evo-034f") -> Device:
    device = session.get(Device, name)
    if device is None:
        device = Device(
            name=name,
            serial_number=f"SER-{name}",
            model="UltraMic 384 EVO",
            config={},
            workspace_name=name,
        )
        session.add(device)
        session.flush()
    return device


def recording_filename(time: datetime, seq: int) -> str:
    return f"{time.strftime('%Y-%m-%dT%H-%M-%SZ')}_10s_1a2b3c4d_{seq:08d}.wav"


def make_recording(
    session: Session,
    *,
    time: datetime | None = None,
    sensor_id: str = "ultramic-384-evo-034f",
    workspace_name: str | None = None,
    file_raw: str | None = None,
    uploaded: bool = False,
    local_deleted: bool = False,
    sample_rate: int = 48000,
    duration: float = 10.0,
    filesize_raw: int = 960_044,
) -> Recording:
    """A recording row (no file on disk; see :func:`write_wav`)."""
    make_device(session, sensor_id)
    n = next(_seq)
    time = time or BASE_TIME + timedelta(seconds=10 * n)
    ws = workspace_name or sensor_id
    rec = Recording(
        time=time,
        sensor_id=sensor_id,
        file_raw=file_raw or f"{ws}/data/raw/{recording_filename(time, n)}",
        duration=duration,
        sample_rate=sample_rate,
        filesize_raw=filesize_raw,
        uploaded=uploaded,
        local_deleted=local_deleted,
        upload_info={},
    )
    session.add(rec)
    session.flush()
    return rec


def make_remote(
    session: Session,
    slug: str = "nextcloud",
    *,
    type: str = "local",
    config: dict[str, Any] | None = None,
    is_active: bool = True,
    target_path: str | None = None,
    created_at: datetime | None = None,
    name: str | None = None,
) -> StorageRemote:
    remote = StorageRemote(
        slug=slug,
        type=type,
        name=name or slug.title(),
        config=config if config is not None else {},
        is_active=is_active,
        target_path=target_path,
    )
    if created_at is not None:
        remote.created_at = created_at
    session.add(remote)
    session.flush()
    return remote


def set_config(session: Session, key: str, value: dict[str, Any]) -> None:
    """Upsert a ``system_config`` row (as the Controller's seeder or the web UI would)."""
    row = session.get(SystemConfig, key)
    if row is None:
        session.add(SystemConfig(key=key, value=value))
    else:
        row.value = value
    session.flush()


def count_rows(session: Session, table: str) -> int:
    return int(session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def synth_audio(seconds: float, rate: int, seed: int = 7) -> np.ndarray:
    """Field-like audio: a noise floor plus a bird-like chirp, as float in [-1, 1]."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    noise = rng.normal(0, 10 ** (-50 / 20), n)
    chirp_f = 3000 + 1500 * np.sin(2 * np.pi * 4 * t)
    chirp = 10 ** (-20 / 20) * np.sin(2 * np.pi * np.cumsum(chirp_f) / rate)
    chirp *= (np.sin(2 * np.pi * 0.5 * t) > 0.6).astype(float)
    return np.clip(noise + chirp, -1.0, 1.0)


def write_wav(
    path: Path, seconds: float = 2.0, rate: int = 48000, bits: int = 16, seed: int = 7
) -> Path:
    """Write a PCM WAV of synthetic field audio; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subtype = {16: "PCM_16", 24: "PCM_24", 32: "PCM_32"}[bits]
    sf.write(str(path), synth_audio(seconds, rate, seed), rate, subtype=subtype, format="WAV")
    return path


def make_recording_with_wav(
    session: Session, workspace: Path, *, seconds: float = 2.0, rate: int = 48000, **kw: Any
) -> Recording:
    """A recording row and its WAV under ``workspace``."""
    rec = make_recording(session, sample_rate=rate, duration=seconds, **kw)
    wav = write_wav(workspace / rec.file_raw, seconds=seconds, rate=rate, seed=rec.id)
    rec.filesize_raw = wav.stat().st_size
    session.flush()
    return rec


def write_pcm_wav(
    path: Path,
    seconds: float = 1.0,
    rate: int = 48000,
    bits: int = 16,
    channels: int = 1,
    seed: int = 7,
) -> np.ndarray:
    """Write an integer-PCM WAV whose samples use every bit of ``bits`` (noise down to the LSB,
    each channel different, both extremes present) and return them as soundfile reads them
    back with ``dtype="int32", always_2d=True`` (left-justified): the expected decoding of a
    lossless FLAC, computed without the code under test."""
    path.parent.mkdir(parents=True, exist_ok=True)
    full_scale = 2 ** (bits - 1)
    columns = []
    for ch in range(channels):
        x = synth_audio(seconds, rate, seed + ch)
        x += np.random.default_rng(seed + 100 + ch).normal(0, 4 / full_scale, x.shape)
        q = np.clip(np.round(x * (full_scale - 1)), -full_scale, full_scale - 1).astype(np.int64)
        if len(q) >= 4:
            q[1], q[2] = -full_scale, full_scale - 1
        columns.append(q)
    ints = np.stack(columns, axis=1)
    left_justified = (ints << (32 - bits)).astype(np.int32)
    subtype = {16: "PCM_16", 24: "PCM_24", 32: "PCM_32"}[bits]
    data = ints.astype(np.int16) if bits == 16 else left_justified
    sf.write(str(path), data, rate, subtype=subtype, format="WAV")
    return left_justified


def make_upload(
    session: Session,
    recording_id: int,
    remote_slug: str,
    *,
    success: bool = True,
    attempt_key: str | None = None,
) -> None:
    """An ``uploads`` row written directly, as an older (SEED-ERA) uploader would have, after
    ``db upgrade`` (migration 0004 dates its success rows at the remote's current destination).
    """
    session.flush()
    dest = current_destination(session, remote_slug) if success else None
    session.execute(
        text(
            "INSERT INTO uploads (recording_id, remote_slug, attempt_at, filename, size, success,"
            " attempt_key, destination) VALUES (:rid, :slug, now(), 'x.flac', 1, :success, :key,"
            " :dest)"
        ),
        {
            "rid": recording_id,
            "slug": remote_slug,
            "success": success,
            "key": attempt_key,
            "dest": dest,
        },
    )
