"""Benchmark ``kernelscale convert --scale 2`` on a synthetic SD 1.5 UNet (fp16, 1.72 GB → 6.53 GB).

Four routes, each a subprocess timed by ``/usr/bin/time -v`` (wall clock, user + system time,
"Maximum resident set size"; without that binary, ``os.wait4``'s rusage of the child, the same
kernel counters):

- ``kernelscale``: the whole CLI, start-up included: ``python -m kernelscale.cli convert IN OUT --scale 2``.
- ``O_DIRECT floor``: the output's size written with O_DIRECT from 16 MiB aligned buffers, two writes
  in flight, then fsync (as kernelscale's sink writes): the disk's floor, run right after each kernelscale
  run (pairs).
- ``copy``: ``shutil.copyfile`` of a file as large as the output (the output itself, read into
  the page cache first, so the copy is pure writing) then ``fsync``, as convert fsyncs: the speed
  of the disk. The same copy without fsync is printed for reference.
- ``naive``: ``safetensors.torch.load_file`` → per conv kernel ``F.interpolate`` to the same size
  as kernelscale's (bilinear, ×1/s²) → ``save_file`` → fsync.

Before every kernelscale run and every floor run, the previous output is deleted outside the timed
region and the disk left to settle (:func:`settle`: a filesystem mounted with ``discard`` trims a
deleted file's blocks afterwards). Before kernelscale and naive, the input's pages are dropped from the page cache with
``posix_fadvise(DONTNEED)`` and the fraction still cached is measured with ``mincore``.
Targets: kernelscale ≤ 1.5× the O_DIRECT floor (aim 1.2) and ≤ 1.5× the copy's wall time, ≥ 3× faster and ≥ 5× lower peak RSS than
naive, peak RSS ≤ 3 × the largest output tensor + 300 MB. Results are printed as a table;
``--write-docs docs/benchmarks.md`` replaces this benchmark's section there::

    python benchmarks/bench_convert.py --workdir /tmp/kernelscale-bench --write-docs docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import mmap
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECTION = "## convert (SD 1.5 UNet, fp16, --scale 2)"

NAIVE = r"""
import os, sys, torch, torch.nn.functional as F
from safetensors.torch import load_file, save_file
src, dst, s = sys.argv[1], sys.argv[2], float(sys.argv[3])
sd = load_file(src)
out = {}
for name, w in sd.items():
    if name.endswith("weight") and w.ndim == 4 and max(w.shape[2:]) > 1:
        size = tuple(int(round((k + 1) * s - 1)) for k in w.shape[2:])  # kernelscale's size: 3 -> 7 at s=2
        out[name] = (F.interpolate(w.float(), size=size, mode="bilinear", align_corners=False) / s ** 2).to(w.dtype)
    else:
        out[name] = w
save_file(out, dst, metadata={"format": "pt"})
fd = os.open(dst, os.O_RDONLY); os.fsync(fd); os.close(fd)
"""

FLOOR = r"""
import mmap, os, sys, threading
from concurrent.futures import ThreadPoolExecutor
dst, size = sys.argv[1], int(sys.argv[2])
BLOCK = 16 << 20  # kernelscale's DirectFileSink: 16 MiB aligned blocks, two in flight, then fsync
fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_DIRECT", 0), 0o644)
buffers = [mmap.mmap(-1, BLOCK) for _ in range(2)]
for b in buffers:
    b.write(bytes(range(256)) * (BLOCK // 256))
full = size // BLOCK * BLOCK
with ThreadPoolExecutor(2) as pool:
    pending = []
    for i, offset in enumerate(range(0, full, BLOCK)):
        if len(pending) == 2:
            pending.pop(0).result()
        pending.append(pool.submit(os.pwrite, fd, buffers[i % 2], offset))
    for f in pending:
        f.result()
os.close(fd)
if size > full:  # the unaligned tail, buffered (as the sink does)
    with open(dst, "r+b") as fh:
        fh.seek(full); fh.write(bytes(size - full))
fd = os.open(dst, os.O_RDONLY); os.fsync(fd); os.close(fd)
"""

COPY = r"""
import os, shutil, sys
shutil.copyfile(sys.argv[1], sys.argv[2])
if sys.argv[3] == "fsync":
    fd = os.open(sys.argv[2], os.O_RDONLY); os.fsync(fd); os.close(fd)
"""


@dataclass
class Run:
    route: str
    wall: float
    cpu: float
    rss_mb: float
    bytes_out: int
    input_cached: float
    inner: float = float("nan")  # kernelscale's own timer (its --json "seconds"): the run without start-up


SETTLE_SECONDS = 3.0


def settle(path: Path) -> None:
    """Remove ``path`` (a previous run's output) outside the timed region, sync, and let the disk
    settle: on a filesystem mounted with ``discard`` the blocks of a deleted 6.5 GB file are
    trimmed after the unlink, and a run started meanwhile shares the disk with the trim (a run
    with the input cached came out 1.2 s slower than one reading it from disk)."""
    path.unlink(missing_ok=True)
    os.sync()
    time.sleep(SETTLE_SECONDS)


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_fraction(path: Path) -> float:
    """Fraction of ``path``'s pages in the page cache (mincore on a private mapping)."""
    size = path.stat().st_size
    if size == 0:
        return 1.0
    libc = ctypes.CDLL(None, use_errno=True)
    page = mmap.PAGESIZE
    pages = (size + page - 1) // page
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY)
        anchor = ctypes.c_char.from_buffer(mm)
        try:
            vec = (ctypes.c_ubyte * pages)()
            failed = libc.mincore(ctypes.c_void_p(ctypes.addressof(anchor)), ctypes.c_size_t(size), vec) != 0
            resident = sum(v & 1 for v in vec)
        finally:
            del anchor
            mm.close()
    return float("nan") if failed else resident / pages


def warm(path: Path) -> None:
    with open(path, "rb") as fh:
        while fh.read(64 << 20):
            pass


def timed(route: str, cmd: list[str], bytes_out_path: Path, input_path: Path | None) -> Run:
    cached = cached_fraction(input_path) if input_path is not None else float("nan")
    if shutil.which("time") and os.path.exists("/usr/bin/time"):
        started = time.perf_counter()
        result = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"{route} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        inner = _inner_seconds(result.stdout)
        rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
        user = float(re.search(r"User time \(seconds\): ([\d.]+)", result.stderr).group(1))
        system = float(re.search(r"System time \(seconds\): ([\d.]+)", result.stderr).group(1))
    else:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        out, err = proc.stdout.read(), proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        if status != 0:
            raise SystemExit(f"{route} failed ({status}): {err.decode()[-3000:]}")
        inner = _inner_seconds(out.decode())
        rss_kb, user, system = usage.ru_maxrss, usage.ru_utime, usage.ru_stime
    return Run(route, wall, user + system, rss_kb / 1024, bytes_out_path.stat().st_size, cached, inner)


def _inner_seconds(stdout: str) -> float:
    try:
        return float(json.loads(stdout)["seconds"])
    except (ValueError, KeyError, TypeError):
        return float("nan")


def rss_method() -> str:
    return "/usr/bin/time -v (Maximum resident set size)" if os.path.exists("/usr/bin/time") else "os.wait4 rusage ru_maxrss"


def machine() -> dict[str, str]:
    meminfo = Path("/proc/meminfo").read_text()
    ram = int(re.search(r"MemTotal:\s+(\d+) kB", meminfo).group(1)) / 1024 ** 2
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    return {"nproc": str(len(os.sched_getaffinity(0))), "cpu": cpu, "ram": f"{ram:.1f} GiB", "kernel": platform.release(),
            "python": platform.python_version()}


def disk(path: Path) -> str:
    try:
        df = subprocess.run(["df", "-hT", str(path)], capture_output=True, text=True).stdout.splitlines()[-1].split()
        device, fstype, size = df[0], df[1], df[2]
        name = os.path.basename(os.path.realpath(device))
        rotational = Path(f"/sys/block/{name}/queue/rotational").read_text().strip() if Path(f"/sys/block/{name}").exists() else "?"
        return f"{device} ({fstype}, {size}, rotational={rotational})"
    except (OSError, IndexError):
        return "?"


def largest_output_tensor(input_path: Path, scale: float) -> int:
    from kernelscale import ResizeOptions
    from kernelscale.checkpoint_plan import plan_checkpoint
    from kernelscale.io.safetensors_io import DTYPE_ITEMSIZE

    plan = plan_checkpoint(input_path, ResizeOptions(scale=scale))
    return max(math.prod(e.new_shape) * DTYPE_ITEMSIZE[d] for fp in plan.files for e, d in zip(fp.entries, fp.out_dtypes))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/kernelscale-bench", help="scratch folder (needs ~15 GB; default /tmp/kernelscale-bench)")
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3, help="runs of kernelscale and copy; the median is reported (default 3)")
    parser.add_argument("--skip-naive", action="store_true", help="skip the naive route (it needs ~15 GB of RAM)")
    parser.add_argument("--devices", default="auto", metavar="LIST",
                        help="comma-separated --device values to time kernelscale with, e.g. cpu,cuda: the GPU path "
                             "must not be slower than the CPU one end to end (default: auto)")
    parser.add_argument("--write-docs", metavar="MD", help="replace this benchmark's section of a markdown file")
    parser.add_argument("--section", default=SECTION, help=f"the section heading --write-docs replaces (default: {SECTION!r})")
    args = parser.parse_args(argv)
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if not devices or any(d not in ("auto", "cpu", "cuda") for d in devices):
        parser.error(f"--devices {args.devices!r}: expected a comma-separated list of auto, cpu, cuda")

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    src = work / "sd15_unet_fp16.safetensors"
    if not src.exists():
        subprocess.run([sys.executable, str(HERE / "make_sd15_checkpoint.py"), str(src)], check=True, cwd=ROOT)
    out, copy, naive = work / "sd15_unet_x2.safetensors", work / "copy.safetensors", work / "naive.safetensors"
    floor = work / "floor.bin"
    convert_cmd = [sys.executable, "-m", "kernelscale.cli", "convert", str(src), str(out), "--scale", f"{args.scale:g}", "--force", "--json"]
    # One route per device; with the single default device the routes keep their plain names.
    routes = {("kernelscale" if devices == ["auto"] else f"kernelscale --device {d}"): d for d in devices}

    runs: dict[str, list[Run]] = {**{r: [] for route in routes for r in (route, f"{route}, input cached")},
                                  "O_DIRECT floor": [], "copy": [], "copy, no fsync": [], "read input (cold)": [],
                                  "start-up (kernelscale --version)": [], "naive": []}
    for i in range(args.repeat):
        runs["start-up (kernelscale --version)"].append(
            timed("start-up", [sys.executable, "-m", "kernelscale.cli", "--version"], src, None))
        runs["start-up (kernelscale --version)"][-1].bytes_out = 0
        drop_cache(src)
        runs["read input (cold)"].append(timed("read input (cold)", ["dd", f"if={src}", "of=/dev/null", "bs=16M"], src, src))
        for route, device in routes.items():
            cmd = [*convert_cmd, "--device", device]
            for name in (route, f"{route}, input cached"):
                settle(out)
                if name == route:
                    drop_cache(src)
                else:
                    warm(src)
                runs[name].append(timed(name, cmd, out, src))
                print(f"{name} run {i + 1}: {runs[name][-1]}", file=sys.stderr)
                if name == route and device == devices[0]:  # the floor right after it: one pair
                    settle(floor)
                    runs["O_DIRECT floor"].append(
                        timed("O_DIRECT floor", [sys.executable, "-c", FLOOR, str(floor), str(out.stat().st_size)], floor, None))
                    print(f"O_DIRECT floor run {i + 1}: {runs['O_DIRECT floor'][-1]}", file=sys.stderr)
                    floor.unlink()
                    os.sync()
        warm(out)  # the copy's source fully cached: the copy is pure writing
        for route, sync in (("copy", "fsync"), ("copy, no fsync", "none")):
            copy.unlink(missing_ok=True)
            os.sync()
            runs[route].append(timed(route, [sys.executable, "-c", COPY, str(out), str(copy), sync], copy, out))
            print(f"{route} run {i + 1}: {runs[route][-1]}", file=sys.stderr)
        copy.unlink(missing_ok=True)
        os.sync()
    if not args.skip_naive:
        drop_cache(src)
        runs["naive"].append(timed("naive", [sys.executable, "-c", NAIVE, str(src), str(naive), f"{args.scale:g}"], naive, src))
        print(f"naive: {runs['naive'][-1]}", file=sys.stderr)
        naive.unlink(missing_ok=True)

    def med(route: str, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs[route]) if runs[route] else float("nan")

    largest = largest_output_tensor(src, args.scale)
    budget_mb = 3 * largest / 2 ** 20 + 300
    copy_wall, floor_wall = med("copy", "wall"), med("O_DIRECT floor", "wall")
    rows = []
    for route in runs:
        if not runs[route]:
            continue
        walls = ", ".join(f"{r.wall:.1f}" for r in runs[route])
        inner = med(route, "inner")
        rows.append(f"| {route} | {med(route, 'wall'):.1f} ({walls}) | {'-' if inner != inner else f'{inner:.1f}'} | "
                    f"{med(route, 'wall') / floor_wall:.2f} | {med(route, 'wall') / copy_wall:.2f} | {med(route, 'cpu'):.1f} | {med(route, 'rss_mb'):.0f} | "
                    f"{med(route, 'bytes_out') / 1e9:.2f} | {med(route, 'bytes_out') / 1e6 / med(route, 'wall'):.0f} | "
                    f"{_pct(med(route, 'input_cached'))} |")
    table = ["| route | wall s, median (runs) | without start-up s | × O_DIRECT floor | × copy | CPU s (user+sys) | peak RSS MiB | "
             "GB written (read, for the read) | MB/s | input cached at start |",
             "|---|---|---|---|---|---|---|---|---|---|", *rows]
    checks = []
    for route in routes:
        ks_wall, ks_rss = med(route, "wall"), med(route, "rss_mb")
        warm_wall = med(f"{route}, input cached", "wall")
        inner_cold, inner_warm = med(route, "inner"), med(f"{route}, input cached", "inner")
        checks += [f"{route}: wall ≤ 1.5 × the O_DIRECT floor (aim 1.2): {ks_wall / floor_wall:.2f}× "
                   f"({'met' if ks_wall <= 1.5 * floor_wall else 'NOT met'}); {warm_wall / floor_wall:.2f}× with the input cached",
                   f"{route}: wall ≤ 1.5 × copy: {ks_wall / copy_wall:.2f}× with the input read from disk — "
                   f"{'met' if ks_wall <= 1.5 * copy_wall else 'NOT met'}; {warm_wall / copy_wall:.2f}× with the input in the page "
                   f"cache like the copy's source — {'met' if warm_wall <= 1.5 * copy_wall else 'NOT met'}. Without the start-up "
                   f"(torch's import; kernelscale's own timer): {inner_cold / copy_wall:.2f}× and {inner_warm / copy_wall:.2f}×",
                   f"{route}: peak RSS ≤ 3 × largest output tensor ({largest / 2 ** 20:.0f} MiB) + 300 MiB = {budget_mb:.0f} MiB: "
                   f"{ks_rss:.0f} MiB — {'met' if ks_rss <= budget_mb else 'NOT met'}"]
    if "cpu" in devices and "cuda" in devices:
        cpu_route, gpu_route = (next(r for r, d in routes.items() if d == dev) for dev in ("cpu", "cuda"))
        for suffix in ("", ", input cached"):
            gpu, cpu = med(gpu_route + suffix, "wall"), med(cpu_route + suffix, "wall")
            checks.append(f"GPU path not slower than the CPU path{suffix}: {gpu:.1f} s vs {cpu:.1f} s — "
                          f"{'met' if gpu <= cpu else 'NOT met'}")
    ks_wall, ks_rss = med(next(iter(routes)), "wall"), med(next(iter(routes)), "rss_mb")
    if runs["naive"]:
        speed, memory = med("naive", "wall") / ks_wall, med("naive", "rss_mb") / ks_rss
        checks += [f"≥ 3× faster than naive: {speed:.1f}× — {'met' if speed >= 3 else 'NOT met'}",
                   f"≥ 5× lower peak RSS than naive: {memory:.1f}× — {'met' if memory >= 5 else 'NOT met'}"]
    info = machine()
    load = os.getloadavg()
    import torch

    lines = [
        args.section, "",
        f"Synthetic SD 1.5 UNet (diffusers `UNet2DConditionModel` layout on the meta device, cross_attention_dim=768, "
        f"686 tensors, fp16, seeded N(0, 0.02²)): {src.stat().st_size / 1e9:.2f} GB in, {med(next(iter(routes)), 'bytes_out') / 1e9:.2f} GB out "
        f"(52 conv kernels 3×3 → 7×7, linear taps). Whole CLI as a subprocess, start-up included; median of {args.repeat} runs.",
        "",
        *table, "",
        *[f"- {c}" for c in checks],
        "",
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram']} RAM, disk {disk(work)}, Linux {info['kernel']}, "
        f"Python {info['python']}, torch {torch.__version__}, {torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; load average {load[0]:.2f} at the end (other jobs shared the machine).",
        f"Peak RSS: {rss_method()}. Page cache: the input was dropped with posix_fadvise(DONTNEED) before kernelscale and naive "
        "(\"input cached at start\" is mincore's count; \"kernelscale, input cached\" ran right after reading it); the copy's source (the converted file) was read into the cache first, so the "
        "copy measures writing alone. kernelscale and both copies with fsync are durable; \"copy, no fsync\" only reaches the page cache. "
        f"Each kernelscale and floor run starts on a fresh output: the previous one deleted, synced and {SETTLE_SECONDS:g} s of settling "
        "(the disk is mounted with discard), outside the timed region.",
        "",
        "Commands:", "",
        "```sh",
        f"python benchmarks/make_sd15_checkpoint.py {src}",
        f"python benchmarks/bench_convert.py --workdir {work} --repeat {args.repeat}" + (" --skip-naive" if args.skip_naive else "")
        + ("" if devices == ["auto"] else f" --devices {','.join(devices)}"),
        f"# kernelscale: {' '.join(['python', *convert_cmd[1:]])}" + ("" if devices == ["auto"] else " --device D (each of --devices)"),
        "# O_DIRECT floor: the output's size written from 16 MiB aligned buffers, two writes in flight, + os.fsync (paired with each kernelscale run)",
        "# copy:  shutil.copyfile(OUT, COPY) + os.fsync; naive: load_file -> F.interpolate(bilinear) * 1/s^2 -> save_file + fsync",
        "```", "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        _replace_section(Path(args.write_docs), args.section, text)
    (work / "bench_convert.json").write_text(json.dumps({k: [vars(r) for r in v] for k, v in runs.items()}, indent=2))
    return 0


def _pct(value: float) -> str:
    return "-" if value != value else f"{100 * value:.0f}%"


def _replace_section(path: Path, heading: str, section: str) -> None:
    """Replace (or append) the text under ``heading`` up to the next ``## `` heading."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    start = text.find(heading + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        nxt = text.find("\n## ", start + len(heading))
        text = text[:start] + section.rstrip("\n") + "\n" + (("\n" + text[nxt + 1:]) if nxt >= 0 else "")
    path.write_text(text.rstrip("\n") + "\n")


if __name__ == "__main__":
    sys.exit(main())
