"""The paper's fully-connected interpolation experiment, on scikit-learn's 8×8 digits.

    .venv/bin/python benchmarks/exp_fc_interpolation.py [--seeds 3] [--plot docs/exp_fc_interpolation.png]

Trains an MLP (64 → 128 → 10) and a small CNN (conv 3×3 1→16, ReLU, conv 3×3 16→32, ReLU, Linear
over the (32, 8, 8) feature grid) on 8×8 digits, resizes each to 16×16, 24×24 and 32×32 with
kernelscale.nn.supersample (no training) and reports accuracy on the held-out digits upsampled
bicubically (F.interpolate, align_corners=False), against the 8×8 accuracy. Methods: interp with
every mode (nearest, linear, cubic, lanczos3), both alignments (taps, cells; the Linear grid is
always resized as cells) and both coefficients (mass, paper); dilate (convs; the grid falls back to
interp cells); pinv (mode cubic: the bicubic upsampler's pseudo-inverse). Prints Markdown tables
(mean over seeds, with the worst seed's drop) and writes a plot.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from digits import fit, load_digits_split as load_split, seeded_init  # noqa: E402  the example's data, init, training

from kernelscale.errors import KernelscaleError  # noqa: E402
from kernelscale.nn import supersample  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZES = (16, 24, 32)
MODES = ("nearest", "linear", "cubic", "lanczos3")
PAPER_DROP = 2.6  # points: the paper's worst-case accuracy drop for fully-connected interpolation


def mlp(size: int = 8) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(size * size, 128), nn.ReLU(), nn.Linear(128, 10))


def cnn(size: int = 8) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * size * size, 10))


NETWORKS: dict[str, tuple[Callable[[int], nn.Module], str, tuple[int, int, int], int]] = {
    # name: (constructor, grid layer, grid at 8×8, epochs)
    "MLP": (mlp, "1", (1, 8, 8), 30),
    "CNN": (cnn, "5", (32, 8, 8), 15),
}


def upsample(x: torch.Tensor, size: int, mode: str = "bicubic") -> torch.Tensor:
    if size == x.shape[-1]:
        return x
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(x, size=(size, size), mode=mode, **kwargs)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return sum((model(b).argmax(1) == t).sum().item() for b, t in zip(x.split(150), y.split(150))) / len(y)


def methods(grid_layer: str) -> list[tuple[str, dict]]:
    """(label, supersample options) for every method of the experiment."""
    rows = []
    for mode in MODES:
        for align in ("taps", "cells"):
            for coef in ("mass", "paper"):
                # The grid's coefficient follows the run's only through a layer rule (the plan's grid
                # default is "paper"), so both rows really differ for the Linear too.
                rule = {"pattern": grid_layer, "coef": coef}
                rows.append((f"interp {mode} {align} {coef}", dict(mode=mode, align=align, coef=coef, layers=[rule])))
    rows.append(("dilate", dict(method="dilate")))
    rows.append(("pinv cubic", dict(method="pinv", mode="cubic")))
    return rows


def evaluate(seeds: int) -> dict:
    """results[network][label][size] = list of accuracies over seeds; [network]["8×8"] = baselines."""
    results: dict = {}
    for name, (ctor, grid_layer, grid, epochs) in NETWORKS.items():
        out = results.setdefault(name, {"8×8": []})
        for seed in range(seeds):
            x_train, y_train, x_test, y_test = load_split(seed)
            model = fit(seeded_init(ctor(), seed), x_train, y_train, epochs, seed)
            out["8×8"].append(accuracy(model, x_test, y_test))
            for size in SIZES:
                scale = size // 8
                x_big = upsample(x_test, size)
                for label, options in methods(grid_layer):
                    if name == "MLP" and " taps " in label:
                        continue  # a grid is resized as cells whatever the alignment: same as the cells row
                    big = copy.deepcopy(model)
                    try:
                        supersample(big, scale, grids={grid_layer: grid}, padding="asymmetric", **options)
                        value = accuracy(big, x_big, y_test)
                    except KernelscaleError as exc:
                        print(f"{name} {label} ×{scale}: refused: {exc}", file=sys.stderr)
                        value = float("nan")
                    out.setdefault(label, {}).setdefault(size, []).append(value)
            print(f"{name} seed {seed} done", file=sys.stderr)
    return results


def table(results: dict, name: str) -> list[str]:
    base = results[name]["8×8"]
    mean_base = sum(base) / len(base)
    lines = [f"**{name}** — accuracy at 8×8: {100 * mean_base:.1f} % (seeds: {', '.join(f'{100 * b:.1f}' for b in base)})", "",
             "| method | " + " | ".join(f"{s}×{s}" for s in SIZES) + " | worst drop |", "|---|" + "---:|" * (len(SIZES) + 1)]
    for label, per_size in results[name].items():
        if label == "8×8":
            continue
        cells, worst = [], 0.0
        for size in SIZES:
            values = per_size[size]
            mean = sum(values) / len(values)
            drop = max(100 * (b - v) for b, v in zip(base, values))
            worst = max(worst, drop)
            cells.append(f"{100 * mean:.1f} ({100 * (mean - mean_base):+.1f})")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {worst:.1f} |")
    return lines


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), sharey=True)
    picks = ["interp nearest cells paper", "interp linear cells paper", "interp cubic cells paper", "interp linear taps mass",
             "interp cubic taps mass", "dilate", "pinv cubic"]
    colours = dict(zip(picks, plt.cm.tab10.colors))  # one colour per method in both panels
    for ax, (name, per) in zip(axes, results.items()):
        base = 100 * sum(per["8×8"]) / len(per["8×8"])
        ax.axhline(base, color="black", lw=1, label="8×8 (trained)")
        ax.axhline(base - PAPER_DROP, color="gray", lw=1, ls=":", label="8×8 − 2.6 (paper's worst case)")
        for label in picks:
            if label not in per or (name == "MLP" and label == "dilate"):
                continue  # the MLP has no conv: its "dilate" is the grid's interp linear cells, drawn already
            ys = [100 * sum(per[label][s]) / len(per[label][s]) for s in SIZES]
            ax.plot(SIZES, ys, marker="o", label=label, color=colours[label])
        ax.set_title(f"{name}: accuracy on bicubic-upsampled digits")
        ax.set_xlabel("input size (pixels)")
        ax.set_xticks(SIZES)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    axes[0].set_ylabel("test accuracy (%), mean over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "exp_fc_interpolation.png")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw accuracies")
    parser.add_argument("--from-json", type=Path, default=None, help="print and plot accuracies written by --json, no training")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # training is on one thread anyway (examples/digits.fit); so is evaluation, for speed
    started = time.perf_counter()
    if args.from_json:
        raw = json.loads(args.from_json.read_text())
        results = {name: {label: (v if label == "8×8" else {int(size): accs for size, accs in v.items()}) for label, v in per.items()}
                   for name, per in raw.items()}
        args.seeds = len(next(iter(results.values()))["8×8"])
    else:
        results = evaluate(args.seeds)
    for name in results:
        print("\n".join(table(results, name)))
        print()
    print(f"({args.seeds} seeds, {time.perf_counter() - started:.0f} s, torch {torch.__version__}, 1 thread)")
    if args.plot:
        plot(results, args.plot)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
