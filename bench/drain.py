"""How a backlog drains: FLACs waiting in the worker's temp folder, and how soon each object
on the remote gets its success row (the Janitor's signal).

    uv run python bench/drain.py [--pairs 1000] [--batch 50] [--remote webdav|local] [--json PATH]

The real dispatcher and one worker run as subprocesses on a private PostgreSQL and Redis (as in
``memory.py``); N 10 s, 48 kHz pairs are added at once, a backlog. A sampler thread looks, every
20 ms, at the worker's temp folder (``*.flac`` files, the peak count) and at the remote's folder
on disk (the WebDAV server's root, or the local remote's folder): the first time an object's
final name is seen is when it *landed*. After the drain each object is matched with its success
row (``uploads.remote_path``'s file name) and the lag is ``attempt_at`` − landed, both on this
machine's clock. Printed: the temp folder's peak, the lag's median / p95 / max, and the drain
time. Targets (docs/celery.md, "depth-first"): at most 3 FLACs in the temp folder, p95 lag
≤ 5 s. A lag below zero cannot happen (the row follows the verified object) beyond the
sampling step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench._harness import Harness, machine, make_wavs

SAMPLE_EVERY_S = 0.02
TEMP_TARGET = 3
LAG_P95_TARGET_S = 5.0


def _flacs(root: Path) -> list[tuple[str, str]]:
    """(name, path) of every finished FLAC below ``root`` (partial uploads have other names)."""
    out = []
    for folder, _dirs, files in os.walk(root):
        out.extend((f, os.path.join(folder, f)) for f in files if f.endswith(".flac"))
    return out


class Watcher(threading.Thread):
    """Samples the temp folder's FLAC count and the first sighting of each remote object."""

    def __init__(self, temp_root: Path, remote_root: Path) -> None:
        super().__init__(daemon=True)
        self.temp_root, self.remote_root = temp_root, remote_root
        self.temp_peak = 0
        self.temp_series: list[int] = []
        self.landed: dict[str, float] = {}  # object file name -> wall clock first seen
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(SAMPLE_EVERY_S):
            in_temp = len(_flacs(self.temp_root))
            self.temp_series.append(in_temp)
            self.temp_peak = max(self.temp_peak, in_temp)
            now = time.time()
            for name, _path in _flacs(self.remote_root):
                self.landed.setdefault(name, now)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=50, help="uploader.batch_size")
    parser.add_argument("--remote", choices=("webdav", "local"), default="webdav")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="more environment for the service processes")  # fmt: skip
    args = parser.parse_args()
    env = dict(item.partition("=")[::2] for item in args.env)
    before = machine()
    h = Harness("bench-drain-")
    try:
        h.start(env)
        h.seed_station({"poll_interval": 1, "batch_size": args.batch, "bandwidth_limit": "0"})
        if args.remote == "webdav":
            dav = h.webdav()
            h.add_remote("r1", "webdav", dav.config(pacer_min_sleep="0"), "archive")
            remote_root = dav.root
        else:
            remote_root = h.tmp / "archive"
            remote_root.mkdir()
            h.add_remote("r1", "local", {}, str(remote_root))
        wavs = make_wavs(h.workspace / "src", args.pairs, 10.0, 48_000)
        h.start_dispatcher()
        h.start_worker("r1")
        h.temp_root.mkdir(parents=True, exist_ok=True)
        watcher = Watcher(h.temp_root, remote_root)
        watcher.start()
        ids = h.add_recordings(wavs, 48_000, 10.0)
        done, drain_s = h.wait_drained(len(ids), 120 + args.pairs * 1.0)
        time.sleep(0.5)
        watcher.stop_event.set()
        watcher.join()
        if done < len(ids):
            raise RuntimeError(f"drained only {done}/{len(ids)}; logs in {h.logs}")
        assert h.engine is not None
        with h.engine.connect() as conn:
            from sqlalchemy import text

            rows = conn.execute(
                text("SELECT remote_path, attempt_at FROM uploads WHERE success")
            ).all()
    finally:
        h.close()

    lags: list[float] = []
    unmatched = 0
    for remote_path, attempt_at in rows:
        landed = watcher.landed.get(Path(str(remote_path)).name)
        if landed is None:
            unmatched += 1
            continue
        lags.append(round(_timestamp(attempt_at) - landed, 3))
    if not lags:
        raise RuntimeError("no success row matched an object seen on the remote")
    results: dict[str, Any] = {
        "pairs": args.pairs,
        "batch_size": args.batch,
        "remote": args.remote,
        "drain_s": round(drain_s, 1),
        "temp_flacs_peak": watcher.temp_peak,
        "temp_flacs_mean": round(statistics.fmean(watcher.temp_series or [0]), 2),
        "lag_s_median": _pct(lags, 0.5),
        "lag_s_p95": _pct(lags, 0.95),
        "lag_s_max": max(lags),
        "lag_s_min": min(lags),
        "matched": len(lags),
        "unmatched": unmatched,
        "sample_every_s": SAMPLE_EVERY_S,
        "temp_target": TEMP_TARGET,
        "lag_p95_target_s": LAG_P95_TARGET_S,
        "temp_met": watcher.temp_peak <= TEMP_TARGET,
        "lag_met": _pct(lags, 0.95) <= LAG_P95_TARGET_S,
        "env": env,
        "machine_before": before,
        "machine_after": machine(),
    }
    print(f"drain: {args.pairs} pairs of 10 s 48 kHz to {args.remote}, batch {args.batch}, "
          f"drained in {drain_s:.1f} s; {before['cpus']} CPUs, load {before['loadavg']} before, "
          f"{results['machine_after']['loadavg']} after")  # fmt: skip
    print(f"  FLACs in the worker's temp folder: peak {watcher.temp_peak}, mean "
          f"{results['temp_flacs_mean']} (target ≤ {TEMP_TARGET}: "
          f"{'MET' if results['temp_met'] else 'NOT MET'})")  # fmt: skip
    print(f"  object landed → success row, s: median {results['lag_s_median']:.3f}, p95 "
          f"{results['lag_s_p95']:.3f}, max {results['lag_s_max']:.3f} over {len(lags)} objects "
          f"(target p95 ≤ {LAG_P95_TARGET_S:.0f}: {'MET' if results['lag_met'] else 'NOT MET'}"
          f"; sampled every {SAMPLE_EVERY_S * 1000:.0f} ms)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _timestamp(value: datetime) -> float:
    return value.timestamp()


if __name__ == "__main__":
    raise SystemExit(main())
