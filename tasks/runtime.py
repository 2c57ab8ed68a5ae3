"""What one worker process keeps between tasks: its context (remote slug, workspace, temp
dir), a Redis client for counters and top-up requests, its two-phase ``UploadStats``, and the
rclone client of its remote (rebuilt when the remote's configuration changes, so a long-lived
``rclone rcd`` is reused across tasks). Built lazily in the process that runs tasks, after the
prefork fork."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from sqlalchemy.orm import Session

from uploader.audio.flac_encoder import default_engine
from uploader.audio.temp_dir import worker_temp_dir
from uploader.db.session import get_engine
from uploader.ops.upload_stats import UploadStats
from uploader.pipeline.steps import RemoteSnapshot, WorkerContext
from uploader.pipeline.transfer_ahead import TransfersAhead
from uploader.rclone.client import TRANSPORT_ENV, RcloneClient
from uploader.remotes.config import config_fingerprint
from uploader.settings import StationSettings, UploaderServiceSettings, load_station_settings

#: the worker's rclone transport unless SILVASONIC_RCLONE_TRANSPORT says otherwise: one
#: long-lived ``rclone rcd`` per worker costs 2-6 ms per file against 40-50 ms for a process per
#: file (bench/README.md). ``RcloneClient`` itself keeps ``cli`` for one-off callers.
WORKER_TRANSPORT = "rcd"
#: a worker rereads the station settings at most this often: every step of every pair read
#: them (4 round trips per pair, measured with bench/profile_worker.py); an operator's change
#: still applies within a second, without a restart
SETTINGS_TTL_S = 1.0


@dataclass
class Runtime:
    ctx: WorkerContext
    redis: redis.Redis[Any]
    stats: UploadStats
    ahead: TransfersAhead = field(default_factory=lambda: TransfersAhead(get_engine))
    _clients: dict[str, tuple[str, RcloneClient]] = field(default_factory=dict)
    _settings: tuple[float, StationSettings] | None = None

    def station_settings(self, session: Session) -> StationSettings:
        """The station settings, read through ``session`` when the copy is older than
        ``SETTINGS_TTL_S``."""
        now = time.monotonic()
        if self._settings is None or now - self._settings[0] >= SETTINGS_TTL_S:
            self._settings = (now, load_station_settings(session))
        return self._settings[1]

    def client_for(self, remote: RemoteSnapshot) -> RcloneClient:
        """The remote's client; a changed configuration builds (and validates) a new one."""
        fingerprint = config_fingerprint(remote.type, remote.config, remote.target_path)
        cached = self._clients.get(remote.slug)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        if cached is not None:
            cached[1].close()
        client = RcloneClient(
            remote.slug,
            remote.type,
            remote.config,
            remote.target_path,
            transport=os.environ.get(TRANSPORT_ENV) or WORKER_TRANSPORT,
        )
        self._clients[remote.slug] = (fingerprint, client)
        return client

    def close(self) -> None:
        self.ahead.close()
        for _, client in self._clients.values():
            client.close()
        self._clients.clear()


_runtime: Runtime | None = None


def get_runtime(remote_slug: str | None = None) -> Runtime:
    global _runtime
    if _runtime is None:
        env = UploaderServiceSettings()
        slug = remote_slug or env.storage_remote_slug or "unknown"
        _runtime = Runtime(
            ctx=WorkerContext(
                remote_slug=slug,
                workspace_root=Path(env.recorder_workspace),
                temp_dir=worker_temp_dir(slug),
                flac_engine=default_engine(),  # fails fast on an unknown engine name
            ),
            redis=redis.Redis.from_url(env.redis_url.get_secret_value()),
            stats=UploadStats(),
        )
    return _runtime


def reset_runtime() -> None:
    """Forget the parent's runtime in a freshly forked child."""
    global _runtime
    _runtime = None
