"""Generation at 2× and 3× the training resolution: does a method remove duplication?

    python benchmarks/exp_generation.py                # the full run recorded in docs/generation.md
    python benchmarks/exp_generation.py --quick        # a smoke run on a handful of samples

The model: examples/digits_diffusion.safetensors (class-conditional UNet2DModel trained at 16×16).
For each scale (2: 32², 3: 48²) and each method in ``METHODS``, every seed samples
``--per-class`` digits of every class with DDIM (``--steps``) and classifier-free guidance
(``--guidance``), and examples/generation_metrics.py scores them: Fréchet distance in the
features of a classifier trained at 16×16 (samples area-downsampled to 16×16, against the
held-out real digits; pooled over seeds, with the floor of real digits at the same N), class
accuracy and duplication rate (mean ± standard deviation over seeds), network evaluations (rows
of the batch the UNet saw, per sample) and CPU time per sample (one thread: the wall time on an idle core). It prints the tables of
docs/generation.md (Markdown) and writes a grid of the first seed's samples per method and scale
(``--png``, default docs/generation_samples.png).

A method is one entry of ``METHODS``: a label and a function (trained model, integer scale) →
(ε function for ``ddim_sample``, the networks it evaluates). Weight surgery is
:func:`weight_method` (a copy of the model through ``kernelscale.nn.supersample``); a
sampling-time method (upsample guidance, noise-damped CFG, a re-dilation schedule) is another
such function, which may evaluate the original network at 16×16 beside the resized one.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import digits_diffusion as dd  # noqa: E402
from generation_metrics import Metrics, Report  # noqa: E402

from kernelscale.nn import supersample  # noqa: E402

# (trained model, integer scale, guidance scale) -> (ε function for ddim_sample, the networks it evaluates)
QUICK_STEPS = 2

Builder = Callable[[nn.Module, int, float], "tuple[dd.EpsFn, list[nn.Module]]"]


@dataclass(frozen=True)
class Method:
    """A row of the table: its label and its builder."""

    label: str
    build: Builder


def direct(model: nn.Module, scale: int, guidance: float) -> tuple[dd.EpsFn, list[nn.Module]]:
    """The unmodified network on the s× larger canvas."""
    return dd.guided(model, guidance), [model]


def weight_method(**options: Any) -> Builder:
    """Weight surgery: a copy of the model through ``supersample(copy, scale, **options)``."""

    def build(model: nn.Module, scale: int, guidance: float) -> tuple[dd.EpsFn, list[nn.Module]]:
        resized = copy.deepcopy(model)
        supersample(resized, scale, **options)
        return dd.guided(resized, guidance), [resized]

    return build


METHODS: dict[str, Method] = {
    "direct": Method("direct inference", direct),
    "interp-linear": Method("interp, linear taps", weight_method(method="interp", mode="linear")),
    "interp-cubic": Method("interp, cubic taps", weight_method(method="interp", mode="cubic")),
    "interp-cells": Method("interp, linear cells (paper)",
                           weight_method(method="interp", mode="linear", align="cells", padding="asymmetric")),
    "dilate": Method("dilate (every conv)", weight_method(method="dilate")),
}


@dataclass
class Run:
    """One method at one scale: per-seed reports, the pooled report, cost per sample."""

    seeds: list[Report]
    pooled: Report
    evals: float
    seconds: float
    images: torch.Tensor  # the first seed's samples


def count_rows(networks: Sequence[nn.Module]) -> tuple[list[int], list[Any]]:
    """A counter of batch rows seen by ``networks``' forwards, and the hook handles."""
    counter = [0]
    handles = [net.register_forward_pre_hook(lambda _m, args: counter.__setitem__(0, counter[0] + len(args[0])))
               for net in networks]
    return counter, handles


def run_method(build: Builder, model: nn.Module, scale: int, seeds: Sequence[int], per_class: int, steps: int,
               guidance: float, metrics: Metrics) -> Run:
    """Sample and score one method at one scale (one torch thread, as everything here)."""
    labels = dd.class_labels(per_class)
    reports, batches, evals, seconds = [], [], 0, 0.0
    with dd.deterministic():
        eps, networks = build(model, scale, guidance)
        counter, handles = count_rows(networks)
        try:
            for seed in seeds:
                start = time.process_time()
                images = dd.ddim_sample(eps, labels, dd.RESOLUTION * scale, steps, seed)
                seconds += time.process_time() - start
                batches.append(images)
                reports.append(metrics.report(images, labels, scale))
        finally:
            for handle in handles:
                handle.remove()
        evals = counter[0]
    n = len(labels) * len(seeds)
    pooled = metrics.report(torch.cat(batches), labels.repeat(len(seeds)), scale)
    return Run(reports, pooled, evals / n, seconds / n, batches[0])


def spread(values: Sequence[float], digits: int = 2) -> str:
    """"mean ± std" over seeds (std with n − 1; just the mean for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def tables(results: dict[int, dict[str, Run]], floor: float, reference: Optional[Run]) -> str:
    """Markdown: quality (methods × scales, ScaleCrafter's layout) and cost."""
    scales = sorted(results)
    head = "| method | " + " | ".join(f"{16 * s}² FD ↓ | {16 * s}² class acc ↑ | {16 * s}² dup ↓" for s in scales) + " |"
    lines = [head, "|---" * (1 + 3 * len(scales)) + "|"]
    names = list(next(iter(results.values())))
    for name in names:
        cells = []
        for s in scales:
            run = results[s][name]
            cells += [f"{run.pooled.fd:.1f}", spread([r.accuracy for r in run.seeds]),
                      spread([r.duplication for r in run.seeds])]
        lines.append(f"| {METHODS[name].label} | " + " | ".join(cells) + " |")
    if reference is not None:
        lines.append(f"| *trained resolution, 16²* | {reference.pooled.fd:.1f} | {spread([r.accuracy for r in reference.seeds])} "
                     f"| {spread([r.duplication for r in reference.seeds])} |" + " |" * (3 * len(scales) - 3))
    lines.append(f"| *real held-out digits, same N* | {floor:.1f} | | |" + " |" * (3 * len(scales) - 3))
    lines += ["", "| method | " + " | ".join(f"{16 * s}² evals/sample | {16 * s}² CPU s/sample" for s in scales) + " |",
              "|---" * (1 + 2 * len(scales)) + "|"]
    for name in names:
        cells = []
        for s in scales:
            run = results[s][name]
            cells += [f"{run.evals:.0f}", f"{run.seconds:.3f}"]
        lines.append(f"| {METHODS[name].label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sample_grid(results: dict[int, dict[str, Run]], path: Path) -> None:
    """One row per (scale, method): the first seed's samples, labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(s, name) for s in sorted(results) for name in results[s]]
    columns = max(len(results[s][name].images) for s, name in rows)
    figure, axes = plt.subplots(len(rows), 1, figsize=(columns * 0.55 + 2.2, len(rows) * 0.62 + 0.2), squeeze=False)
    for axis, (s, name) in zip(axes[:, 0], rows):
        images = results[s][name].images
        size = images.shape[-1]
        strip = torch.ones(size, len(images) * (size + 2) - 2)
        for i, image in enumerate(images):
            strip[:, i * (size + 2):i * (size + 2) + size] = 1 - image[0]
        axis.imshow(strip.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_ylabel(f"{size}²\n{METHODS[name].label}", rotation=0, ha="right", va="center", fontsize=7)
    figure.tight_layout()
    figure.savefig(str(path), dpi=110)
    plt.close(figure)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"smoke run: scale 2, one seed, 1 per class, {QUICK_STEPS} steps")
    parser.add_argument("--checkpoint", type=Path, default=dd.CHECKPOINT)
    parser.add_argument("--scales", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 … n−1")
    parser.add_argument("--per-class", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "generation_samples.png")
    args = parser.parse_args(argv)
    if args.quick:
        args.scales, args.seeds, args.per_class, args.steps = [2], 1, 1, QUICK_STEPS
    if min(args.scales) < 2 or args.seeds < 1 or args.per_class < 1 or args.steps < 1:
        parser.error(f"scales must be integers ≥ 2 and seeds, per-class, steps ≥ 1; got {args.scales}, "
                     f"{args.seeds}, {args.per_class}, {args.steps}")

    model = dd.load_model(args.checkpoint)
    metrics = Metrics.fit()
    seeds = list(range(args.seeds))
    reference = run_method(direct, model, 1, seeds, args.per_class, args.steps, args.guidance, metrics)
    results: dict[int, dict[str, Run]] = {}
    for scale in args.scales:
        results[scale] = {}
        for name in args.methods:
            run = run_method(METHODS[name].build, model, scale, seeds, args.per_class, args.steps, args.guidance, metrics)
            results[scale][name] = run
            print(f"[{16 * scale}² {name}] " + run.pooled.line("pooled") + f"; {run.evals:.0f} evals, "
                  f"{run.seconds:.3f} s per sample", file=sys.stderr, flush=True)
    floor = metrics.real_floor(reference.pooled.n)
    print(f"DDIM {args.steps} steps, guidance {args.guidance}, seeds {seeds}, {args.per_class} per class "
          f"(N = {reference.pooled.n} per method and scale), one torch thread\n")
    print(tables(results, floor, reference))
    sample_grid(results, args.png)
    print(f"\nwrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
