"""Choose the backend that applies R, and say why (DESIGN §7).

Order of precedence: the ``backend`` argument, then the ``KERNELSCALE_BACKEND`` environment
variable (``torch``, ``triton`` or ``auto``), then ``auto``: Triton for CUDA tensors when triton
can be imported, torch otherwise. Forcing Triton where it cannot run raises
:class:`~kernelscale.errors.BackendUnavailableError` with the reason; it never falls back silently.

This is the only module that imports both :mod:`kernelscale.apply_torch` and
:mod:`kernelscale.triton_ops`; the latter loads triton lazily, so CPU-only use never imports it.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from kernelscale import triton_ops
from kernelscale.apply_torch import apply_dense_torch, apply_separable_torch
from kernelscale.backends import BACKENDS, ENV_VAR
from kernelscale.errors import BackendUnavailableError, InvalidOptionError



def _requested(backend: Optional[str]) -> tuple[str, str]:
    """The backend asked for (``torch``/``triton``/``auto``) and where the request came from."""
    if backend is not None:
        value, source = backend, "the backend argument"
    elif os.environ.get(ENV_VAR, "").strip():
        value, source = os.environ[ENV_VAR], ENV_VAR
    else:
        return "auto", "default"
    name = value.strip().lower() if isinstance(value, str) else value
    if name not in BACKENDS:
        raise InvalidOptionError(f"unknown backend {value!r} (from {source}); expected one of torch, triton, auto")
    return name, source


def _select(x: torch.Tensor, backend: Optional[str]) -> tuple[str, str, bool]:
    name, source = _requested(backend)
    if name == "torch":
        return "torch", f"torch requested by {source}", True
    if name == "triton":
        ok, why = triton_ops.triton_available(x)
        if not ok:
            raise BackendUnavailableError(f"triton backend requested by {source} cannot run: {why}")
        return "triton", f"triton requested by {source} ({why})", True
    # auto: decide on the device first so that CPU work never imports triton.
    if not x.is_cuda:
        return "torch", f"auto: tensor is on {x.device}, not CUDA", False
    ok, why = triton_ops.triton_available(x)
    if not ok:
        return "torch", f"auto: {why}", False
    return "triton", f"auto: tensor on {x.device} and triton available", False


def select_backend(x: torch.Tensor, backend: Optional[str] = None) -> tuple[str, str]:
    """Return ``("torch" | "triton", reason)`` for applying R to ``x``.

    Raises :class:`InvalidOptionError` for an unknown backend name and
    :class:`BackendUnavailableError` when Triton is forced but cannot run on ``x``.
    """
    chosen, reason, _ = _select(x, backend)
    return chosen, reason


def apply_dense(
    x: torch.Tensor, matrix: torch.Tensor, out_dtype: torch.dtype, backend: Optional[str] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``(N, K_in) → (N, K_out)``, ``y[n] = R · x[n]``, on the selected backend (see ``apply_dense_torch``),
    into ``out`` when given (a contiguous ``(N, K_out)`` tensor of ``out_dtype``).

    The Triton kernel takes ``K_in ≤ 64`` and ``K_out ≤ 256``: under ``auto`` a larger R runs on
    torch; with Triton forced it raises :class:`InvalidOptionError`.
    """
    chosen, _, forced = _select(x, backend)
    fits = matrix.ndim == 2 and matrix.shape[1] <= triton_ops.DENSE_MAX_IN and matrix.shape[0] <= triton_ops.DENSE_MAX_OUT
    if chosen == "triton" and (fits or forced):
        from kernelscale.triton_ops.dense import apply_dense_triton

        result = apply_dense_triton(x, matrix, out_dtype)
        return result if out is None else out.copy_(result)
    return apply_dense_torch(x, matrix, out_dtype, out=out)


def apply_separable(
    x: torch.Tensor,
    row_matrix: torch.Tensor,
    col_matrix: torch.Tensor,
    out_dtype: torch.dtype,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """``(N, H, W) → (N, H', W')``, ``y[n] = A · x[n] · Bᵀ``, on the selected backend.

    The Triton kernel takes ``min(H, W) ≤ 256``: under ``auto`` larger planes run on torch;
    with Triton forced it raises :class:`InvalidOptionError`.
    """
    chosen, _, forced = _select(x, backend)
    fits = x.ndim == 3 and min(x.shape[1], x.shape[2]) <= triton_ops.SEPARABLE_MAX_ROWS
    if chosen == "triton" and (fits or forced):
        from kernelscale.triton_ops.separable import apply_separable_triton

        return apply_separable_triton(x, row_matrix, col_matrix, out_dtype)
    return apply_separable_torch(x, row_matrix, col_matrix, out_dtype)
