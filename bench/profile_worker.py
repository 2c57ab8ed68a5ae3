"""Where a worker's time per pair goes: cProfile in the pool child, and every SQL statement
counted, over N pairs to one remote (the tool behind the changes bench/README.md lists).

    uv run python bench/profile_worker.py [--pairs 200] [--remote local|webdav] [--rate 48000]

Runs the real dispatcher and one worker (through this file's ``--child`` entry, which adds the
profiler and a SQLAlchemy statement counter to the pool child and then runs the normal
``silvasonic-uploader worker``), drains N 10 s 48 kHz pairs, stops the worker gracefully and
prints the top functions by cumulative time and the statements per pair.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import json
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any

OUT_ENV = "BENCH_PROFILE_OUT"
CPU_ENV = "BENCH_PROFILE_CPU"


def _child(argv: list[str]) -> None:
    """In the worker's process: profile and count in each pool child, then run the CLI."""
    from celery.signals import worker_process_init, worker_process_shutdown
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    # --cpu: count CPU time, not wall time (a wait on PostgreSQL or rclone then costs nothing)
    timer = time.process_time if os.environ.get(CPU_ENV) else time.perf_counter
    prof = cProfile.Profile(timer)
    counts: collections.Counter[str] = collections.Counter()

    def _count(_conn: Any, _cur: Any, statement: str, *_: Any) -> None:
        counts[" ".join(statement.split())[:160]] += 1

    def _start(**_: Any) -> None:
        event.listen(Engine, "before_cursor_execute", _count)
        prof.enable()

    def _stop(**_: Any) -> None:
        prof.disable()
        out = os.environ[OUT_ENV]
        prof.dump_stats(f"{out}.{os.getpid()}.prof")
        Path(f"{out}.{os.getpid()}.sql.json").write_text(json.dumps(dict(counts)))

    worker_process_init.connect(_start, weak=False)
    worker_process_shutdown.connect(_stop, weak=False)
    from silvasonic_uploader.cli.main import main as cli_main

    sys.argv = ["silvasonic-uploader", *argv]
    main_prof = cProfile.Profile(timer)  # the Celery main process (consumer, events, pool I/O)
    main_prof.enable()
    try:
        cli_main()
    finally:
        main_prof.disable()
        main_prof.dump_stats(f"{os.environ[OUT_ENV]}.main.prof")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
        return 0
    from bench._harness import Harness, make_wavs, wait_until

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--remote", choices=("local", "webdav"), default="local")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--sort", default="cumulative")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--rate", type=int, default=48_000, help="sample rate of the 10 s WAVs")
    parser.add_argument("--cpu", action="store_true", help="profile CPU time, not wall time")
    parser.add_argument("--main", action="store_true",
                        help="also print the Celery main process's profile")  # fmt: skip
    args = parser.parse_args()
    env = dict(item.partition("=")[::2] for item in args.env)
    h = Harness("bench-profile-")
    try:
        h.start(env)
        h.seed_station({"poll_interval": 1, "batch_size": 50, "bandwidth_limit": "0"})
        if args.remote == "webdav":
            dav = h.webdav()
            h.add_remote("r1", "webdav", dav.config(pacer_min_sleep="0"), "archive")
        else:
            (h.tmp / "archive").mkdir()
            h.add_remote("r1", "local", {}, str(h.tmp / "archive"))
        wavs = make_wavs(h.workspace / "src", args.pairs + 5, 10.0, args.rate)
        out = h.tmp / "profile"
        h.start_dispatcher()
        from silvasonic_uploader.cli.local_servers import free_port

        port = free_port()
        worker = h.spawn(
            "worker-r1",
            [sys.executable, __file__, "--child", "worker", "--remote", "r1",
             "--loglevel", "WARNING"],
            SILVASONIC_HEALTH_PORT=str(port), BENCH_PROFILE_OUT=str(out),
            **({CPU_ENV: "1"} if args.cpu else {}),
        )  # fmt: skip
        h.add_recordings(wavs[:5], args.rate, 10.0)  # warm-up
        assert wait_until(lambda: h.sql("SELECT count(*) FROM uploads WHERE success") == 5, 120)
        ids = h.add_recordings(wavs[5:], args.rate, 10.0)
        t0 = time.monotonic()
        assert wait_until(
            lambda: h.sql("SELECT count(*) FROM uploads WHERE success") == 5 + len(ids), 900
        ), f"not drained; logs in {h.logs}"
        wall = time.monotonic() - t0
        worker.stop()
        profs = sorted(p for p in h.tmp.glob("profile.*.prof") if ".main." not in p.name)
        if not profs:
            print(f"no profile written; see {worker.log_path}")
            return 1
        print(f"{len(ids)} pairs in {wall:.1f} s wall ({wall * 1000 / len(ids):.1f} ms/pair "
              "incl. dispatch latency); the pool child's profile:")  # fmt: skip
        stats = pstats.Stats(str(profs[0]))
        stats.sort_stats(args.sort).print_stats(args.top)
        main_prof = h.tmp / "profile.main.prof"
        if args.main and main_prof.exists():
            print("the Celery main process's profile:")
            pstats.Stats(str(main_prof)).sort_stats(args.sort).print_stats(args.top)
        counts: collections.Counter[str] = collections.Counter()
        for path in h.tmp.glob("profile.*.sql.json"):
            counts.update(json.loads(path.read_text()))
        pairs = len(ids) + 5
        print(f"SQL statements per pair (pool child): {sum(counts.values()) / pairs:.1f}")
        for statement, n in counts.most_common():
            print(f"{n / pairs:6.2f}  {statement}")
    finally:
        h.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
