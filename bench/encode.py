"""Per-file cost of the two FLAC engines on 10 s field-like segments (for issue 7).

    uv run python bench/encode.py [--runs 15] [--seconds 10] [--json out.json]

For each file (48 kHz and 384 kHz, 16-bit mono) and each variant, in round-robin order so
machine noise hits all alike: median and p90 wall time, and CPU time (user+sys of this process
plus its children, so ffmpeg's own CPU counts). Variants:

- ``libflac``: ``encode_wav_to_flac(engine="libflac")``, verification included;
- ``ffmpeg``: ``encode_wav_to_flac(engine="ffmpeg")``, verification included;
- ``ffmpeg-bare``: the seed's plain ``ffmpeg … out.flac`` subprocess, nothing else;
- ``verify``: ``verify_lossless`` alone (the share of the check in the two above).

Numbers, not pass/fail: read the ratios (the figures and what they decided:
docs/design/0006-transports.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import structlog

from uploader.audio.flac_encoder import encode_wav_to_flac, resolve_ffmpeg, verify_lossless


def field_audio(seconds: float, rate: int, seed: int = 1) -> np.ndarray:
    """Noise floor near -50 dBFS (pink-ish + white), FM bird chirps, a steady tone, and at
    384 kHz bat-like sweeps: roughly the content of a station's recordings."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    white = rng.normal(0, 1, n)
    pinkish = np.cumsum(white) * 0.02
    pinkish -= np.convolve(pinkish, np.ones(512) / 512, mode="same")  # keep it centred
    x = 10 ** (-50 / 20) * pinkish / (np.std(pinkish) + 1e-12) + 10 ** (-62 / 20) * white
    x += 10 ** (-40 / 20) * np.sin(2 * np.pi * 1200 * t)
    for start in np.arange(0.3, seconds, 1.7):
        m = (t >= start) & (t < start + 0.25)
        tt = t[m] - start
        f = 4000 + 2500 * np.sin(2 * np.pi * 12 * tt)
        x[m] += 10 ** (-20 / 20) * np.sin(2 * np.pi * np.cumsum(f) / rate)
    if rate >= 192_000:
        for start in np.arange(0.5, seconds, 0.9):
            for k in range(8):
                s0 = start + k * 0.07
                m = (t >= s0) & (t < s0 + 0.005)
                tt = t[m] - s0
                f = 90_000 - 60_000 * tt / 0.005
                x[m] += 10 ** (-25 / 20) * np.sin(2 * np.pi * np.cumsum(f) / rate)
    return np.clip(x, -1, 1)


def cpu_s() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", type=Path, help="also write the raw samples here")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    work = Path(tempfile.mkdtemp(prefix="bench-encode-"))
    ffmpeg = resolve_ffmpeg()
    files = {}
    for rate in (48_000, 384_000):
        path = work / f"s{rate // 1000}k16_{args.seconds:g}s.wav"
        sf.write(str(path), field_audio(args.seconds, rate), rate, subtype="PCM_16")
        files[path.stem] = path

    def bare(wav: Path, out: Path) -> None:
        subprocess.run(
            [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(wav),
             "-c:a", "flac", "-compression_level", "5", str(out / f"{wav.stem}.flac")],
            check=True,
        )  # fmt: skip

    variants: dict[str, Callable[[Path, Path], object]] = {
        "libflac": lambda wav, out: encode_wav_to_flac(wav, out, engine="libflac"),
        "ffmpeg": lambda wav, out: encode_wav_to_flac(wav, out, engine="ffmpeg"),
        "ffmpeg-bare": bare,
        "verify": lambda wav, out: verify_lossless(wav, out / f"{wav.stem}.flac"),
    }
    samples: dict[str, dict[str, dict[str, list[float]]]] = {
        f: {v: {"wall_ms": [], "cpu_ms": []} for v in variants} for f in files
    }
    sizes: dict[str, dict[str, int]] = {}
    for name, wav in files.items():  # warm-up, and the FLAC that "verify" reads
        out = work / "out"
        for fn in variants.values():
            fn(wav, out)
        sizes[name] = {"wav": wav.stat().st_size, "flac": (out / f"{wav.stem}.flac").stat().st_size}
    for _ in range(args.runs):
        for name, wav in files.items():
            for variant, fn in variants.items():
                out = work / "out"
                c0, w0 = cpu_s(), time.perf_counter()
                fn(wav, out)
                w1, c1 = time.perf_counter(), cpu_s()
                samples[name][variant]["wall_ms"].append((w1 - w0) * 1000)
                samples[name][variant]["cpu_ms"].append((c1 - c0) * 1000)

    py = sys.version.split()[0]
    print(f"ffmpeg: {ffmpeg}; {args.runs} runs; {os.cpu_count()} CPUs; python {py}")
    print(f"{'file':<16} {'variant':<12} {'wall ms':>9} {'p90':>8} {'CPU ms':>8} {'× libflac':>10}")
    for name in files:
        base = statistics.median(samples[name]["libflac"]["wall_ms"])
        for variant in variants:
            wall = sorted(samples[name][variant]["wall_ms"])
            cpu = statistics.median(samples[name][variant]["cpu_ms"])
            med = statistics.median(wall)
            p90 = wall[min(len(wall) - 1, int(0.9 * len(wall)))]
            print(f"{name:<16} {variant:<12} {med:9.1f} {p90:8.1f} {cpu:8.1f} {med / base:10.1f}")
        s = sizes[name]
        print(f"{name:<16} FLAC/WAV {s['flac'] / s['wav']:.3f} ({s['wav']:,} bytes of WAV)")
    if args.json:
        args.json.write_text(json.dumps({"samples": samples, "sizes": sizes}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
