"""Dense small-kernel form: ``y[n] = R · x[n]`` for every row of ``(N, K_in)``, R ``(K_out, K_in)``.

The hot path of a checkpoint conversion: every 3×3 slice of a conv weight becomes a 7×7 (linear
taps, R = 49×9) or 11×11 one. Reading 9 taps and writing 49 per slice, the kernel is bound by
memory traffic, not arithmetic (441 FMAs per 116 bytes at fp16), so it is written to stream rows:
each program takes a block of rows, keeps the ``(BLOCK_ROWS, K_out)`` accumulator in registers and
performs K_in rank-1 updates in IEEE float32 (no tensor cores, so no TF32).

Limits: ``K_in ≤ 64`` and ``K_out ≤ 256`` (the accumulator has to fit in registers; larger
kernels are separable and go to :mod:`kernelscale.triton_ops.separable`). The launcher raises
:class:`~kernelscale.errors.InvalidOptionError` outside them.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from kernelscale.errors import InvalidOptionError
from kernelscale.triton_ops import DENSE_MAX_IN, DENSE_MAX_OUT
from kernelscale.triton_ops.utils import block_for, check_tensor_args, stage_matrix

# Accumulator budget per program: 8192 fp32 values = 64 registers per thread at 4 warps, which
# leaves room for addresses and masks without spilling. For 3×3→7×7 (BLOCK_OUT = 64) that is
# 128 rows per program, i.e. 12.8k programs for a 1280×1280 conv. Chosen from the register
# arithmetic, not yet timed on a GPU: benchmarks/bench_kernels.py --device cuda measures it.
_ACC_BUDGET = 8192
_MIN_ROWS = 16
_MAX_ROWS = 128
_NUM_WARPS = 4


@triton.jit
def _dense_apply_kernel(
    X_ptr,
    X_row_stride,
    X_col_stride,
    RT_ptr,
    Y_ptr,
    n_rows,
    K_IN: tl.constexpr,
    K_OUT: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_OUT: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = rows < n_rows
    # int64 offsets: N·K_out passes 2**31 on the largest checkpoints.
    rows64 = rows.to(tl.int64)
    cols = tl.arange(0, BLOCK_OUT)
    col_mask = cols < K_OUT

    acc = tl.zeros((BLOCK_ROWS, BLOCK_OUT), dtype=tl.float32)
    # K_IN is a constexpr so the tap loop unrolls; each row of Rᵀ (a column of R) is loaded once
    # per program, contiguous, and the strided column of x comes from L1 after the first tap.
    for k in tl.static_range(K_IN):
        x_k = tl.load(X_ptr + rows64 * X_row_stride + k * X_col_stride, mask=row_mask, other=0.0)
        r_k = tl.load(RT_ptr + k * K_OUT + cols, mask=col_mask, other=0.0)
        acc += x_k.to(tl.float32)[:, None] * r_k[None, :]

    y_ptrs = Y_ptr + rows64[:, None] * K_OUT + cols[None, :]
    tl.store(y_ptrs, acc.to(Y_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


def default_block_rows(k_out: int, n_rows: int) -> int:
    """Rows per program: as many as the accumulator budget allows, within [16, 128] and ≤ n_rows' tile."""
    return min(_MAX_ROWS, max(_MIN_ROWS, _ACC_BUDGET // block_for(k_out)), block_for(n_rows))


def _launch_dense(x: torch.Tensor, r_t: torch.Tensor, y: torch.Tensor, block_rows: Optional[int] = None,
                  num_warps: int = _NUM_WARPS) -> None:
    """Launch over row blocks; ``block_rows`` (a power of two) and ``num_warps`` override the
    register-budget choice, for ``benchmarks/bench_kernels.py --sweep`` (results do not depend on
    them: every row is computed alone, taps in the same order)."""
    n_rows, k_in = x.shape
    k_out = y.shape[1]
    block_out = block_for(k_out)
    if block_rows is None:
        block_rows = default_block_rows(k_out, n_rows)
    grid = (triton.cdiv(n_rows, block_rows),)
    _dense_apply_kernel[grid](
        x,
        x.stride(0),
        x.stride(1),
        r_t,
        y,
        n_rows,
        K_IN=k_in,
        K_OUT=k_out,
        BLOCK_ROWS=block_rows,
        BLOCK_OUT=block_out,
        num_warps=num_warps,
    )


def apply_dense_triton(x: torch.Tensor, matrix: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """Apply R to every row: ``(N, K_in) → (N, K_out)``, the Triton twin of ``apply_dense_torch``.

    ``x``: float16/bfloat16/float32, any strides (read in place). ``matrix``: R ``(K_out, K_in)``
    with the coefficient folded in, staged as float32. Accumulates in float32 and rounds once to
    ``out_dtype`` (float16/bfloat16/float32/float64) in the store. Returns a contiguous tensor.
    Requires ``K_in ≤ 64`` and ``K_out ≤ 256``.
    """
    what = "apply_dense_triton"
    check_tensor_args(x, out_dtype, 2, "(N, K_in)", what)
    n_rows, k_in = x.shape
    r = stage_matrix(matrix, k_in, x.device, "matrix", what)
    k_out = r.shape[0]
    if k_in > DENSE_MAX_IN or k_out > DENSE_MAX_OUT or k_in == 0 or k_out == 0:
        raise InvalidOptionError(
            f"{what}: R is {k_out}×{k_in}; the dense kernel takes 1 ≤ K_in ≤ {DENSE_MAX_IN} and "
            f"1 ≤ K_out ≤ {DENSE_MAX_OUT} taps — use the separable form (apply_separable_triton) "
            "or backend='torch' for larger kernels"
        )
    y = torch.empty((n_rows, k_out), dtype=out_dtype, device=x.device)
    if n_rows == 0:
        return y
    _launch_dense(x, r.T.contiguous(), y)
    return y
