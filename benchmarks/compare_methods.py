"""Side-by-side of every resize method on the example checkpoint's kernels, with verify's measures.

    python benchmarks/compare_methods.py [--scale 2] [--plot docs/methods.png] [--pools]

For each method: new kernel size and FLOP growth, and per conv layer the structure error
(band-limited probes at ν₀ = 0.25 and 0.4 cycles per low-res pixel), the alias gain and the DC
gain ratio (kernelscale.verify). Prints a Markdown table (pasted into docs/methods.md). When
kernelscale.nn is available it also reports the example network's accuracy on held-out digits
upsampled to 16×16 (bicubic and nearest).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from kernelscale import plan_state_dict, resize_state_dict
from kernelscale.manifest import ConvRecord
from kernelscale.verify import certify_record

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "examples" / "digits_cnn.safetensors"
GRID = {"fc": (32, 4, 4)}

METHODS = [
    ("interp nearest taps", dict(method="interp", mode="nearest")),
    ("interp linear taps", dict(method="interp", mode="linear")),
    ("interp cubic taps", dict(method="interp", mode="cubic")),
    ("interp lanczos3 taps", dict(method="interp", mode="lanczos3")),
    ("interp linear cells", dict(method="interp", mode="linear", align="cells")),
    ("dilate", dict(method="dilate")),
    ("dilate, geometry only", dict(method="dilate", geometry_only=True)),
    ("disperse (m=7, η=0.05)", dict(method="disperse")),
    ("pinv linear", dict(method="pinv", mode="linear")),
]


def accuracy_at(state: dict, options: dict, scale: float, pools: bool = False) -> tuple[float, float] | None:
    """Accuracy of the supersampled example network on bicubic / nearest upsampled digits
    (``pools``: the max-pool window rescaled too, ``kernelscale.nn.supersample(..., pools=True)``)."""
    try:
        import kernelscale.nn as ksnn
    except ImportError:
        return None
    sys.path.insert(0, str(ROOT / "examples"))
    from digits import DigitsCNN, accuracy, load_digits_split, upsample

    model = DigitsCNN()
    model.load_state_dict(state)
    try:
        ksnn.supersample(model, scale, grids=GRID, pools=pools, padding="asymmetric" if options.get("align") == "cells" or options.get("method") == "pinv" else "exact", **options)
    except Exception as exc:  # a method the adapter refuses for this network
        print(f"  ({options}: {exc})", file=sys.stderr)
        return None
    *_, x_test, y_test = load_digits_split()
    size = int(8 * scale)
    nearest = torch.nn.functional.interpolate(x_test, size=(size, size), mode="nearest-exact")
    return accuracy(model, upsample(x_test, size), y_test), accuracy(model, nearest, y_test)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG comparing the methods")
    parser.add_argument("--pools", action="store_true", help="measure accuracy with the max-pool window rescaled too (pools=True)")
    args = parser.parse_args()

    from safetensors.torch import load_file

    state = load_file(str(CHECKPOINT))
    rows = []
    for label, options in METHODS:
        plan = plan_state_dict(state, scale=args.scale, grids=GRID, **options)
        new, _ = resize_state_dict(state, plan=plan)
        conv = [e for e in plan.changed if isinstance(e.record, ConvRecord)]
        certs = {band: [certify_record(e.name, state[e.name], new[e.name], e.record, band=band) for e in conv]
                 for band in (0.25, 0.4)}
        acc = accuracy_at(state, options, args.scale, args.pools)
        rows.append((label, conv[0].new_shape[2:], conv[0].record.dilation, max(e.flop_growth for e in conv), certs, acc))

    header = ("| method | 3×3 becomes | FLOPs × | structure error ν₀=0.25 (conv1 / conv2) | ν₀=0.4 | alias gain | DC gain | "
              f"accuracy 16×16 bicubic / nearest{' (pools=True)' if args.pools else ''} |")
    print(header)
    print("|" + "---|" * 8)
    for label, shape, dilation, flops, certs, acc in rows:
        size = "×".join(map(str, shape)) + (f", dilation {dilation[0]}" if dilation else "")
        s25 = " / ".join(f"{c.structure_error:.4f}" for c in certs[0.25])
        s40 = " / ".join(f"{c.structure_error:.4f}" for c in certs[0.4])
        alias = " / ".join(f"{c.alias_gain:.3f}" for c in certs[0.25])
        dc = " / ".join("undef" if c.dc_gain_ratio is None else f"{c.dc_gain_ratio:.4f}" for c in certs[0.25])
        accuracy = f"{acc[0]:.4f} / {acc[1]:.4f}" if acc else "n/a"
        print(f"| {label} | {size} | {flops:.2f} | {s25} | {s40} | {alias} | {dc} | {accuracy} |")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 5.5))
        for label, _, _, flops, certs, _ in rows:
            x = sum(c.structure_error for c in certs[0.25]) / len(certs[0.25])
            y = sum(c.alias_gain for c in certs[0.25]) / len(certs[0.25])
            ax.scatter(x, y, s=40 + 12 * flops)
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_xlabel("structure error on band-limited probes, ν₀ = 0.25 (mean over conv layers)")
        ax.set_ylabel("alias gain: response above the low-res Nyquist, relative")
        ax.set_title(f"Resize methods on the example checkpoint, s = {args.scale:g} (marker area ∝ FLOPs)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"\nwrote {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
