"""Figures and tables of docs/theory.md, computed from kernelscale.transforms.

Run from the repository root:

    .venv/bin/python docs/plot_theory.py

Writes docs/frequency_response.png and docs/kernel_resize.png, and prints the tables that
docs/theory.md quotes (the T3 bounds, the filters h_s, the resized 3×3 kernel sizes and sums).
Only kernelscale.transforms is used: the pure maths, no I/O and no backend.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


T = importlib.import_module("kernelscale.transforms")
MODES = T.MODES  # nearest, linear, cubic, lanczos3
COLOURS = {"nearest": "tab:blue", "linear": "tab:orange", "cubic": "tab:green", "lanczos3": "tab:red"}
BANDS = (0.1, 0.25, 0.4)  # ν₀, cycles per low-res sample


def response(mode: str, s: int, nu: np.ndarray, coef="mass") -> np.ndarray:
    """c·ĥ_s at low-res frequency ν (cycles per low-res sample): ω = 2πν/s per high-res sample."""
    return T.frequency_response(mode, s, 2 * np.pi * np.asarray(nu) / s, coef)


def t3_bound(mode: str, s: int, nu0: float, coef="mass", d: int = 1) -> float:
    """max |1 − ∏ c·ĥ_s(ω_i)| over the band |ν_i| ≤ ν₀ (d axes, same band on each).

    ĥ_s is even, so [0, ν₀] suffices; on a dense grid g = c·ĥ_s spans [g_min, g_max], and the
    product of d such factors reaches its extremes at products of those two ends.
    """
    g = response(mode, s, np.linspace(0.0, nu0, 20001), coef)
    lo, hi = g.min(), g.max()
    ends = {lo**a * hi ** (d - a) for a in range(d + 1)}
    return max(abs(1 - p) for p in ends)


def print_tables() -> None:
    print("## filters h_s (T2) and coefficients")
    for s in (2, 3):
        for mode in MODES:
            h = T.filter_taps(mode, s)
            u = np.arange(h.size) - (h.size - 1) / 2
            second = (u**2 * h).sum() / h.sum()  # c·ĥ(ω) = 1 − ω²·second/2 + O(ω⁴) with c = 1/Σh
            print(f"s={s} {mode:9s} len {h.size:2d}  Σh={h.sum():.6f}  Σh/s={h.sum() / s:.6f}  "
                  f"Σu²h/Σh={second:+.4f}  h={np.array2string(h, precision=4, suppress_small=True)}")
    for mode in ("cubic", "lanczos3"):
        nu = np.linspace(0, 0.5, 20001)
        g = response(mode, 2, nu)
        print(f"s=2 {mode}: max c·ĥ = {g.max():.5f} at ν = {nu[g.argmax()]:.4f}; c·ĥ(0.5) = {g[-1]:.4f}")
    print("c·ĥ at ν = 0.5, s=2:", {m: round(float(response(m, 2, 0.5)), 4) for m in MODES})
    print("c·ĥ at ν = 0.5, s=3:", {m: round(float(response(m, 3, 0.5)), 4) for m in MODES})

    print("\n## T3 bound at s = 2: max |1 − c·ĥ_s(ω)| over ω ≤ 2πν₀/s (1-D) and the square band (2-D)")
    head = " | ".join(f"ν₀ = {b}" for b in BANDS)
    print(f"| mode (coef) | {head} | {head} |")
    print("|---|" + "---:|" * (2 * len(BANDS)))
    rows = [(m, "mass") for m in MODES] + [("lanczos3", "paper")]
    for mode, coef in rows:
        one = " | ".join(f"{t3_bound(mode, 2, b, coef, 1):.4f}" for b in BANDS)
        two = " | ".join(f"{t3_bound(mode, 2, b, coef, 2):.4f}" for b in BANDS)
        print(f"| {mode} ({coef}) | {one} | {two} |")
    print(f"| dilate | {' | '.join(['0'] * len(BANDS))} | {' | '.join(['0'] * len(BANDS))} |")

    print("\n## T3 bound at s = 3 (1-D, mass)")
    for mode in MODES:
        print(mode, [round(float(t3_bound(mode, 3, b)), 4) for b in BANDS])

    print("\n## coefficient: max over columns |mass − paper| / paper, k = 3")
    for s in (2, 3, 1.5, 2.5):
        row = []
        for mode in MODES:
            for align in ("taps", "cells"):
                paper = T.build_axis_resize(3, s, "interp", mode, align, "paper").matrix
                sums = paper.sum(axis=0)  # mass divides column t by this; paper multiplies all by 1/s
                row.append(f"{mode}/{align} {np.abs(1 / sums - 1).max():.4f}")
        print(f"s={s}: " + ", ".join(row))


def kernel_panels():
    """The 3×3 example kernel and its resizes at s = 2: (title, matrix) in plot order."""
    K = np.array([[0.02, 0.10, 0.20],
                  [0.06, 0.25, 0.30],
                  [0.00, 0.08, 0.12]])
    s = 2
    specs = [
        ("interp taps, nearest", dict(method="interp", mode="nearest")),
        ("interp taps, linear (default)", dict(method="interp", mode="linear")),
        ("interp taps, cubic", dict(method="interp", mode="cubic")),
        ("interp taps, lanczos3", dict(method="interp", mode="lanczos3")),
        ("interp cells, linear", dict(method="interp", mode="linear", align="cells")),
        ("dilate (zero insertion)", dict(method="dilate")),
        ("pinv, linear", dict(method="pinv", mode="linear")),
    ]
    panels = [("original", K, 1)]
    for title, options in specs:
        op = T.build_kernel_resize(K.shape, s, **options)
        R1, R2 = (a.matrix for a in op.axes)
        panels.append((title, R1 @ K @ R2.T, s))
    return panels


def print_kernel_table(panels) -> None:
    print("\n## the 3×3 example at s = 2")
    print("| resize | size | Σ taps | min tap | FLOPs per output sample vs 3×3 |")
    print("|---|---|---:|---:|---:|")
    for title, M, _ in panels:
        print(f"| {title} | {M.shape[0]}×{M.shape[1]} | {M.sum():.6f} | {M.min():+.4f} | {M.size / 9:.2f}× |")
    print("\nkernel sizes for k = 3 at s = 2, 3 (taps / cells):")
    for s in (2, 3):
        sizes = {m: (T.build_axis_resize(3, s, "interp", m).k_out, T.build_axis_resize(3, s, "interp", m, "cells").k_out) for m in MODES}
        print(f"s={s}", sizes, "dilate", T.build_axis_resize(3, s, "dilate").k_out, "pinv", T.build_axis_resize(3, s, "pinv").k_out)


def plot_frequency_response(path: Path) -> None:
    fig = plt.figure(figsize=(12, 8), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=(1.15, 1))
    ax_r = fig.add_subplot(grid[0, 0])
    ax_e = fig.add_subplot(grid[1, 0], sharex=ax_r)
    ax_f = fig.add_subplot(grid[:, 1])
    nu = np.linspace(0, 0.5, 1001)
    width = {"nearest": 3.2, "linear": 1.6, "cubic": 1.6, "lanczos3": 1.6}  # nearest = linear at s=2: drawn wider, under it

    for mode in MODES:
        for s, style in ((2, "-"), (3, "--")):
            label = f"{mode}, s={s}" + (" (= linear at s=2)" if mode == "nearest" and s == 2 else "")
            g = response(mode, s, nu)
            alpha = 0.45 if (mode == "nearest" and s == 2) else 1.0
            ax_r.plot(nu, g, style, color=COLOURS[mode], lw=width[mode] if s == 2 else 1.4, alpha=alpha, label=label)
            err = np.abs(1 - g)
            ax_e.semilogy(nu[1:], err[1:], style, color=COLOURS[mode], lw=width[mode] if s == 2 else 1.4, alpha=alpha)
    err_paper = np.abs(1 - response("lanczos3", 2, nu, "paper"))
    ax_e.semilogy(nu[1:], err_paper[1:], ":", color=COLOURS["lanczos3"], lw=1.8, label="lanczos3, s=2, coef='paper'")
    ax_r.axhline(1.0, color="black", lw=1.2, label="1 (dilate: h = δ)")
    for b in BANDS:
        for ax in (ax_r, ax_e):
            ax.axvline(b, color="0.6", lw=0.8, ls=":", zorder=0)
        ax_r.text(b, 0.435, f" ν₀={b}", color="0.35", fontsize=8, va="bottom")

    ax_r.set_ylim(0.42, 1.06)
    ax_r.set_ylabel("c·ĥ_s(2πν/s)")
    ax_r.set_title("(a) c·ĥ_s: the gain interp applies to a cosine (coef='mass')")
    ax_r.legend(fontsize=8, ncol=2, loc="lower left", bbox_to_anchor=(0.0, 0.04))
    ax_r.grid(alpha=0.3)
    ax_r.tick_params(labelbottom=False)
    ax_e.set_ylim(1e-5, 1.0)
    ax_e.set_xlim(0, 0.5)
    ax_e.set_xlabel("ν: low-res frequency, cycles per low-res sample")
    ax_e.set_ylabel("|1 − c·ĥ_s(2πν/s)|")
    ax_e.set_title("(b) |1 − c·ĥ_s|: T3 bounds the relative error by its max over the band")
    ax_e.legend(fontsize=8, loc="lower right")
    ax_e.grid(alpha=0.3, which="both")

    s = 2
    nu_full = np.linspace(0, s / 2, 2001)
    ax_f.axvspan(0.5, s / 2, color="0.92", zorder=0)
    ax_f.text(0.75, 1.085, "above the low-res Nyquist:\nabsent from U x,\npresent in a real fine input",
              ha="center", va="top", fontsize=8.5, color="0.3")
    for mode in MODES:
        alpha = 0.45 if mode == "nearest" else 1.0
        label = mode + (" (= linear)" if mode == "nearest" else "")
        ax_f.plot(nu_full, response(mode, s, nu_full), color=COLOURS[mode], lw=width[mode], alpha=alpha, label=label)
    ax_f.axhline(1.0, color="black", lw=1.2, label="dilate (h = δ): passes everything")
    ax_f.axhline(0.0, color="0.5", lw=0.8)
    ax_f.set_xlim(0, s / 2)
    ax_f.set_ylim(-0.12, 1.12)
    ax_f.set_xlabel("ν: cycles per low-res sample (high-res Nyquist at ν = s/2 = 1)")
    ax_f.set_ylabel("c·ĥ_s(2πν/s)")
    ax_f.set_title("(c) s=2, the whole high-res band: interp is a low-pass,\ndilate passes detail above ν=0.5 unchanged")
    ax_f.legend(fontsize=8.5, loc="lower left")
    ax_f.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_kernels(path: Path, panels) -> None:
    vmax = max(np.abs(M).max() for _, M, _ in panels)
    reach = max(M.shape[0] / (2 * s) for _, M, s in panels)  # half-footprint in low-res pixels
    # One colour scale for every panel, signed square root so that the ≈ ¼-size resized taps and
    # the small negative lobes (cubic, lanczos3, pinv) stay visible; the colour bar gives values.
    norm = matplotlib.colors.FuncNorm((lambda x: np.sign(x) * np.sqrt(np.abs(x)), lambda y: np.sign(y) * y**2),
                                      vmin=-vmax, vmax=vmax)
    fig, axes = plt.subplots(2, 4, figsize=(13, 8), sharex=True, sharey=True, layout="constrained")
    for ax, (title, M, s) in zip(axes.flat, panels):
        half = M.shape[0] / (2 * s)
        im = ax.imshow(M, cmap="RdBu_r", norm=norm, extent=(-half, half, half, -half), interpolation="nearest")
        ax.set_title(f"{title}\n{M.shape[0]}×{M.shape[1]}, Σ = {M.sum():.4f}\n"
                     f"taps from {M.min():.3f} to {M.max():.3f}", fontsize=9.5)
        ax.set_xlim(-reach, reach)
        ax.set_ylim(reach, -reach)
        ax.axhline(0, color="0.8", lw=0.5)
        ax.axvline(0, color="0.8", lw=0.5)
        ax.add_patch(plt.Rectangle((-1.5, -1.5), 3, 3, fill=False, ec="0.4", lw=0.8, ls="--"))
    fig.supxlabel("offset from the kernel centre, in low-res pixels (both axes)", fontsize=10)
    cbar = fig.colorbar(im, ax=axes, shrink=0.8, label="tap value (one scale for all panels; signed square-root colour map)")
    cbar.set_ticks([-0.3, -0.1, -0.03, -0.01, 0, 0.01, 0.03, 0.1, 0.3])
    fig.suptitle("A 3×3 kernel resized for s = 2 (coef='mass'). Each tap drawn as a square of its pixel: "
                 "1 low-res pixel = 2 high-res pixels.\nDashed: the original 3×3 footprint. "
                 "Same sum everywhere (T4); the resized taps are ≈ 1/s² = ¼ as large.", fontsize=10.5)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    print_tables()
    panels = kernel_panels()
    print_kernel_table(panels)
    plot_frequency_response(DOCS / "frequency_response.png")
    plot_kernels(DOCS / "kernel_resize.png", panels)
    print(f"\nwrote {DOCS / 'frequency_response.png'} and {DOCS / 'kernel_resize.png'}")


if __name__ == "__main__":
    main()
