"""A worker's memory in its real cgroup: the container the controller starts, with the spec's
256m limit, draining two backlogs.

    sudo CONTAINERS_CONF=$PWD/tests/image/containers.conf uv run python \\
        bench/container_memory.py [--n48 1000] [--n384 100] [--remote webdav|local] [--warm] \\
        [--drop-caches] [--json PATH]

``compose.yml`` is brought up with podman-compose exactly as the ``-m image`` stack test does
(tests/image/stack.py: the same image, stand-in PostgreSQL and Redis, the controller on a
Podman API socket), with ONE remote, so the controller starts ONE worker container
(controller_ext's container spec: 256m, 0.5 CPU, OOM score 250, read-only root, its temp
tmpfs inside the limit). Two series, one after the other: N 10 s / 48 kHz / 16-bit pairs, then
N 10 s / 384 kHz / 24-bit pairs, each added at once (a backlog) the way the Indexer writes
them; unless ``--warm``, each WAV is written back and dropped from the host's page cache
before its row is added: on a station the Recorder wrote it a while ago, so the worker reads
it from disk and its cgroup is charged for the pages (the worst case). Before each series the
cgroup's peak and failcnt are reset (cgroup v1: write 0; v2 on kernel 6.12+: memory.peak per
writer, older: the peak since the container started).

Read from the kernel (the container's own accounting, anonymous plus file pages plus its tmpfs):
peak (v1 memory.max_usage_in_bytes, v2 memory.peak), failcnt (v1; v2 memory.events "max": the
limit was hit and reclaim ran), OOM kills (v1 memory.oom_control, v2 memory.events), and,
sampled every 0.25 s, the usage and its split (rss, cache, shmem = the temp tmpfs) at the
highest sample. Targets (#14): peak <= 200 MB, 0 OOM kills, 0 failcnt. Timing is printed,
never judged: the host is shared. Needs root, Podman, podman-compose (dev dependency).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.image.stack import (
    CgroupMemory,
    Stack,
    build_images,
    cgroup_memory_dir,
    podman,
    reset_peak,
)
from uploader.rclone.client import find_rclone_binary

MB = 1_000_000
SLUG = "bench-mem"


@dataclass
class Series:
    name: str
    pairs: int
    rate: int
    subtype: str
    wav_bytes: int = 0
    drain_s: float = 0.0
    peak: int = 0
    failcnt: int = 0
    oom: int = 0
    oom_kill: int = 0
    sampled_max: int = 0
    split_at_max: dict[str, int] = field(default_factory=dict)
    at_rest_after: int = 0
    restarts: int = 0
    oom_killed_flag: bool = False
    #: the highest RssAnon each process of the worker reached in the series, MB (by its name)
    process_anon_max: dict[str, float] = field(default_factory=dict)


def process_name(pid: int) -> str:
    """``celery``/``pool child``/``rclone rcd``/... from the command line (comm is cut at 15)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    words = [a.decode(errors="replace") for a in argv if a]
    base = Path(words[0]).name if words else "?"
    if base == "rclone" and len(words) > 1:
        return f"rclone {words[1]}"
    if "python" in base or "silvasonic" in " ".join(words[:2]):
        return "python " + " ".join(Path(w).name for w in words[1:3])
    return base


def process_anon(directory: Path) -> dict[str, float]:
    """RssAnon (MB) of every process in the cgroup, by name (pool children share one name:
    the largest counts). Anonymous pages a fork still shares with its parent appear in both;
    the cgroup counts them once."""
    found: dict[str, float] = {}
    for line in (directory / "cgroup.procs").read_text().split():
        pid = int(line)
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            name = process_name(pid)
        except OSError:
            continue  # it ended between the listing and the read
        if name.startswith("python") and "PPid" in status:
            ppid = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("PPid:"))
            if Path(f"/proc/{ppid}/cmdline").exists() and "python" in process_name(ppid):
                name = "pool child"
        for row in status.splitlines():
            if row.startswith("RssAnon:"):
                found[name] = max(found.get(name, 0.0), int(row.split()[1]) * 1024 / MB)
    return found


class Sampler(threading.Thread):
    """memory.usage / memory.current every 0.25 s; keeps the highest and its stat split."""

    def __init__(self, directory: Path) -> None:
        super().__init__(daemon=True)
        self.directory = directory
        self.stop = threading.Event()
        self.max_usage = 0
        self.split: dict[str, int] = {}
        self.process_anon_max: dict[str, float] = {}

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                memory = CgroupMemory.read(self.directory)
            except (OSError, ValueError):
                break  # the cgroup went away (container restarted): the caller reports it
            if memory.current > self.max_usage:
                self.max_usage = memory.current
                keys = ("rss", "cache", "shmem", "mapped_file", "anon", "file", "shmem")
                self.split = {k: v for k, v in memory.stat.items() if k in keys}
            with contextlib.suppress(OSError, ValueError):
                for name, mb in process_anon(self.directory).items():
                    self.process_anon_max[name] = max(self.process_anon_max.get(name, 0.0), mb)
            self.stop.wait(0.25)


def run_series(stack: Stack, worker: str, series: Series, *, cold: bool) -> Series:
    directory = cgroup_memory_dir(worker)
    reset_peak(directory)
    sampler = Sampler(directory)
    sampler.start()
    t0 = time.monotonic()
    seeded = stack.seed(series.pairs, rate=series.rate, subtype=series.subtype, cold=cold)
    series.wav_bytes = sum((stack.recorder / s.file_raw).stat().st_size for s in seeded)
    stack.wait_all_uploaded([s.id for s in seeded], timeout_s=3600)
    series.drain_s = time.monotonic() - t0
    sampler.stop.set()
    sampler.join()
    memory = CgroupMemory.read(directory)
    series.peak, series.failcnt = memory.peak, memory.failcnt
    series.oom, series.oom_kill = memory.oom, memory.oom_kill
    series.sampled_max, series.split_at_max = sampler.max_usage, sampler.split
    series.process_anon_max = {k: round(v, 1) for k, v in sampler.process_anon_max.items()}
    time.sleep(5)
    series.at_rest_after = CgroupMemory.read(directory).current
    [data] = json.loads(podman("inspect", worker).stdout)
    series.restarts = int(data.get("RestartCount", 0))
    series.oom_killed_flag = bool(data["State"].get("OOMKilled"))
    return series


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n48", type=int, default=1000, help="48 kHz / 16-bit pairs")
    parser.add_argument("--n384", type=int, default=100, help="384 kHz / 24-bit pairs")
    parser.add_argument("--remote", choices=("webdav", "local"), default="webdav")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-build", action="store_true", help="use the images as they are")
    parser.add_argument(
        "--drop-caches",
        action="store_true",
        help="drop the host's whole page cache before the stack starts, and serve WebDAV "
        "with the host's rclone binary (a station after a reboot; affects the whole host)",
    )
    parser.add_argument(
        "--warm",
        action="store_true",
        help="leave the new WAVs in the host's page cache (default: drop them first, so the "
        "worker reads them from disk as on a station and its cgroup is charged for the pages)",
    )
    args = parser.parse_args()

    if not args.no_build:
        build_images()
    stack = Stack("silvasonic-benchmem")
    results: list[Series] = []
    try:
        if args.drop_caches:
            # as after a station's reboot: the stack's services read the image's files first,
            # and the worker is the first to map rclone (those pages are then charged to it)
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        stack.start()
        if args.remote == "webdav":
            # after a reboot the remote is elsewhere: the worker is the first to map rclone
            host_rclone = Path(find_rclone_binary()) if args.drop_caches else None
            stack.add_webdav_remote(SLUG, stack.start_webdav(host_rclone))
        else:
            stack.add_local_remote(SLUG)
        stack.wait_worker_ready(SLUG)
        worker = stack.worker(SLUG)
        [data] = json.loads(podman("inspect", worker).stdout)
        host = data["HostConfig"]
        memory = CgroupMemory.read(cgroup_memory_dir(worker))
        print(
            f"worker {worker}: memory {host['Memory'] / 2**20:.0f} MiB, CpuQuota "
            f"{host['CpuQuota']}, OomScoreAdj {host['OomScoreAdj']}, read-only "
            f"{host['ReadonlyRootfs']}, tmpfs {host.get('Tmpfs')}; cgroup v{memory.version}, "
            f"at rest {memory.current / MB:.1f} MB",
            flush=True,
        )
        at_rest = memory.current
        for series in (
            Series("48 kHz / 16-bit", args.n48, 48_000, "PCM_16"),
            Series("384 kHz / 24-bit", args.n384, 384_000, "PCM_24"),
        ):
            if series.pairs <= 0:
                continue
            print(f"draining {series.pairs} × 10 s {series.name} …", flush=True)
            results.append(run_series(stack, worker, series, cold=not args.warm))
            r = results[-1]
            print(
                f"  {r.name}: {r.pairs} pairs ({r.wav_bytes / MB:.0f} MB WAV) in {r.drain_s:.0f} s;"
                f" peak {r.peak / MB:.1f} MB (sampled max {r.sampled_max / MB:.1f} MB, split "
                f"{ {k: round(v / MB, 1) for k, v in r.split_at_max.items()} }); failcnt "
                f"{r.failcnt}; oom {r.oom}; oom_kill {r.oom_kill}; restarts {r.restarts}; "
                f"OOMKilled {r.oom_killed_flag}; at rest after {r.at_rest_after / MB:.1f} MB",
                flush=True,
            )
            print(f"  highest RssAnon per process, MB: {r.process_anon_max}", flush=True)
    except BaseException:
        print(stack.diagnose(), file=sys.stderr)
        raise
    finally:
        stack.close()

    target_ok = all(r.peak <= 200 * MB and r.oom_kill == 0 and r.failcnt == 0 for r in results)
    print(f"\ntarget (peak <= 200 MB, 0 OOM kills, 0 failcnt): {'met' if target_ok else 'NOT met'}")
    if args.json:
        payload: dict[str, Any] = {
            "at_rest": at_rest,
            "remote": args.remote,
            "series": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0 if target_ok else 1


if __name__ == "__main__":
    sys.exit(main())
