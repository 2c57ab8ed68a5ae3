"""Per-file cost of the two rclone transports: a process per file (cli) vs one rclone rcd.

Uploads N small files (default 50 × 100 KiB, random bytes like FLAC) with RcloneClient to a
local folder and to ``rclone serve webdav`` on 127.0.0.1, interleaving the variants round
robin, and prints the median ms per file over the runs. The WebDAV variants are shown with
rclone's pacer on (our default) and off (``pacer_min_sleep=0``, a remote's opt-out). The
daemon's start-up is measured separately and not counted per file.

    uv run python bench/rclone_transport.py [--files 50] [--runs 5] [--json PATH]

Numbers, not pass/fail (docs/design/0009-targets.md); loopback, so server CPU shares the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from uploader.ops.logs import configure_logging
from uploader.rclone.client import RcloneClient, find_rclone_binary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_webdav(root: Path, user: str, password: str) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
           "RCLONE_CONFIG": "/notfound", "RCLONE_USER": user, "RCLONE_PASS": password}  # fmt: skip
    proc = subprocess.Popen(
        [find_rclone_binary(), "serve", "webdav", str(root), "--addr", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError("rclone serve webdav did not start")


def _batch(client: RcloneClient, files: list[Path], prefix: str) -> float:
    """Upload every file to a fresh folder; seconds for the whole batch."""
    started = time.perf_counter()
    for f in files:
        result = client.upload_file(f, f"{prefix}/{f.name}", None)
        if not result.success:
            raise RuntimeError(f"upload failed: {result.error_message}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size-kib", type=int, default=100)
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    configure_logging("bench", level="ERROR")

    with tempfile.TemporaryDirectory(prefix="bench-rclone-") as tmp_name:
        tmp = Path(tmp_name)
        src = tmp / "src"
        src.mkdir()
        files = []
        for i in range(args.files):
            path = src / f"rec-{i:03d}.flac"
            path.write_bytes(os.urandom(args.size_kib * 1024))
            files.append(path)
        local_root = tmp / "local"
        dav_root = tmp / "dav"
        local_root.mkdir()
        dav_root.mkdir()
        user, password = "bench", secrets.token_urlsafe(16)
        server, port = _start_webdav(dav_root, user, password)
        dav = {"url": f"http://127.0.0.1:{port}", "user": user, "pass": password}
        try:
            variants: dict[str, tuple[RcloneClient, Callable[[int], str]]] = {}
            for transport in ("cli", "rcd"):
                variants[f"local {transport}"] = (
                    RcloneClient(f"bl-{transport}", "local", {}, str(local_root),
                                 transport=transport),
                    lambda run: f"{local_root}/run{run}",
                )  # fmt: skip
                variants[f"webdav {transport}"] = (
                    RcloneClient(f"bw-{transport}", "webdav", dav, None, transport=transport),
                    lambda run: f"silvasonic/pacer-on/run{run}",
                )
                variants[f"webdav {transport} pacer_min_sleep=0"] = (
                    RcloneClient(f"bwp-{transport}", "webdav", {**dav, "pacer_min_sleep": "0"},
                                 None, transport=transport),
                    lambda run: f"silvasonic/pacer-off/run{run}",
                )  # fmt: skip
            starts_ms: list[float] = []
            for client, _ in variants.values():
                if client.transport == "rcd":
                    t0 = time.perf_counter()
                    client.start()
                    starts_ms.append((time.perf_counter() - t0) * 1000)
            # warm-up: first folder creation, page cache
            for name, (client, prefix) in variants.items():
                _batch(client, files[:2], prefix(-1) + name.replace(" ", "_"))
            per_file: dict[str, list[float]] = {name: [] for name in variants}
            rss_mb: dict[str, float] = {}
            for run in range(args.runs):
                for name, (client, prefix) in variants.items():
                    seconds = _batch(client, files, prefix(run) + name.replace(" ", "_"))
                    per_file[name].append(seconds * 1000 / len(files))
            for name, (client, _) in variants.items():
                pid = client.daemon.pid if client.daemon else None
                if pid is not None:
                    status = Path(f"/proc/{pid}/status").read_text()
                    kib = next(
                        int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS")
                    )
                    rss_mb[name] = round(kib / 1024, 1)
                client.close()
        finally:
            server.kill()
            server.wait()

    results: dict[str, Any] = {
        "files": args.files,
        "size_kib": args.size_kib,
        "runs": args.runs,
        "rcd_start_ms_median": round(statistics.median(starts_ms), 1),
        "per_file_ms_median": {k: round(statistics.median(v), 2) for k, v in per_file.items()},
        "per_file_ms_runs": {k: [round(x, 2) for x in v] for k, v in per_file.items()},
        "rcd_rss_mb_after": rss_mb,
    }
    width = max(len(k) for k in per_file)
    print(f"{args.files} files x {args.size_kib} KiB, median of {args.runs} runs (ms per file)")
    for name, value in results["per_file_ms_median"].items():
        print(f"  {name:<{width}}  {value:8.2f}")
    print(f"  rcd start-up (once per worker): {results['rcd_start_ms_median']} ms")
    print(f"  rcd RSS after the runs (MB): {rss_mb}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
