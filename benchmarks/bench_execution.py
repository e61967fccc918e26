"""Forward time of factored execution (DESIGN §9) against the materialised kernels and re-dilation.

    python benchmarks/bench_execution.py            # prefilter forms; 320→320 conv at 64², 128²; SD 1.5 UNet 64²→128²
    python benchmarks/bench_execution.py --quick    # prefilter forms; the conv at 64²; the UNet at 16²→32²

Three tables, each variant as its median time over ``--repeats`` runs and its ratio to the
floor (the unconverted layer or model run at the new size); also the minimum and its ratio to
the floor's minimum, the better estimate of the work itself on a machine shared with other jobs:

1. prefilter forms — the cubic ×2 prefilter (7 taps per axis) on 320 channels, the input of a
   128² (quick: 64²) layer padded by p' = 5: separable 1-D depthwise passes (the shipped form),
   the same on a channels-last copy (conversion included), one 2-D depthwise 7×7 conv, and sums
   of shifted slices. Ratio: to the shipped form.
2. one 320→320 3×3 'same' conv, fp32, batch 1: the plain conv at the new size (floor),
   geometry-only dilate, materialised interp taps linear/cubic/lanczos3 (7×7, 11×11, 15×15),
   factored linear/cubic/lanczos3 (kernelscale.layers.FactoredConv).
3. diffusers' UNet2DConditionModel with the SD 1.5 config (cross-attention 768), random weights
   (seeded), fp32 on CPU, batch 1, random timestep and text embeddings, latent ×2: the same
   variants. Factored variants wrap the model's own 3×3 convs (no weight copies); materialised
   ones are ``kernelscale.nn.supersample`` on a copy and are skipped, with the memory they would
   need, when their resized weights do not fit in the available RAM (cubic: ~29 GB in fp32).

Repeats run round-robin over the variants, so a burst of load on a shared machine hits every
variant alike (the materialised UNets, each on its own copy, run after the others). On a busy
machine ``--threads 1`` gives steadier figures. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import statistics
import sys
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kernelscale.layers import FactoredConv, factor_resize, prefilter  # noqa: E402  (the checkout, not an installed copy)
from kernelscale.resize import resize_kernel  # noqa: E402
from kernelscale.transforms import axis_size  # noqa: E402

MODES = ("linear", "cubic", "lanczos3")
SD15_CROSS_ATTENTION_DIM = 768


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def round_robin(variants: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.no_grad():
        for _ in range(warmup):
            for fn in variants.values():
                fn()
        for _ in range(repeats):
            for name, fn in variants.items():
                times[name].append(timed(fn))
    return times


def print_table(title: str, times: dict[str, Optional[list[float]]], floor: str, notes: dict[str, str] | None = None) -> None:
    notes = notes or {}
    base = statistics.median(times[floor])
    print(f"\n{title}")
    low = min(times[floor])
    print(f"| variant | median | × {floor} | min | min × {floor} min | runs |")
    print("|---|---:|---:|---:|---:|---|")
    for name, values in times.items():
        if not values:
            print(f"| {name} | – | – | – | – | {notes.get(name, 'not run')} |")
            continue
        med = statistics.median(values)
        runs = " ".join(f"{v * 1e3:.0f}" for v in values)
        print(f"| {name} | {med * 1e3:.1f} ms | {med / base:.2f} | {min(values) * 1e3:.1f} ms | {min(values) / low:.2f} | {runs} ms |")
    sys.stdout.flush()


def bench_prefilter(size: int, channels: int, repeats: int) -> None:
    h = torch.tensor(factor_resize((3, 3), 2, mode="cubic").prefilters[0], dtype=torch.float32)
    taps = h.numel()
    x = torch.randn(1, channels, size + 10, size + 10)
    filters = [h, h]
    outer = (h[:, None] * h[None, :]).expand(channels, 1, taps, taps).contiguous()

    def shifted(x: torch.Tensor) -> torch.Tensor:
        n_rows, n_cols = x.shape[-2] - taps + 1, x.shape[-1] - taps + 1
        z = sum(h[m] * x[..., m:m + n_rows, :] for m in range(taps))
        return sum(h[m] * z[..., m:m + n_cols] for m in range(taps))

    variants = {
        "separable 1-D passes (shipped)": lambda: prefilter(x, filters),
        "separable, channels-last copy": lambda: prefilter(x.contiguous(memory_format=torch.channels_last), filters),
        "2-D depthwise 7×7": lambda: F.conv2d(x, outer, groups=channels),
        "shifted slices": lambda: shifted(x),
    }
    reference = prefilter(x, filters)
    for name, fn in variants.items():
        err = float((fn() - reference).abs().max())
        assert err < 1e-4, (name, err)
    print_table(f"prefilter forms: cubic ×2 (7 taps per axis), {channels} channels, {size + 10}² in → {size + 4}² out",
                round_robin(variants, repeats, 1), "separable 1-D passes (shipped)")


def bench_conv(size: int, channels: int, repeats: int) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, channels, 3, padding=1)
    x = torch.randn(1, channels, size, size)
    variants: dict[str, Callable[[], object]] = {"unconverted (floor)": lambda: conv(x)}
    dilated = FactoredConv.from_conv(conv, 2, method="dilate", state="dilated")
    variants["dilate (geometry-only)"] = lambda: dilated(x)
    for mode in MODES:
        big = resize_kernel(conv.weight.detach(), 2, mode=mode)
        pad = (big.shape[-1] - 1) // 2
        variants[f"materialised {mode} {big.shape[-1]}×{big.shape[-1]}"] = (lambda big=big, pad=pad: F.conv2d(x, big, conv.bias, padding=pad))
    for mode in MODES:
        layer = FactoredConv.from_conv(conv, 2, mode=mode)
        variants[f"factored {mode}"] = (lambda layer=layer: layer(x))
    print_table(f"one conv {channels}→{channels} 3×3, s = 2, at {size}² (input already supersampled)",
                round_robin(variants, repeats, 1), "unconverted (floor)")


def sd15_unet() -> nn.Module:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(cross_attention_dim=SD15_CROSS_ATTENTION_DIM).eval()


def available_bytes() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def materialised_extra_bytes(model: nn.Module, mode: str) -> int:
    """Bytes the resized conv weights add over the model's (fp32)."""
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and max(module.kernel_size) > 1:
            k_new = [axis_size(k, 2.0, "interp", mode) for k in module.kernel_size]
            total += module.weight.numel() // math.prod(module.kernel_size) * math.prod(k_new) * 4
    return total


def bench_unet(latent: int, repeats: int, modes: tuple[str, ...], max_gib: float) -> None:
    from kernelscale.nn import supersample

    start = time.perf_counter()
    model = sd15_unet()
    print(f"\nSD 1.5 UNet built in {time.perf_counter() - start:.0f} s "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters)", flush=True)
    gen = torch.Generator().manual_seed(1)
    size = 2 * latent
    sample = torch.randn(1, 4, size, size, generator=gen)
    timestep = torch.randint(0, 1000, (1,), generator=gen)
    text = torch.randn(1, 77, SD15_CROSS_ATTENTION_DIM, generator=gen)

    def run(m: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return m(sample, timestep, text).sample

    def measure(name: str, m: nn.Module) -> list[float]:
        values = []
        for _ in range(repeats):
            values.append(timed(lambda: run(m)))
            print(f"  {name}: {values[-1]:.1f} s", flush=True)
        return values

    convs = {name: module for name, module in model.named_modules() if isinstance(module, nn.Conv2d) and max(module.kernel_size) > 1}
    wrapped = {name: FactoredConv.from_conv(conv, 2, method="dilate", state="dilated") for name, conv in convs.items()}
    resizes = {mode: {name: factor_resize(layer.kernel_size, 2, mode=mode) for name, layer in wrapped.items()} for mode in modes}

    def install(layers: dict[str, nn.Module]) -> None:
        for name, layer in layers.items():
            model.set_submodule(name, layer)

    def setup(variant: str) -> None:
        """The model in ``variant``: the plain convs (floor), or the wrappers in a state and mode."""
        if variant == "unconverted (floor)":
            install(convs)
            return
        install(wrapped)
        mode = variant.split()[-1]
        for name, layer in wrapped.items():
            if variant.startswith("factored"):
                layer.configure(resizes[mode][name])
            layer.state = "interpolated" if variant.startswith("factored") else "dilated"

    # round-robin, one forward of each variant per round: a burst of load hits every variant alike
    variants = ["unconverted (floor)", "dilate (geometry-only)"] + [f"factored {mode}" for mode in modes]
    times: dict[str, Optional[list[float]]] = {v: [] for v in variants}
    notes: dict[str, str] = {}
    for _ in range(repeats):
        for variant in variants:
            setup(variant)
            times[variant].append(timed(lambda: run(model)))
            print(f"  {variant}: {times[variant][-1]:.1f} s", flush=True)
    install(convs)
    for mode in modes:
        label = f"materialised {mode}"
        need, have = materialised_extra_bytes(model, mode) + sum(p.numel() * 4 for p in model.parameters()), available_bytes()
        if need > min(0.85 * have, max_gib * 2**30):
            times[label] = None
            notes[label] = (f"skipped: a resized copy needs {need / 2**30:.1f} GiB ({have / 2**30:.1f} GiB available, "
                            f"--max-gib {max_gib:g})")
            print(f"  {label}: {notes[label]}", flush=True)
            continue
        setup(f"factored {mode}")
        factored_y = run(model)
        install(convs)
        resized = copy.deepcopy(model)
        supersample(resized, 2, mode=mode, execution="materialised")
        times[label] = measure(label, resized)
        y = run(resized)
        rel = float((factored_y - y).abs().max() / y.abs().max())
        notes[label] = f"factored vs materialised: max |Δ| / max |y| = {rel:.1e}"
        print(f"  {label}: {notes[label]}", flush=True)
        del resized, y
        gc.collect()
    print_table(f"SD 1.5 UNet (diffusers UNet2DConditionModel, fp32, batch 1), latent {latent}² → {size}², "
                f"{torch.get_num_threads()} threads", times, "unconverted (floor)", notes)
    for label, note in notes.items():
        if times.get(label):
            print(f"- {label}: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="conv at 64² only and the UNet at latent 16² → 32²")
    parser.add_argument("--repeats", type=int, default=5, help="runs per variant, conv tables (median; default 5)")
    parser.add_argument("--unet-repeats", type=int, default=3, help="runs per variant, UNet (median; default 3)")
    parser.add_argument("--latent", type=int, default=None, help="the UNet's original latent size (default 64; quick 16)")
    parser.add_argument("--skip", choices=("prefilter", "conv", "unet"), action="append", default=[], help="leave a table out")
    parser.add_argument("--unet-modes", default=",".join(MODES), help="interp modes for the UNet (comma-separated)")
    parser.add_argument("--max-gib", type=float, default=16.0,
                        help="skip a materialised UNet whose copy needs more than this (GiB; default 16)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if "prefilter" not in args.skip:
        bench_prefilter(64 if args.quick else 128, 320, args.repeats)
    if "conv" not in args.skip:
        for size in ((64,) if args.quick else (64, 128)):
            bench_conv(size, 320, args.repeats)
    if "unet" not in args.skip:
        latent = args.latent or (16 if args.quick else 64)
        bench_unet(latent, args.unet_repeats, tuple(m for m in args.unet_modes.split(",") if m), args.max_gib)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
