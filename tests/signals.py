"""Test signals and reference operators: periodic convolutions, upsamplers on the cell grid,
band-limited trigonometric inputs evaluated exactly at any position (float64 throughout)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kernelscale.transforms import interpolation_kernel

EPS64 = np.finfo(np.float64).eps


def periodic_upsample_matrix(n: int, s: int, mode: str) -> np.ndarray:
    """U_s ``(n·s, n)`` on a periodic row of cells: x'[j] = Σ_i φ(p_j − i) x[i mod n],
    p_j = (j + ½)/s − ½ (align_corners=False). Commutes with integer low-res shifts."""
    phi = interpolation_kernel(mode)
    p = (np.arange(n * s) + 0.5) / s - 0.5
    u = np.zeros((n * s, n))
    reach = 4
    for j, pj in enumerate(p):
        for i in range(int(np.floor(pj)) - reach, int(np.floor(pj)) + reach + 1):
            u[j, i % n] += phi(np.array(pj - i))
    return u


def circular_conv(x: torch.Tensor, kernel: torch.Tensor, padding: int, dilation: int = 1) -> torch.Tensor:
    """PyTorch cross-correlation of ``x (N, C, L)`` with circular padding ``padding`` on both sides."""
    d = kernel.ndim - 2
    pad = (padding, padding) * d
    xp = F.pad(x, pad, mode="circular") if padding else x
    conv = {1: F.conv1d, 2: F.conv2d}[d]
    return conv(xp, kernel, dilation=dilation)


class TrigSignal:
    """A real periodic signal of period ``n`` low-res cells, band-limited to frequencies
    ``f/n`` with integer ``|f| ≤ f_max`` (cycles per low-res cell); evaluated exactly anywhere.
    Low-res cell i sits at position i (its centre), so position p is in cell units."""

    def __init__(self, n: int, f_max: int, rng: np.random.Generator):
        self.n = n
        self.freqs = np.arange(0, f_max + 1)
        self.a = rng.standard_normal(self.freqs.size)
        self.b = rng.standard_normal(self.freqs.size)
        self.b[0] = 0.0

    def __call__(self, p: np.ndarray) -> np.ndarray:
        arg = 2 * np.pi * np.multiply.outer(p, self.freqs) / self.n
        return np.cos(arg) @ self.a + np.sin(arg) @ self.b

    def filtered(self, kernel: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Σ_t K[t]·x(p + t): the low-res correlation with odd ``kernel``, evaluated at any p
        (for the ideal upsampler this is exactly U conv(x, K) sampled at p)."""
        offsets = np.arange(kernel.size) - (kernel.size - 1) / 2
        return sum(k * self(p + t) for k, t in zip(kernel, offsets))


def hires_positions(n: int, s: int) -> np.ndarray:
    """Low-res positions of the n·s high-res cell centres: (j + ½)/s − ½."""
    return (np.arange(n * s) + 0.5) / s - 0.5


def hires_correlate(signal: TrigSignal, kernel_new: np.ndarray, n: int, s: int) -> np.ndarray:
    """conv(U x, K') on the high-res grid for the ideal U: Σ_u K'[u]·x(p_j + u/s)."""
    p = hires_positions(n, s)
    offsets = np.arange(kernel_new.size) - (kernel_new.size - 1) / 2
    return sum(k * signal(p + u / s) for k, u in zip(kernel_new, offsets))
