"""ScaleCrafter's dispersed convolution as a linear map R from the small kernel to the large one.

For a kernel K (``(k,)*d``) and a new kernel L (``(k_new,)*d``), both odd, the calibration loss
over every probe image x of size ``(m,)*d`` (zero padding, 'same' convolutions) is

    J(L) = Σ_x ‖conv(U x, L) − U conv(x, K)‖² + η²·‖conv(x, L) − conv(x, K)‖²

where U is linear interpolation to ``(m−1)·s + 1`` samples per axis (corner-aligned, as in
ScaleCrafter): a structure-level term (the large kernel on the upsampled probe should give the
upsampled response) and an η-weighted pixel-level term (on the original probe it should still
act like K). "Every x" means the identity basis of probes, so J is a Frobenius norm of operator
differences and quadratic in L; its minimiser is linear in K: vec L* = R·vec K with

    R = argmin_R ‖[P₁; η·P₂]·R − [Q₁; η·Q₂]‖_F

(P: L's taps → responses, Q: K's taps → target responses). Non-separable: R is dense,
``(k_new^d, k^d)``. ``relative_loss`` is √J(R) over √J(0), the fraction of the target operator
the best L cannot reproduce — the same for every K only in the Frobenius (all-kernels) sense.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field

import numpy as np

from kernelscale.errors import InvalidOptionError

DEFAULT_PROBE = 7
DEFAULT_ETA = 0.05


@dataclass(frozen=True)
class DisperseSystem:
    """The least-squares system of the calibration: ``J(l; κ) = ‖A·l − B·κ‖²``."""

    a: np.ndarray = field(repr=False)  # [P₁; η·P₂], (rows, k_new^d)
    b: np.ndarray = field(repr=False)  # [Q₁; η·Q₂], (rows, k^d)

    def loss(self, new_kernel: np.ndarray, kernel: np.ndarray) -> float:
        """J(L) for flattened kernels L ``(k_new^d,)`` and K ``(k^d,)``."""
        residual = self.a @ new_kernel.reshape(-1) - self.b @ kernel.reshape(-1)
        return float(residual @ residual)


def _check(k: int, k_new: int, scale: float, probe: int, eta: float, ndim: int) -> int:
    if not float(scale).is_integer() or scale < 1:
        raise InvalidOptionError(f"method 'disperse' needs an integer scale >= 1, got {scale!r}")
    if k % 2 == 0 or k_new % 2 == 0:
        raise InvalidOptionError(f"method 'disperse' needs odd kernel sizes, got {k} -> {k_new}")
    if probe < k or probe < 2:
        raise InvalidOptionError(f"disperse probe size must be >= the kernel size {k}, got {probe!r}")
    if not np.isfinite(eta) or eta < 0:
        raise InvalidOptionError(f"disperse eta must be finite and >= 0, got {eta!r}")
    if ndim not in (1, 2, 3):
        raise InvalidOptionError(f"disperse works on 1 to 3 spatial axes, got {ndim}")
    return int(scale)


@functools.lru_cache(maxsize=64)
def disperse_system(k: int, k_new: int, scale: float, probe: int = DEFAULT_PROBE, eta: float = DEFAULT_ETA, ndim: int = 2) -> DisperseSystem:
    """Build the calibration's least-squares system (float64), cached per argument set."""
    import torch
    import torch.nn.functional as F

    s = _check(k, k_new, scale, probe, eta, ndim)
    hi = (probe - 1) * s + 1
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[ndim]
    interp_mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[ndim]
    n_probe = probe**ndim

    def upsample(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(hi,) * ndim, mode=interp_mode, align_corners=True)

    def tap_responses(images: torch.Tensor, size: int) -> torch.Tensor:
        """conv(image, e_t) for every tap t of a size^d kernel: (n_probe, taps, *spatial)."""
        taps = torch.eye(size**ndim, dtype=torch.float64).reshape(size**ndim, 1, *(size,) * ndim)
        return conv(images, taps, padding=(size - 1) // 2)

    def as_matrix(responses: torch.Tensor) -> np.ndarray:
        taps = responses.shape[1]
        return responses.movedim(1, -1).reshape(-1, taps).numpy()

    probes = torch.eye(n_probe, dtype=torch.float64).reshape(n_probe, 1, *(probe,) * ndim)
    structure_new = as_matrix(tap_responses(upsample(probes), k_new))
    low_k = tap_responses(probes, k)
    structure_target = as_matrix(upsample(low_k.reshape(-1, 1, *(probe,) * ndim)).reshape(n_probe, k**ndim, *(hi,) * ndim))
    pixel_new = as_matrix(tap_responses(probes, k_new))
    pixel_target = as_matrix(low_k)
    a = np.concatenate([structure_new, eta * pixel_new])
    b = np.concatenate([structure_target, eta * pixel_target])
    return DisperseSystem(a, b)


@functools.lru_cache(maxsize=64)
def disperse_matrix(k: int, k_new: int, scale: float, probe: int = DEFAULT_PROBE, eta: float = DEFAULT_ETA, ndim: int = 2) -> tuple[np.ndarray, float]:
    """R ``(k_new^d, k^d)`` minimising the calibration loss for every K, and its relative loss.

    With η → ∞ the pixel term dominates and L → K zero-padded to k_new; with η → 0 only the
    structure term remains (the minimum-norm least-squares solution when it is rank-deficient).
    """
    system = disperse_system(k, k_new, scale, probe, eta, ndim)
    matrix, relative = _solve_on_one_thread(system.a, system.b)
    if not (np.isfinite(matrix).all() and np.isfinite(relative)):
        raise InvalidOptionError(f"method 'disperse' ({k} -> {k_new} taps, scale {scale:g}, probe {probe}, eta {eta!r}): "
                                 "the calibration has no finite solution; use a smaller eta")
    matrix.flags.writeable = False
    return matrix, relative


_ONE_THREAD = threading.Lock()


def _solve_on_one_thread(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    """The minimum-norm least-squares solution X of ``a·X ≈ b`` (LAPACK gelsd, rcond = ε·max(rows,
    cols), as numpy.linalg.lstsq) and ‖a·X − b‖_F / ‖b‖_F, both computed on one thread.

    Why: a threaded BLAS splits the products inside the solve and the residual differently for
    different thread counts, and the last bits of R and of the manifest's relative_loss changed
    between OMP_NUM_THREADS=1 and 2 (e.g. 0.20153534182021912 vs …915 for 3 → 11 at scale 3), so a
    conversion's bytes depended on the machine's cores (DESIGN §6: deterministic). One thread
    (torch's, which also sets MKL's) makes every summation order fixed."""
    import torch

    with _ONE_THREAD:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            a_t, b_t = torch.from_numpy(a), torch.from_numpy(b)
            solution = torch.linalg.lstsq(a_t, b_t, rcond=float(np.finfo(np.float64).eps) * max(a.shape), driver="gelsd").solution
            residual = a_t @ solution - b_t
            relative = float(torch.linalg.norm(residual) / torch.linalg.norm(b_t))
            matrix = np.ascontiguousarray(solution.numpy())
        finally:
            torch.set_num_threads(before)
    return matrix, relative
