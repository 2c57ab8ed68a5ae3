"""Which binary wheels the image installs, per architecture, from uv.lock and PyPI.

    uv run python tests/image/wheels.py            # markdown table (docs/station-install.md)
    uv run python tests/image/wheels.py --offline  # uv.lock only, no PyPI look-ups

The image runs ``uv sync --frozen --no-default-groups`` on CPython 3.13 with the base image's
glibc: 2.36 on the production base (python:3.13-slim-bookworm), on x86_64 and on the station's
aarch64. A dependency without a compatible binary wheel there is built from its sdist (no
compiler in the image: the build fails) or, where the project also ships a pure ``none-any``
wheel (soundfile, sqlalchemy, charset-normalizer), that one is installed silently: soundfile's
``any`` wheel bundles no libsndfile, so ``import soundfile`` would then fail at run time.

For every locked package of the image's dependency closure (``uv export``, markers evaluated
for CPython 3.13 on Linux) that has a platform-specific wheel, the table shows the best wheel
for cp313 on aarch64 and on x86_64 with the oldest glibc it installs on, and whether PyPI's
JSON API (https://pypi.org/pypi/<name>/<version>/json) still lists every wheel uv.lock pins:
one request per binary package, none for the pure-Python ones. uv itself, which the
Containerfile installs with pip at a pinned version, is looked up on PyPI too. Exit status 1 when an
architecture lacks a wheel for bookworm's glibc.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "Containerfile"
PYTHON = (3, 13)
BOOKWORM_GLIBC = (2, 36)  # the production base; the station's Raspberry Pi OS is bookworm too
ARCHES = ("aarch64", "x86_64")
LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


def environment(arch: str) -> dict[str, str]:
    version = ".".join(map(str, PYTHON))
    return {
        "python_version": version,
        "python_full_version": f"{version}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": arch,
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }


def locked_closure() -> list[tuple[str, str]]:
    """(name, version) the image installs: ``uv export`` of the non-default groups' closure."""
    command = [
        "uv",
        "export",
        "--frozen",
        "--no-default-groups",
        "--no-hashes",
        "--no-emit-project",
    ]
    out = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    pins = []
    for line in out.splitlines():
        if not line or line.startswith((" ", "#")):
            continue
        requirement, _, marker = line.partition(" ; ")
        if marker and not any(Marker(marker).evaluate(environment(arch)) for arch in ARCHES):
            continue
        name, _, version = requirement.partition("==")
        pins.append((name, version))
    return pins


def lock_files() -> dict[tuple[str, str], list[str]]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return {
        (p["name"], p["version"]): [w["url"].rsplit("/", 1)[1] for w in p.get("wheels", [])]
        for p in lock["package"]
        if "version" in p
    }


@dataclass(frozen=True)
class Wheel:
    filename: str
    python: set[str]
    abi: set[str]
    platforms: set[str]

    @classmethod
    def parse(cls, filename: str) -> Wheel:
        python, abi, platform = filename[: -len(".whl")].split("-")[-3:]
        return cls(filename, set(python.split(".")), set(abi.split(".")), set(platform.split(".")))

    @property
    def pure(self) -> bool:
        return self.platforms == {"any"}

    def runs_on_cp313(self) -> bool:
        cp = f"cp{PYTHON[0]}{PYTHON[1]}"
        if "none" in self.abi:
            return bool(self.python & {"py3", cp})
        if "abi3" in self.abi:
            return any(_cp_version(tag) <= PYTHON for tag in self.python if tag.startswith("cp"))
        return cp in self.abi  # not cp313t (free-threaded)

    def glibc(self, arch: str) -> tuple[int, int] | None:
        """Oldest glibc this wheel installs on for arch, None if it is not a manylinux wheel."""
        levels = []
        for tag in self.platforms:
            match = re.fullmatch(rf"manylinux_(\d+)_(\d+)_{arch}", tag)
            if match:
                levels.append((int(match.group(1)), int(match.group(2))))
            legacy, _, tag_arch = tag.partition("_")
            if tag_arch == arch and legacy in LEGACY_MANYLINUX:
                levels.append(LEGACY_MANYLINUX[legacy])
        return min(levels) if levels else None


def _cp_version(tag: str) -> tuple[int, int]:
    return int(tag[2]), int(tag[3:])


def best(wheels: list[Wheel], arch: str) -> Wheel | None:
    """The lowest-glibc manylinux wheel for cp313 on arch (what pip or uv may pick there)."""
    usable = [w for w in wheels if w.runs_on_cp313() and w.glibc(arch) is not None]
    return min(usable, key=lambda w: w.glibc(arch) or (0, 0), default=None)


def pypi_files(name: str, version: str) -> list[str]:
    """The version's wheels on PyPI: its JSON API, per version, else the project's releases
    (some PyPI mirrors and proxies answer only /pypi/<name>/json)."""
    base = f"https://pypi.org/pypi/{name}"
    try:
        with urllib.request.urlopen(f"{base}/{version}/json", timeout=30) as response:
            files = json.load(response)["urls"]
    except urllib.error.HTTPError as error:
        if error.code != 404:
            raise
        with urllib.request.urlopen(f"{base}/json", timeout=30) as response:
            files = json.load(response)["releases"].get(version, [])
    return [f["filename"] for f in files if f["filename"].endswith(".whl")]


def cell(wheel: Wheel | None, arch: str) -> str:
    if wheel is None:
        return "**none**"
    glibc = wheel.glibc(arch) or (0, 0)
    ok = "" if glibc <= BOOKWORM_GLIBC else " **too new for bookworm**"
    tags = f"{'.'.join(sorted(wheel.python))}-{'.'.join(sorted(wheel.abi))}"
    return f"`{tags}` glibc {glibc[0]}.{glibc[1]}{ok}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offline", action="store_true", help="uv.lock only, no PyPI")
    args = parser.parse_args()

    files = lock_files()
    rows, pure, problems = [], [], 0
    packages = [(name, version, files[(name, version)]) for name, version in locked_closure()]
    if not args.offline:  # uv itself: pip-installed by the Containerfile, not in uv.lock
        uv_pin = re.search(r"pip install [^\n]*\buv==([\w.]+)", CONTAINERFILE.read_text())
        if uv_pin:
            packages.append(("uv", uv_pin.group(1), pypi_files("uv", uv_pin.group(1))))
    for name, version, filenames in packages:
        wheels = [Wheel.parse(f) for f in filenames]
        if wheels and all(w.pure for w in wheels):
            pure.append(name)
            continue
        picks = {arch: best(wheels, arch) for arch in ARCHES}
        if not wheels:
            fallback = "sdist only"
        elif any(w.pure for w in wheels):
            fallback = "its `none-any` wheel"
        else:
            fallback = "its sdist"
        pypi = "not checked"
        if name == "uv":
            name, pypi = "uv (Containerfile's `pip install`)", "yes"
        elif not args.offline:
            # uv.lock leaves out wheels for Pythons below requires-python: PyPI lists more
            missing = set(filenames) - set(pypi_files(name, version))
            pypi = "yes" if not missing else f"**{len(missing)} locked wheel(s) missing**"
        for arch, wheel in picks.items():
            glibc = wheel.glibc(arch) if wheel else None
            problems += glibc is None or glibc > BOOKWORM_GLIBC
        rows.append(
            f"| {name} | {version} | {cell(picks['aarch64'], 'aarch64')} "
            f"| {cell(picks['x86_64'], 'x86_64')} | {fallback} | {pypi} |"
        )

    print(
        "| package | locked | aarch64 wheel for cp313 | x86_64 wheel for cp313 | else | on PyPI |"
    )
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nPure Python (any platform): {', '.join(sorted(pure))}.")
    if problems:
        print(f"\n{problems} package/architecture pair(s) without a wheel for bookworm's glibc.")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
