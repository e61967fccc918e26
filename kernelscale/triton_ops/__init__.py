"""Triton kernels applying a resize matrix R to every kernel slice (DESIGN §3, §7).

- :func:`apply_dense_triton` — one dense map ``(N, K_in) → (N, K_out)`` for small kernels
  (``K_in ≤ 64``, ``K_out ≤ 256``: a 3×3 kernel to 7×7, 11×11 or 15×15; 2×2×2 to 5×5×5).
- :func:`apply_separable_triton` — ``A · x[n] · Bᵀ`` over ``(N, H, W)`` planes, for grids
  (a Linear over a 64×64 image) and long 1-D kernels (``H = 1``: a 256-tap STFT kernel to 512).

Both take R with the coefficient folded in, accumulate in float32, fuse the output cast into the
store and read strided input in place. They equal :mod:`kernelscale.apply_torch` to within one
rounding of the output dtype; ``tests/test_triton_ops.py`` checks that under ``TRITON_INTERPRET=1``.

Importing this package does not import triton: the kernels load on first use, so
:func:`triton_available` can say why they cannot run instead of failing at import. Triton reads
``TRITON_INTERPRET`` when a kernel module is first imported, so set it before the first call.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch

__all__ = [
    "DENSE_MAX_IN",
    "DENSE_MAX_OUT",
    "SEPARABLE_MAX_ROWS",
    "apply_dense_triton",
    "apply_separable_triton",
    "interpret_mode",
    "triton_available",
]

# Kernel limits, here so callers can check them without importing triton. The dense kernel keeps
# a (rows × K_out) fp32 accumulator in registers and unrolls the K_in taps; the separable kernel
# holds T = x·Bᵀ for the shorter side of the plane.
DENSE_MAX_IN = 64
DENSE_MAX_OUT = 256
SEPARABLE_MAX_ROWS = 256

_SUPPORTED_INPUT = (torch.float16, torch.bfloat16, torch.float32)
# The values triton's own getenv_bool treats as true.
_TRUE = {"1", "true", "on", "yes"}


@functools.lru_cache(maxsize=None)
def _import_error() -> Optional[str]:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # a broken install raises more than ImportError
        return f"triton is not importable ({type(exc).__name__}: {exc})"
    return None


def interpret_mode() -> bool:
    """True when ``TRITON_INTERPRET`` asks triton to run kernels on the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


def triton_available(x: Optional[torch.Tensor] = None) -> tuple[bool, str]:
    """Whether the Triton kernels can run (on ``x`` when given), and why or why not.

    Not available when triton cannot be imported; when no CUDA device exists and
    ``TRITON_INTERPRET`` is not set; when ``x`` is not on a CUDA device (outside the
    interpreter); or when ``x`` is float64 (the kernels accumulate in float32).
    """
    error = _import_error()
    if error is not None:
        return False, error
    if x is not None and x.dtype not in _SUPPORTED_INPUT:
        return False, (
            f"tensor dtype {x.dtype} is not supported by the Triton kernels "
            "(float16/bfloat16/float32 in, float32 accumulation); the torch backend handles it"
        )
    if interpret_mode():
        return True, "TRITON_INTERPRET=1: the kernels run in the Triton interpreter"
    if not torch.cuda.is_available():
        return False, "no CUDA device and TRITON_INTERPRET is not set"
    if x is not None and not x.is_cuda:
        return False, f"tensor is on {x.device}, not a CUDA device (TRITON_INTERPRET is not set)"
    return True, "triton importable and the tensor is on a CUDA device"


def __getattr__(name: str):
    # PEP 562: the kernel modules (and triton with them) load on first use.
    if name == "apply_dense_triton":
        from kernelscale.triton_ops.dense import apply_dense_triton

        return apply_dense_triton
    if name == "apply_separable_triton":
        from kernelscale.triton_ops.separable import apply_separable_triton

        return apply_separable_triton
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
