"""Per-pair cost of the whole system against the plain loop a script would be
(docs/design/0009-targets.md).

    uv run python bench/throughput.py [--quick] [--json PATH] [--engine E] [--transport T]

The same WAVs (10 s, 16-bit mono: a 48 kHz series and a 384 kHz series) go through

- **system**: the real dispatcher (``silvasonic-uploader beat``) and one prefork worker
  (``silvasonic-uploader worker --remote SLUG``) as subprocesses on a private PostgreSQL and
  Redis started from the wheels. Per-pair time = drain time / N, from the first claim of the run
  (``pair_state.updated_at``) to the last success row (``uploads.attempt_at``), both the
  database's clock; process start-up (and the rcd daemon's, and a warm-up run) is excluded.
- **plain**: per file ``ffmpeg -i x.wav -c:a flac -compression_level 5 x.flac``, ``rclone
  copyto x.flac remote:path`` and one INSERT (autocommit, one connection held open).

Remotes on 127.0.0.1: ``rclone serve webdav`` (with ``pacer_min_sleep=0`` for both sides,
so rclone's pacer does not set the pace) and a local folder. Runs are interleaved (system, plain,
plain, system, …) and repeated; the table shows medians, and CPU time (user+sys) beside wall
time, because CPU time is less disturbed by other load on the machine. "CPU" of the system is
its own processes (worker tree incl. rclone rcd, dispatcher tree); the servers' CPU (PostgreSQL,
Redis, the WebDAV server) is shown apart for both sides. "all CPU" adds PostgreSQL and Redis to
each side's own processes (the WebDAV server is the remote, not the system): the CPU a station
spends per recording. Last, libFLAC's own encode of one file of each series (read the WAV,
write the FLAC through libsndfile) is timed as the floor a large segment cannot go below.

``--engine``/``--transport`` override SILVASONIC_FLAC_ENGINE/SILVASONIC_RCLONE_TRANSPORT for
the system (default: the production defaults, i.e. whatever the worker picks without them).
The JSON's ``ratio`` is the 48 kHz WebDAV series (the target's definition: a 10 s, 48 kHz
segment to one remote); ``ratios`` has every series.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._harness import SENSOR, Harness, cpu_by_role, cpu_seconds, machine, make_wavs, tree_pids
from uploader.audio.flac_encoder import resolve_ffmpeg
from uploader.rclone.client import RcloneClient, find_rclone_binary

TARGET_RATIO = 0.15
GOAL_RATIO = 0.10
STATION = "silvasonic-bench"  # path_builder's slug of "Silvasonic Bench"


@dataclass(frozen=True)
class Series:
    name: str
    rate: int
    n: int
    seconds: float = 10.0


@dataclass
class Sample:
    wall_ms: float  # per pair
    cpu_ms: float  # per pair, the side's own processes
    server_cpu_ms: float  # per pair, PostgreSQL + Redis + WebDAV server
    worker_cpu_ms: float = 0.0  # per pair, the worker's tree alone (system side)
    split_ms: dict[str, float] | None = None  # per pair and process role (system side)


def _children_cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class Bench:
    def __init__(self, h: Harness, quiet: bool) -> None:
        self.h = h
        self.quiet = quiet
        self.ffmpeg = resolve_ffmpeg()
        self.rclone = find_rclone_binary()
        self.run_no = 0
        self.plain_db = h.pg.connect("silvasonic")
        self.plain_db.autocommit = True
        with self.plain_db.cursor() as cur:
            cur.execute(
                "CREATE TABLE plain_uploads (id bigserial PRIMARY KEY, filename text NOT NULL,"
                " size bigint NOT NULL, remote_path text NOT NULL, success boolean NOT NULL,"
                " attempt_at timestamptz NOT NULL DEFAULT now())"
            )

    def server_roots(self) -> list[int]:
        roots = [p.pid for p in (self.h.pg.proc, self.h.redis.proc) if p is not None]
        roots += [d.proc.pid for d in self.h.webdavs if d.proc is not None]
        return roots

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    def run_dir(self, wavs: list[Path]) -> list[Path]:
        """Hard links of the series' WAVs under fresh names (fresh rows, fresh remote paths)."""
        self.run_no += 1
        folder = self.h.workspace / f"run{self.run_no:03d}"
        folder.mkdir()
        out = []
        for wav in wavs:
            link = folder / f"r{self.run_no:03d}_{wav.name}"
            os.link(wav, link)
            out.append(link)
        return out

    # -- the system ---------------------------------------------------------------------------

    def system_run(
        self, slug: str, target: str, wavs: list[Path], series: Series, timeout_s: float
    ) -> Sample:
        files = self.run_dir(wavs)
        self.h.sql("UPDATE storage_remotes SET target_path = :p WHERE slug = :s",
                   p=f"{target}/run{self.run_no:03d}", s=slug)  # fmt: skip
        roots = self.h.service_roots()
        servers = self.server_roots()
        worker = [self.h.services[n].pid for n in self.h.services if n.startswith("worker")]
        cpu0, srv0, wk0 = cpu_seconds(roots), cpu_seconds(servers), cpu_seconds(worker)
        split0 = cpu_by_role(roots + servers, self.role)
        ids = self.h.add_recordings(files, series.rate, series.seconds)
        lo, hi = min(ids), max(ids)
        first_claim = None
        deadline = time.monotonic() + timeout_s
        done = 0
        while time.monotonic() < deadline:
            if first_claim is None:
                first_claim = self.h.sql(
                    "SELECT min(updated_at) FROM pair_state WHERE remote_slug = :s "
                    "AND recording_id BETWEEN :lo AND :hi", s=slug, lo=lo, hi=hi,
                )  # fmt: skip
            done = int(self.h.sql(
                "SELECT count(*) FROM uploads WHERE success AND remote_slug = :s "
                "AND recording_id BETWEEN :lo AND :hi", s=slug, lo=lo, hi=hi,
            ))  # fmt: skip
            if done >= len(ids):
                break
            time.sleep(0.02)
        cpu1, srv1, wk1 = cpu_seconds(roots), cpu_seconds(servers), cpu_seconds(worker)
        split1 = cpu_by_role(roots + servers, self.role)
        if done < len(ids) or first_claim is None:
            raise RuntimeError(f"system run drained {done}/{len(ids)} pairs in {timeout_s}s; "
                               f"logs in {self.h.logs}")  # fmt: skip
        last = self.h.sql(
            "SELECT max(attempt_at) FROM uploads WHERE success AND remote_slug = :s "
            "AND recording_id BETWEEN :lo AND :hi", s=slug, lo=lo, hi=hi,
        )  # fmt: skip
        flagged = int(self.h.sql(
            "SELECT count(*) FROM recordings WHERE uploaded AND id BETWEEN :lo AND :hi",
            lo=lo, hi=hi,
        ))  # fmt: skip
        if flagged != len(ids):
            raise RuntimeError(f"only {flagged}/{len(ids)} recordings flagged uploaded")
        # the Janitor's part: the next run points the remote at a fresh folder, and a remote
        # pointed elsewhere uploads again what is still on disk (uploader.remotes.destination)
        self.h.sql("UPDATE recordings SET local_deleted = true WHERE id BETWEEN :lo AND :hi",
                   lo=lo, hi=hi)  # fmt: skip
        n = len(ids)
        return Sample(
            (last - first_claim).total_seconds() * 1000 / n,
            (cpu1 - cpu0) * 1000 / n,
            (srv1 - srv0) * 1000 / n,
            (wk1 - wk0) * 1000 / n,
            {k: round((v - split0.get(k, 0.0)) * 1000 / n, 2) for k, v in split1.items()},
        )

    def role(self, pid: int, cmd: str) -> str:
        """Which process of the run this is, for the CPU split."""
        for name, service in self.h.services.items():
            kind = name.split("-")[0]
            if pid == service.pid:
                return f"{kind} main"
            if pid in tree_pids([service.pid]):
                return f"{kind} rclone" if "rclone" in cmd else f"{kind} children"
        if "rclone" in cmd:
            return "webdav server"
        return "postgres" if "postgres" in cmd else "redis" if "redis" in cmd else "other"

    # -- the plain loop -----------------------------------------------------------------------

    def plain_run(self, client: RcloneClient, target: str, wavs: list[Path]) -> Sample:
        files = self.run_dir(wavs)
        out_dir = self.h.tmp / f"plain{self.run_no:03d}"
        out_dir.mkdir()
        env = client.child_env()
        prefix = f"{target}/run{self.run_no:03d}/silvasonic/{STATION}/{SENSOR}/2026-05-01"
        servers = self.server_roots()
        split0 = cpu_by_role(servers, self.role)
        srv0, cpu0, t0 = cpu_seconds(servers), _children_cpu(), time.perf_counter()
        with self.plain_db.cursor() as cur:
            for wav in files:
                flac = out_dir / f"{wav.stem}.flac"
                subprocess.run(
                    [self.ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
                     "-i", str(wav), "-c:a", "flac", "-compression_level", "5", str(flac)],
                    check=True,
                )  # fmt: skip
                remote_path = f"{prefix}/{flac.name}"
                subprocess.run(
                    [self.rclone, "copyto", str(flac), f"silvasonic:{remote_path}"],
                    check=True, env=env, stdin=subprocess.DEVNULL,
                )  # fmt: skip
                cur.execute(
                    "INSERT INTO plain_uploads (filename, size, remote_path, success) "
                    "VALUES (%s, %s, %s, true)",
                    (flac.name, flac.stat().st_size, remote_path),
                )
                flac.unlink()
        t1, cpu1, srv1 = time.perf_counter(), _children_cpu(), cpu_seconds(servers)
        split1 = cpu_by_role(servers, self.role)
        n = len(files)
        return Sample(
            (t1 - t0) * 1000 / n,
            (cpu1 - cpu0) * 1000 / n,
            (srv1 - srv0) * 1000 / n,
            split_ms={k: round((v - split0.get(k, 0.0)) * 1000 / n, 2) for k, v in split1.items()},
        )


def _med(values: list[float]) -> float:
    return round(statistics.median(values), 2)


#: the database and the broker are part of what a pair costs; the WebDAV server is the remote
DATABASE_ROLES = ("postgres", "redis")


def _all_cpu(sample: Sample) -> float:
    """CPU per pair summed over every process of a side, the remote's server excepted: its
    own processes (worker, dispatcher, rclone; or ffmpeg, rclone, the loop) plus PostgreSQL
    and Redis."""
    split = sample.split_ms or {}
    return sample.cpu_ms + sum(split.get(role, 0.0) for role in DATABASE_ROLES)


def encode_floor(wav: Path, out_dir: Path, runs: int = 7) -> tuple[float, float]:
    """libFLAC's own cost for one file (wall ms, CPU ms; medians): read the WAV, write the
    FLAC through libsndfile, nothing else. For a large segment the encode is the floor of
    what a pair can cost."""
    import soundfile as sf

    out_dir.mkdir(parents=True, exist_ok=True)
    walls, cpus = [], []
    for _ in range(runs + 1):  # the first is a warm-up
        c0, w0 = _children_cpu(), time.perf_counter()
        data, rate = sf.read(str(wav), dtype="int32", always_2d=True)
        sf.write(str(out_dir / "floor.flac"), data, rate, format="FLAC", subtype="PCM_16")
        walls.append((time.perf_counter() - w0) * 1000)
        cpus.append((_children_cpu() - c0) * 1000)
    return _med(walls[1:]), _med(cpus[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer files and one repeat")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--n48", type=int, help="pairs per 48 kHz run (default 200, quick 60)")
    parser.add_argument("--n384", type=int, help="pairs per 384 kHz run (default 40, quick 15)")
    parser.add_argument("--repeats", type=int, help="runs per side and series (default 3)")
    parser.add_argument("--remotes", default="webdav,local", help="webdav,local or one of them")
    parser.add_argument("--engine", help="SILVASONIC_FLAC_ENGINE for the worker")
    parser.add_argument("--transport", help="SILVASONIC_RCLONE_TRANSPORT for the worker")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="more environment for the service processes")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    n48 = args.n48 or (60 if args.quick else 200)
    n384 = args.n384 or (15 if args.quick else 40)
    repeats = args.repeats or (1 if args.quick else 3)
    remotes = [r.strip() for r in args.remotes.split(",") if r.strip()]
    series = [Series("48k", 48_000, n48), Series("384k", 384_000, n384)]

    service_env: dict[str, str] = {}
    if args.engine:
        service_env["SILVASONIC_FLAC_ENGINE"] = args.engine
    if args.transport:
        service_env["SILVASONIC_RCLONE_TRANSPORT"] = args.transport
    for item in args.env:
        name, _, value = item.partition("=")
        service_env[name] = value
    # the production defaults, as the worker resolves them without overrides
    from tasks.runtime import WORKER_TRANSPORT
    from uploader.audio.flac_encoder import DEFAULT_ENGINE, DEFAULT_VERIFY

    def _setting(name: str, default: str) -> str:
        return service_env.get(name) or os.environ.get(name) or default

    engine = _setting("SILVASONIC_FLAC_ENGINE", DEFAULT_ENGINE)
    transport = _setting("SILVASONIC_RCLONE_TRANSPORT", WORKER_TRANSPORT)
    verify = _setting("SILVASONIC_FLAC_VERIFY", DEFAULT_VERIFY)

    load_before = machine()
    h = Harness("bench-throughput-")
    samples: dict[str, dict[str, list[Sample]]] = {}
    clients: dict[str, RcloneClient] = {}
    try:
        h.start(service_env)
        bench = Bench(h, quiet=not args.verbose)
        h.seed_station({"poll_interval": 1, "batch_size": 50, "bandwidth_limit": "0"})
        dav = h.webdav()
        dav_config = dav.config(pacer_min_sleep="0")
        local_root = h.tmp / "local-archive"
        local_root.mkdir()
        targets = {"webdav": "archive", "local": str(local_root)}
        clients["webdav"] = RcloneClient("plain-dav", "webdav", dav_config, None, transport="cli")
        clients["local"] = RcloneClient("plain-usb", "local", {}, str(local_root), transport="cli")
        h.add_remote("dav", "webdav", dav_config, "archive", active=False)
        h.add_remote("usb", "local", {}, str(local_root), active=False)
        wavs = {
            s.name: make_wavs(h.workspace / f"src-{s.name}", s.n, s.seconds, s.rate) for s in series
        }
        h.start_dispatcher()
        for remote in remotes:
            slug = {"webdav": "dav", "local": "usb"}[remote]
            h.sql("UPDATE storage_remotes SET is_active = (slug = :s)", s=slug)
            worker = h.start_worker(slug)
            # warm-up: the pool child's first imports, the rcd daemon, the remote's folders
            bench.system_run(slug, targets[remote], wavs["48k"][:5], series[0], 120)
            bench.plain_run(clients[remote], targets[remote], wavs["48k"][:3])
            for rep in range(repeats):
                for s in series:
                    key = f"{remote} {s.name}"
                    per = samples.setdefault(key, {"system": [], "plain": []})
                    order = ["system", "plain"] if rep % 2 == 0 else ["plain", "system"]
                    for side in order:
                        if side == "system":
                            timeout = 120 + s.n * (2.0 if s.rate > 48_000 else 0.5)
                            sample = bench.system_run(slug, targets[remote], wavs[s.name], s,
                                                      timeout)  # fmt: skip
                        else:
                            sample = bench.plain_run(clients[remote], targets[remote],
                                                     wavs[s.name])  # fmt: skip
                        per[side].append(sample)
                        bench.log(f"{key} {side} run {rep + 1}: {sample}")
            worker.stop()
            del h.services[worker.name]
        floors = {s.name: encode_floor(wavs[s.name][0], h.tmp / "floor") for s in series}
    finally:
        for c in clients.values():
            c.close()
        h.close(keep=args.keep)

    results: dict[str, Any] = {
        "engine": engine,
        "transport": transport,
        "verify": verify,
        "repeats": repeats,
        "n": {s.name: s.n for s in series},
        "series": {},
        "ratios": {},
        "machine_before": load_before,
        "machine_after": machine(),
    }
    header = (f"{'series':<12} {'N':>4}  {'system ms/pair':>14} {'plain ms/pair':>13} "
              f"{'ratio':>6}  {'sys CPU':>8} {'(worker)':>8} {'plain CPU':>9} {'CPU ratio':>9}  "
              f"{'srv CPU sys/plain':>17}  {'all CPU sys/plain':>17} {'ratio':>6}")  # fmt: skip
    lines = [header, "-" * len(header)]
    for key, per in samples.items():
        s = next(x for x in series if key.endswith(x.name))
        sys_wall = _med([x.wall_ms for x in per["system"]])
        pl_wall = _med([x.wall_ms for x in per["plain"]])
        sys_cpu = _med([x.cpu_ms for x in per["system"]])
        pl_cpu = _med([x.cpu_ms for x in per["plain"]])
        sys_srv = _med([x.server_cpu_ms for x in per["system"]])
        sys_wk = _med([x.worker_cpu_ms for x in per["system"]])
        pl_srv = _med([x.server_cpu_ms for x in per["plain"]])
        sys_all = _med([_all_cpu(x) for x in per["system"]])
        pl_all = _med([_all_cpu(x) for x in per["plain"]])
        ratio = round(sys_wall / pl_wall, 3)
        results["ratios"][key] = ratio
        results["series"][key] = {
            "n": s.n,
            "system_ms_per_pair": sys_wall,
            "plain_ms_per_pair": pl_wall,
            "ratio": ratio,
            "system_cpu_ms_per_pair": sys_cpu,
            "plain_cpu_ms_per_pair": pl_cpu,
            "cpu_ratio": round(sys_cpu / pl_cpu, 3),
            "system_server_cpu_ms_per_pair": sys_srv,
            "system_worker_cpu_ms_per_pair": sys_wk,
            "plain_server_cpu_ms_per_pair": pl_srv,
            "system_all_cpu_ms_per_pair": sys_all,
            "plain_all_cpu_ms_per_pair": pl_all,
            "all_cpu_ratio": round(sys_all / pl_all, 3),
            "encode_floor_ms": floors[s.name][0],
            "encode_floor_cpu_ms": floors[s.name][1],
            "wall_over_floor": round(sys_wall / floors[s.name][0], 2),
            "all_cpu_over_floor": round(sys_all / floors[s.name][1], 2),
            "runs": {side: [vars(x) for x in xs] for side, xs in per.items()},
        }
        lines.append(
            f"{key:<12} {s.n:>4}  {sys_wall:>14.1f} {pl_wall:>13.1f} {ratio:>6.3f}  "
            f"{sys_cpu:>8.1f} {sys_wk:>8.1f} {pl_cpu:>9.1f} {sys_cpu / pl_cpu:>9.3f}  "
            f"{sys_srv:>8.1f}/{pl_srv:<8.1f}  {sys_all:>8.1f}/{pl_all:<8.1f} "
            f"{sys_all / pl_all:>6.3f}"
        )
    headline = results["ratios"].get("webdav 48k")
    if headline is None and results["ratios"]:
        headline = next(iter(results["ratios"].values()))
    results["ratio"] = headline
    results["target_ratio"] = TARGET_RATIO
    results["goal_ratio"] = GOAL_RATIO
    results["target_met"] = headline is not None and headline <= TARGET_RATIO
    mb = results["machine_before"]
    print(f"throughput: engine={engine} verify={verify} transport={transport}, "
          f"{repeats} run(s) per side, "
          f"medians; {mb['cpus']} CPUs ({mb['cpu_model']}), load {mb['loadavg']} before, "
          f"{results['machine_after']['loadavg']} after")  # fmt: skip
    print("\n".join(lines))
    print("system CPU per pair by process, ms (medians):")
    for key, per in samples.items():
        roles = sorted({r for x in per["system"] for r in (x.split_ms or {})})
        split = {r: _med([(x.split_ms or {}).get(r, 0.0) for x in per["system"]]) for r in roles}
        results["series"][key]["system_cpu_split_ms_per_pair"] = split
        print(f"  {key:<12} " + ", ".join(f"{r} {v:.1f}" for r, v in split.items() if v >= 0.05))
    print("libFLAC's own encode of one file (the floor), and the system against it:")
    for key, entry in results["series"].items():
        print(f"  {key:<12} floor {entry['encode_floor_ms']:.1f} ms wall, "
              f"{entry['encode_floor_cpu_ms']:.1f} ms CPU; system wall ×"
              f"{entry['wall_over_floor']:.2f}, all CPU ×{entry['all_cpu_over_floor']:.2f}"
              + ("  (target ≤ ×1.3 each)" if "384k" in key else ""))  # fmt: skip
    headline_cpu = results["series"].get("webdav 48k", {}).get("all_cpu_ratio")
    if headline_cpu is not None:
        print(f"all CPU ratio (webdav 48k) = {headline_cpu}: target ≤ {TARGET_RATIO} "
              f"{'MET' if headline_cpu <= TARGET_RATIO else 'NOT MET'}")  # fmt: skip
    verdict = "MET" if results["target_met"] else "NOT MET"
    goal = "met" if headline is not None and headline <= GOAL_RATIO else "not met"
    print(f"ratio (webdav 48k) = {headline}: target ≤ {TARGET_RATIO} {verdict}; "
          f"goal ≤ {GOAL_RATIO} {goal}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
