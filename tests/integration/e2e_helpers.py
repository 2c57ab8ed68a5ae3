"""Small helpers the end-to-end tests share: seeding a station and reading the ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from tests.factories import make_recording_with_wav, make_remote, set_config


def seed_station(
    engine: Engine,
    workspace: Path,
    *,
    recordings: int,
    remotes: dict[str, dict[str, Any]],
    uploader: dict[str, Any] | None = None,
    seconds: float = 1.0,
    rate: int = 48000,
) -> list[int]:
    """Recordings with WAVs, remotes, and settings; committed. Returns recording ids."""
    with Session(engine) as s:
        set_config(s, "uploader", {"poll_interval": 1, "batch_size": 10, **(uploader or {})})
        set_config(s, "system", {"station_name": "Silvasonic Test"})
        for slug, kw in remotes.items():
            make_remote(s, slug, **kw)
        ids = [
            make_recording_with_wav(s, workspace, seconds=seconds, rate=rate).id
            for _ in range(recordings)
        ]
        s.commit()
    return ids


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar_one()


def success_rows(engine: Engine, slug: str | None = None) -> int:
    where = "success" + (" AND remote_slug = :slug" if slug else "")
    return int(scalar(engine, f"SELECT count(*) FROM uploads WHERE {where}", slug=slug))


def duplicate_success_pairs(engine: Engine) -> int:
    """Pairs with more than one success row at one destination (a remote pointed elsewhere
    rightly has one per destination)."""
    return int(
        scalar(
            engine,
            """
        SELECT count(*) FROM (SELECT 1 FROM uploads WHERE success
        GROUP BY recording_id, remote_slug, destination HAVING count(*) > 1) d""",
        )
    )


def uploaded_count(engine: Engine) -> int:
    return int(scalar(engine, "SELECT count(*) FROM recordings WHERE uploaded"))


def early_flags(engine: Engine) -> int:
    """Recordings flagged uploaded that lack a success row on some active remote."""
    return int(
        scalar(
            engine,
            """
        SELECT count(*) FROM recordings r WHERE r.uploaded AND EXISTS (
          SELECT 1 FROM storage_remotes sr WHERE sr.is_active AND NOT EXISTS (
            SELECT 1 FROM uploads u WHERE u.recording_id = r.id
            AND u.remote_slug = sr.slug AND u.success))""",
        )
    )


def set_uploader(engine: Engine, **fields: Any) -> None:
    """Change uploader settings as the web UI would (the dispatcher rereads them each cycle)."""
    with Session(engine) as s:
        row = s.execute(text("SELECT value FROM system_config WHERE key='uploader'")).scalar_one()
        set_config(s, "uploader", {**row, **fields})
        s.commit()


def uploaded_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.flac") if p.is_file())
