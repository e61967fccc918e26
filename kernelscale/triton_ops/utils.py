"""Launch helpers shared by the Triton kernels: argument checks, matrix staging, block sizes."""

from __future__ import annotations

import torch
import triton

from kernelscale.errors import BackendUnavailableError, InvalidOptionError

SUPPORTED_IN = (torch.float16, torch.bfloat16, torch.float32)
SUPPORTED_OUT = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# tl.dot needs every tile dimension ≥ 16 (the MMA / FMA-dot tile minimum).
DOT_MIN = 16


def check_tensor_args(x: torch.Tensor, out_dtype: torch.dtype, ndim: int, shape_doc: str, what: str) -> None:
    """Reject what the kernels cannot take with an error that says what would work instead."""
    if x.dtype == torch.float64:
        raise BackendUnavailableError(
            f"{what}: float64 input {tuple(x.shape)} is not supported by the Triton kernels "
            "(they accumulate in float32); use backend='torch'"
        )
    if x.dtype not in SUPPORTED_IN:
        raise InvalidOptionError(f"{what}: input dtype {x.dtype} is not one of float16/bfloat16/float32")
    if out_dtype not in SUPPORTED_OUT:
        raise InvalidOptionError(f"{what}: out_dtype {out_dtype} is not one of float16/bfloat16/float32/float64")
    if x.ndim != ndim:
        raise InvalidOptionError(f"{what}: input has shape {tuple(x.shape)}, expected {shape_doc}")


def stage_matrix(matrix: torch.Tensor, k_in: int, device: torch.device, role: str, what: str) -> torch.Tensor:
    """R ``(k_out, k_in)`` as a contiguous float32 tensor on ``device`` (a copy only when needed: R is tiny)."""
    if matrix.ndim != 2 or matrix.shape[1] != k_in:
        raise InvalidOptionError(
            f"{what}: {role} has shape {tuple(matrix.shape)}, expected (k_out, {k_in}) to match the input"
        )
    return matrix.to(device=device, dtype=torch.float32).contiguous()


def block_for(n: int, minimum: int = 1) -> int:
    """The power-of-two tile covering ``n`` taps (masks handle the rest), at least ``minimum``."""
    return max(minimum, triton.next_power_of_2(max(n, 1)))
