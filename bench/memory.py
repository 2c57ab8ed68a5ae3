"""Memory of one worker (docs/design/0009-targets.md: ≤ 150 MB at rest, ≤ 256 MB under
load), as PSS summed over all its processes: the Celery parent, the prefork pool child and the
``rclone rcd`` the child starts (and any ffmpeg/rclone child while it runs).

    uv run python bench/memory.py [--pairs 1000] [--remote webdav|local] [--json PATH]

The real dispatcher and one worker (``silvasonic-uploader worker``) run as subprocesses on a
private PostgreSQL and Redis from the wheels; the worker's tree is sampled every 0.2 s from
/proc/<pid>/smaps_rollup: at rest after start-up (before any work: no rcd yet), during a drain
of N 10 s, 48 kHz pairs (the peak), just after the drain (rcd still
running), and at rest once the worker has stopped its idle rcd (``SILVASONIC_RCLONE_RCD_IDLE_S``,
default 60 s). ``idle_rss_mb`` is the larger of the two rests, before and after work. PSS divides
shared pages among the processes that map them, so the sum counts the forked child's pages
shared with its parent once. The keys say "rss" for the issue's sake; the values are PSS.
Because PSS also shares a page with processes outside the worker (the dispatcher's Python, a
WebDAV server's rclone binary on this machine), the table adds the tree's distinct resident
pages, counted once each from /proc/<pid>/pagemap: what the worker's own container would hold.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from bench._harness import (
    Harness,
    cmdline,
    distinct_kib,
    machine,
    make_wavs,
    pss_kib,
    rss_kib,
    tree_pids,
    wait_until,
)

IDLE_TARGET_MB = 150.0
PEAK_TARGET_MB = 256.0
SAMPLE_EVERY_S = 0.2


def _role(pid: int, root: int) -> str:
    cmd = cmdline(pid)
    if pid == root:
        return "celery parent"
    if "rclone" in cmd and " rcd" in cmd:
        return "rclone rcd"
    if "rclone" in cmd:
        return "rclone (cli)"
    if "ffmpeg" in cmd:
        return "ffmpeg"
    return "pool child"


def snapshot(root: int) -> dict[str, tuple[int, int]]:
    """Role → (PSS KiB, RSS KiB), summed over the worker's live process tree; the key
    ``"distinct"`` holds the tree's distinct resident pages (container-like), as (KiB, KiB)."""
    out: dict[str, tuple[int, int]] = {}
    pids = tree_pids([root])
    for pid in pids:
        role = _role(pid, root)
        pss, rss = out.get(role, (0, 0))
        out[role] = (pss + pss_kib(pid), rss + rss_kib(pid))
    kib = distinct_kib(pids)
    out[DISTINCT] = (kib, kib)
    return out


DISTINCT = "distinct"


def total_mb(snap: dict[str, tuple[int, int]], index: int = 0) -> float:
    return round(sum(v[index] for k, v in snap.items() if k != DISTINCT) / 1024, 1)


def distinct_mb(snap: dict[str, tuple[int, int]]) -> float:
    return round(snap.get(DISTINCT, (0, 0))[0] / 1024, 1)


class Sampler(threading.Thread):
    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.peak: dict[str, tuple[int, int]] = {}
        self.peak_distinct_mb = 0.0
        self.samples: list[tuple[float, float]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop_event.wait(SAMPLE_EVERY_S):
            snap = snapshot(self.root)
            mb = total_mb(snap)
            self.samples.append((round(time.monotonic() - t0, 1), mb))
            if mb > total_mb(self.peak):
                self.peak = snap
            self.peak_distinct_mb = max(self.peak_distinct_mb, distinct_mb(snap))


def rest(root: int, seconds: float) -> dict[str, tuple[int, int]]:
    """The median snapshot (by total PSS) over a few seconds of rest."""
    snaps = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        snaps.append(snapshot(root))
        time.sleep(SAMPLE_EVERY_S)
    snaps.sort(key=total_mb)
    return snaps[len(snaps) // 2]


def _mb(snap: dict[str, tuple[int, int]]) -> dict[str, dict[str, float]]:
    return {k: {"pss_mb": round(v[0] / 1024, 1), "rss_mb": round(v[1] / 1024, 1)}
            for k, v in sorted(snap.items()) if k != DISTINCT}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--remote", choices=("webdav", "local"), default="webdav")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="more environment for the worker (engine, transport, …)")  # fmt: skip
    args = parser.parse_args()
    env = dict(item.partition("=")[::2] for item in args.env)
    from tasks.runtime import WORKER_TRANSPORT
    from uploader.audio.flac_encoder import DEFAULT_ENGINE
    from uploader.rclone.client import DEFAULT_RCD_IDLE_S, RCD_IDLE_ENV

    engine = (
        env.get("SILVASONIC_FLAC_ENGINE")
        or os.environ.get("SILVASONIC_FLAC_ENGINE")
        or DEFAULT_ENGINE
    )
    transport = (env.get("SILVASONIC_RCLONE_TRANSPORT")
                 or os.environ.get("SILVASONIC_RCLONE_TRANSPORT") or WORKER_TRANSPORT)  # fmt: skip
    idle_raw = env.get(RCD_IDLE_ENV) or os.environ.get(RCD_IDLE_ENV) or ""
    idle_stop_s = float(idle_raw) if idle_raw.strip() else DEFAULT_RCD_IDLE_S
    before = machine()
    h = Harness("bench-memory-")
    try:
        h.start(env)
        h.seed_station({"poll_interval": 1, "batch_size": 50, "bandwidth_limit": "0"})
        if args.remote == "webdav":
            dav = h.webdav()
            h.add_remote("r1", "webdav", dav.config(pacer_min_sleep="0"), "archive")
        else:
            (h.tmp / "archive").mkdir()
            h.add_remote("r1", "local", {}, str(h.tmp / "archive"))
        wavs = make_wavs(h.workspace / "src", args.pairs, 10.0, 48_000)
        h.start_dispatcher()
        worker = h.start_worker("r1")
        time.sleep(3)
        cold = rest(worker.pid, 4)
        sampler = Sampler(worker.pid)
        sampler.start()
        ids = h.add_recordings(wavs, 48_000, 10.0)
        done, drain_s = h.wait_drained(len(ids), 60 + args.pairs * 1.0, every_s=0.5)
        sampler.stop_event.set()
        sampler.join()
        if done < len(ids):
            raise RuntimeError(f"drained only {done}/{len(ids)}; logs in {h.logs}")
        time.sleep(3)
        busy_rest = rest(worker.pid, 4)  # just after the drain: the rcd daemon still runs
        # at rest: the worker stops an idle daemon after SILVASONIC_RCLONE_RCD_IDLE_S
        if transport == "rcd" and idle_stop_s > 0:
            wait_until(lambda: "rclone rcd" not in snapshot(worker.pid), idle_stop_s + 30, 0.5)
            time.sleep(2)
        warm = rest(worker.pid, 5)
    finally:
        h.close()

    idle_mb = max(total_mb(cold), total_mb(warm))  # at rest: before any work, and after
    peak_mb = max(total_mb(sampler.peak), idle_mb)
    results: dict[str, Any] = {
        "idle_rss_mb": idle_mb,
        "peak_rss_mb": peak_mb,
        "metric": "PSS summed over the worker's processes (MB = MiB)",
        "idle_before_work_mb": total_mb(cold),
        "idle_after_work_mb": total_mb(warm),
        "just_after_drain_mb": total_mb(busy_rest),
        "distinct_just_after_drain_mb": distinct_mb(busy_rest),
        "rcd_idle_stop_s": idle_stop_s,
        "rss_sum_idle_after_work_mb": total_mb(warm, 1),
        "distinct_idle_after_work_mb": distinct_mb(warm),
        "distinct_peak_mb": sampler.peak_distinct_mb,
        "rss_sum_peak_mb": total_mb(sampler.peak, 1),
        "by_process": {
            "idle_before_work": _mb(cold),
            "peak": _mb(sampler.peak),
            "just_after_drain": _mb(busy_rest),
            "idle_after_work": _mb(warm),
        },
        "pairs": args.pairs,
        "remote": args.remote,
        "engine": engine,
        "transport": transport,
        "drain_s": round(drain_s, 1),
        "samples": len(sampler.samples),
        "idle_target_mb": IDLE_TARGET_MB,
        "peak_target_mb": PEAK_TARGET_MB,
        "idle_met": idle_mb <= IDLE_TARGET_MB,
        "peak_met": peak_mb <= PEAK_TARGET_MB,
        "machine_before": before,
        "machine_after": machine(),
    }
    print(f"memory: one worker, engine={engine} transport={transport}, remote={args.remote}, "
          f"{args.pairs} pairs drained in {drain_s:.0f} s, {len(sampler.samples)} samples "
          f"every {SAMPLE_EVERY_S} s; {before['cpus']} CPUs, load {before['loadavg']}")  # fmt: skip
    cols = (cold, sampler.peak, busy_rest, warm)
    print(f"{'PSS MB':<17}{'rest before':>12}{'peak':>8}{'after drain':>12}{'at rest':>9}")
    for role in sorted({k for c in cols for k in c} - {DISTINCT}):
        vals = [s.get(role, (0, 0))[0] / 1024 for s in cols]
        print(
            f"{role:<17}"
            + "".join(f"{v:>{w}.1f}" for v, w in zip(vals, (12, 8, 12, 9), strict=True))
        )
    rows = {
        "total PSS": [total_mb(c) for c in cols],
        "(sum of RSS)": [total_mb(c, 1) for c in cols],
        "(distinct pages)": [distinct_mb(cold), sampler.peak_distinct_mb,
                             distinct_mb(busy_rest), distinct_mb(warm)],
    }  # fmt: skip
    for name, vals in rows.items():
        print(
            f"{name:<17}"
            + "".join(f"{v:>{w}.1f}" for v, w in zip(vals, (12, 8, 12, 9), strict=True))
        )
    print("(distinct pages: the tree's resident pages counted once, as its own container would "
          "hold them; PSS shares pages with other processes on this machine)")  # fmt: skip
    print(f"at rest {idle_mb} MB: target ≤ {IDLE_TARGET_MB:.0f} "
          f"{'MET' if results['idle_met'] else 'NOT MET'}; peak {peak_mb} MB: target ≤ "
          f"{PEAK_TARGET_MB:.0f} {'MET' if results['peak_met'] else 'NOT MET'}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
