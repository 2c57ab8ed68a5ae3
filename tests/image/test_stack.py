"""The station stack as shipped, for real: opt-in (``pytest -m image``), root and Podman needed.

``compose.yml`` brought up with podman-compose (tests/image/stack.py says how, and what differs
from a station: the PostgreSQL and Redis images are stand-ins built from Debian's packages).
The controller starts one worker container per remote from the built image; recordings are
written and indexed the way the Recorder and the Indexer do it; every one must arrive on a
WebDAV server and in a local folder, decode to exactly its WAV's samples, and be flagged
``uploaded``. The ``cli`` service's ``status`` answers, Flower answers with its credentials
and refuses without, and no worker is OOM-killed inside its 256m limit.

Skips with the reason when Podman, root or debootstrap is missing, unless
``SILVASONIC_REQUIRE_IMAGE=1``. On a cgroup v1 host without systemd:
``CONTAINERS_CONF=tests/image/containers.conf``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.fixtures.residency import resident_bytes
from tests.image.stack import (
    CgroupMemory,
    Seeded,
    Stack,
    build_images,
    cgroup_memory_dir,
    podman,
    podman_compose,
)

pytestmark = [pytest.mark.image, pytest.mark.timeout(900)]

RECORDINGS = 12
DAV, USB = "imgtest-dav", "imgtest-usb"


def _unusable(reason: str) -> None:
    if os.environ.get("SILVASONIC_REQUIRE_IMAGE") == "1":
        pytest.fail(f"cannot run the stack here: {reason} (SILVASONIC_REQUIRE_IMAGE=1)")
    pytest.skip(f"cannot run the stack here: {reason}")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    if shutil.which("podman") is None:
        _unusable("podman is not installed")
    try:
        podman_compose()
    except FileNotFoundError as exc:
        _unusable(str(exc))
    base = os.environ.get("SILVASONIC_IMAGE_BASE")
    if base is None and (os.geteuid() != 0 or shutil.which("debootstrap") is None):
        _unusable("the local base needs root and debootstrap (or set SILVASONIC_IMAGE_BASE)")
    if os.geteuid() != 0:
        _unusable("the stack test writes folders for uid 10001 and needs root")
    build_images(base)
    stack = Stack()
    try:
        stack.start()
        url = stack.start_webdav()
        stack.add_webdav_remote(DAV, url)
        stack.add_local_remote(USB)
        for slug in (DAV, USB):
            stack.wait_worker_ready(slug)
    except BaseException:
        print(stack.diagnose())
        stack.close()
        raise
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
def drained(stack: Stack) -> list[Seeded]:
    # cold: as recordings the Recorder finished a while ago, read by the workers from disk
    seeded = stack.seed(RECORDINGS, cold=True)
    stack.wait_all_uploaded([s.id for s in seeded], timeout_s=300)
    return seeded


def _flac_on(stack: Stack, remote_path: str) -> Path:
    path = Path(remote_path)
    return path if path.is_absolute() else stack.webdav_root / path


def test_the_controller_starts_one_worker_per_remote_with_the_specs_limits(stack: Stack) -> None:
    print(stack.compose("ps").stdout)  # the stack up, and the workers (pytest -rP)
    print(podman("ps", "--filter", "name=silvasonic-uploader-", "--format",
                 "{{.Names}}  {{.Image}}  {{.Command}}  {{.Status}}").stdout)  # fmt: skip
    for slug in (DAV, USB):
        [data] = json.loads(podman("inspect", stack.worker(slug)).stdout)
        host = data["HostConfig"]
        assert data["State"]["Running"]
        assert data["ImageName"] == "localhost/silvasonic_uploader:latest"
        assert host["Memory"] == 256 * 1024 * 1024
        assert host["CpuQuota"] == 50_000  # 0.5 CPU of the default 100 ms period
        assert host["OomScoreAdj"] == 250
        assert host["ReadonlyRootfs"] is True
        assert data["Config"]["User"] == "10001:10001"
        workspace = next(m for m in data["Mounts"] if m["Destination"] == "/workspace/recorder")
        assert workspace["Source"] == str(stack.recorder)
        assert workspace["RW"] is False


def test_no_recording_stays_in_the_page_cache_once_both_workers_are_done(
    stack: Stack, drained: list[Seeded]
) -> None:
    """The workers read each WAV from disk; pages left cached would be charged to their 256m
    cgroups (bench/README.md, "the worker inside 200 MB"). Runs before any test reads a WAV."""
    wavs = [stack.recorder / rec.file_raw for rec in drained]
    assert {wav.name: resident_bytes(wav) for wav in wavs} == {wav.name: 0 for wav in wavs}


def test_every_recording_arrives_on_both_remotes_sample_exact_and_is_flagged(
    stack: Stack, drained: list[Seeded]
) -> None:
    ids = [s.id for s in drained]
    assert stack.flagged(ids) == len(ids)
    for slug in (DAV, USB):
        uploaded = stack.uploaded(slug)
        for rec in drained:
            flac = _flac_on(stack, uploaded[rec.id])
            wav, wav_rate = sf.read(str(stack.recorder / rec.file_raw), dtype="int32")
            decoded, flac_rate = sf.read(str(flac), dtype="int32")
            assert flac.suffix == ".flac"
            assert flac_rate == wav_rate
            assert np.array_equal(wav, decoded), f"{slug}: {flac} differs from {rec.file_raw}"
    first = drained[0]
    print(f"{first.file_raw} (recording {first.id}) is on both remotes:")
    for slug in (DAV, USB):
        flac = _flac_on(stack, stack.uploaded(slug)[first.id])
        print(f"  {slug}: {flac} ({flac.stat().st_size} bytes, sample-exact)")


def test_the_webdav_remote_serves_the_flacs_behind_its_password(
    stack: Stack, drained: list[Seeded]
) -> None:
    rec = drained[0]
    path = stack.uploaded(DAV)[rec.id]
    url = f"http://127.0.0.1:{stack.webdav_port}/{path}"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 401
    token = base64.b64encode(f"station:{stack.webdav_password}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    assert body == _flac_on(stack, path).read_bytes()


def test_the_cli_services_status_answers(stack: Stack, drained: list[Seeded]) -> None:
    result = stack.compose("run", "--rm", "cli", "status")
    assert "silvasonic-uploader status at" in result.stdout, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    for slug in (DAV, USB):
        assert rows[slug][1] == "ok", result.stdout
    print(result.stdout)  # the evidence a closing note quotes (pytest -rP)


def test_flower_answers_with_its_credentials_and_refuses_without(stack: Stack) -> None:
    url = f"http://127.0.0.1:{stack.flower_port}/api/workers"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 401
    credentials = (stack.secrets_dir / "flower_basic_auth").read_text().strip()
    token = base64.b64encode(credentials.encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        json.loads(response.read())
    assert stack.healthy("flower")  # compose.yml's own healthcheck (curl /healthcheck)


def test_no_worker_was_oom_killed_inside_its_limit(stack: Stack, drained: list[Seeded]) -> None:
    for slug in (DAV, USB):
        memory = CgroupMemory.read(cgroup_memory_dir(stack.worker(slug)))
        assert memory.limit == 256 * 1024 * 1024
        assert memory.oom_kill == 0, memory
        [data] = json.loads(podman("inspect", stack.worker(slug)).stdout)
        assert data["State"]["OOMKilled"] is False
        assert data["RestartCount"] == 0
