"""Benchmark ``kernelscale verify`` on a small diffusion pipeline's converted UNet.

The pipeline is tests/pipelines.py's tiny Stable Diffusion (UNet2DConditionModel with 32 and 64
channels, built from its config, random weights); it is saved with ``save_pretrained`` and
converted with ``kernelscale convert ORIG OUT --scale 2`` (the pipeline defaults: the UNet only,
20 conv layers resized, downsamplers aligned, 4 attention temperatures, which verify skips). Then
``python -m kernelscale.cli verify ORIG OUT --json`` runs ``--repeat`` times as a subprocess, start-up
included; the wall times are printed with the machine's load average (the measures are CPU-bound,
and other processes on the machine slow them).

``--kernelscale-path DIR`` runs verify from another copy of the package (e.g. an earlier commit,
``git archive COMMIT kernelscale | tar -x -C DIR``), to compare before and after on the same
converted files and machine::

    python benchmarks/bench_verify.py --workdir /tmp/kernelscale-verify --repeat 3
    python benchmarks/bench_verify.py --workdir /tmp/kernelscale-verify --repeat 1 --kernelscale-path /tmp/old
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(workdir: Path) -> tuple[Path, Path]:
    """The tiny SD pipeline saved under ``workdir/sd`` and converted to ``workdir/sd_x2``."""
    sys.path.insert(0, str(ROOT / "tests"))
    import pipelines

    original, converted = workdir / "sd", workdir / "sd_x2"
    if not original.exists():
        pipelines.sd_pipeline(workdir).save_pretrained(original)
    if not converted.exists():
        subprocess.run([sys.executable, "-m", "kernelscale.cli", "convert", str(original), str(converted), "--scale", "2"],
                       check=True, cwd=ROOT)
    return original, converted


def time_verify(original: Path, converted: Path, package: Path) -> tuple[float, dict]:
    env = {**os.environ, "PYTHONPATH": str(package)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "kernelscale.cli", "verify", str(original), str(converted), "--json"],
                          check=True, capture_output=True, text=True, env=env, cwd=package)
    return time.perf_counter() - started, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--kernelscale-path", type=Path, default=ROOT, help="the folder holding the kernelscale package to run")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    original, converted = build(args.workdir)
    times, report = [], {}
    for _ in range(args.repeat):
        seconds, report = time_verify(original, converted, args.kernelscale_path.resolve())
        times.append(seconds)
    layers = len(report["layers"])
    worst = max(layer["structure_error"] for layer in report["layers"])
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"package: {args.kernelscale_path}")
    print(f"verify: {layers} layers, worst structure error {worst:.6e}; wall s: "
          f"{', '.join(f'{t:.1f}' for t in times)} (median {statistics.median(times):.1f})")


if __name__ == "__main__":
    main()
