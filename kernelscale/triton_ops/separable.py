"""Separable form: ``y[n] = A · x[n] · Bᵀ`` for every plane of ``(N, H, W)``.

For what the dense kernel cannot hold: a Linear over a flattened 64×64 image (64×64 → 128×128
per row of the weight, R would be 16384×4096 dense but is A ⊗ B), and long 1-D kernels such as
a 256-tap STFT filter resized to 512 taps (``H = H' = 1``, A is the 1×1 coefficient).

Two kernels, both on ``tl.dot`` with ``input_precision="ieee"`` (plain float32 FMAs; the default
would use TF32 on Ampere+ and lose 13 bits):

- ``_separable_plane_kernel``: one plane per program along axis 0, a block of W' columns along
  axis 1. It forms ``T = x[n] · Bᵀ[:, block]`` (all H rows, reduction over W in chunks), then
  ``A · T`` one block of H' rows at a time, and stores with the cast fused in. The launcher
  transposes the problem (through strides, no copy) so that the rows held are the shorter side.
- ``_separable_line_kernel``: ``H = H' = 1``; a block of signals per program along axis 0 is a
  plain ``(N, W) · (a·B)ᵀ`` product, so signals are batched instead of padding H to 16.

Limit: ``min(H, W) ≤ 256`` (T has to fit in registers); larger planes go to the torch backend.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernelscale.errors import InvalidOptionError
from kernelscale.triton_ops import SEPARABLE_MAX_ROWS
from kernelscale.triton_ops.utils import DOT_MIN, block_for, check_tensor_args, stage_matrix

# T = x·Bᵀ stays in registers: ≤ 4096 fp32 values (32 per thread at 4 warps) leaves room for the
# x chunk, the Bᵀ chunk and the output tile. With H = 64 that is a 64-column block of W'.
# Register arithmetic, not yet timed on a GPU (none in this session).
_PLANE_BUDGET = 4096
_MAX_BLOCK_W_OUT = 128
# Reduction chunk over W and output tile over H': 32 keeps each operand tile ≤ 8 KiB of fp32.
_BLOCK_W = 32
_BLOCK_H_OUT = 32
# Line kernel: 64 signals × 64 output taps per program (same 4096-value accumulator).
_LINE_BLOCK_ROWS = 64
_LINE_BLOCK_W_OUT = 64
_NUM_WARPS = 4


@triton.jit
def _separable_plane_kernel(
    X_ptr,
    X_plane_stride,
    X_row_stride,
    X_col_stride,
    A_ptr,
    B_ptr,
    Y_ptr,
    Y_plane_stride,
    Y_row_stride,
    Y_col_stride,
    H,
    W,
    H_OUT,
    W_OUT,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_H_OUT: tl.constexpr,
    BLOCK_W_OUT: tl.constexpr,
):
    plane = tl.program_id(0).to(tl.int64)
    h = tl.arange(0, BLOCK_H)
    wo = tl.program_id(1) * BLOCK_W_OUT + tl.arange(0, BLOCK_W_OUT)
    h_mask = h < H
    wo_mask = wo < W_OUT
    x_plane = X_ptr + plane * X_plane_stride

    # T = x[n] · Bᵀ[:, wo]: rows past H load as 0, so T's padding rows are 0 too.
    t = tl.zeros((BLOCK_H, BLOCK_W_OUT), dtype=tl.float32)
    for w0 in range(0, W, BLOCK_W):
        w = w0 + tl.arange(0, BLOCK_W)
        w_mask = w < W
        x = tl.load(
            x_plane + h[:, None] * X_row_stride + w[None, :] * X_col_stride,
            mask=h_mask[:, None] & w_mask[None, :],
            other=0.0,
        ).to(tl.float32)
        b_t = tl.load(B_ptr + wo[None, :] * W + w[:, None], mask=w_mask[:, None] & wo_mask[None, :], other=0.0)
        t = tl.dot(x, b_t, t, input_precision="ieee")

    y_plane = Y_ptr + plane * Y_plane_stride
    for ho0 in range(0, H_OUT, BLOCK_H_OUT):
        ho = ho0 + tl.arange(0, BLOCK_H_OUT)
        ho_mask = ho < H_OUT
        a = tl.load(A_ptr + ho[:, None] * H + h[None, :], mask=ho_mask[:, None] & h_mask[None, :], other=0.0)
        y = tl.dot(a, t, input_precision="ieee")
        tl.store(
            y_plane + ho[:, None] * Y_row_stride + wo[None, :] * Y_col_stride,
            y.to(Y_ptr.dtype.element_ty),
            mask=ho_mask[:, None] & wo_mask[None, :],
        )


@triton.jit
def _separable_line_kernel(
    X_ptr,
    X_row_stride,
    X_col_stride,
    B_ptr,
    Y_ptr,
    Y_row_stride,
    Y_col_stride,
    n_rows,
    W,
    W_OUT,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_W_OUT: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)).to(tl.int64)
    wo = tl.program_id(1) * BLOCK_W_OUT + tl.arange(0, BLOCK_W_OUT)
    row_mask = rows < n_rows
    wo_mask = wo < W_OUT

    acc = tl.zeros((BLOCK_ROWS, BLOCK_W_OUT), dtype=tl.float32)
    for w0 in range(0, W, BLOCK_W):
        w = w0 + tl.arange(0, BLOCK_W)
        w_mask = w < W
        x = tl.load(
            X_ptr + rows[:, None] * X_row_stride + w[None, :] * X_col_stride,
            mask=row_mask[:, None] & w_mask[None, :],
            other=0.0,
        ).to(tl.float32)
        b_t = tl.load(B_ptr + wo[None, :] * W + w[:, None], mask=w_mask[:, None] & wo_mask[None, :], other=0.0)
        acc = tl.dot(x, b_t, acc, input_precision="ieee")

    tl.store(
        Y_ptr + rows[:, None] * Y_row_stride + wo[None, :] * Y_col_stride,
        acc.to(Y_ptr.dtype.element_ty),
        mask=row_mask[:, None] & wo_mask[None, :],
    )


def _launch_plane(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, y: torch.Tensor) -> None:
    n, h, w = x.shape
    h_out, w_out = y.shape[1], y.shape[2]
    block_h = block_for(h, DOT_MIN)
    block_w = min(_BLOCK_W, block_for(w, DOT_MIN))
    block_w_out = min(max(DOT_MIN, _PLANE_BUDGET // block_h), _MAX_BLOCK_W_OUT, block_for(w_out, DOT_MIN))
    block_h_out = min(_BLOCK_H_OUT, block_for(h_out, DOT_MIN))
    grid = (n, triton.cdiv(w_out, block_w_out))
    _separable_plane_kernel[grid](
        x, x.stride(0), x.stride(1), x.stride(2),
        a, b,
        y, y.stride(0), y.stride(1), y.stride(2),
        h, w, h_out, w_out,
        BLOCK_H=block_h,
        BLOCK_W=block_w,
        BLOCK_H_OUT=block_h_out,
        BLOCK_W_OUT=block_w_out,
        num_warps=_NUM_WARPS,
    )  # fmt: skip


def _launch_line(x: torch.Tensor, b: torch.Tensor, y: torch.Tensor) -> None:
    n, _, w = x.shape
    w_out = y.shape[2]
    block_rows = min(_LINE_BLOCK_ROWS, block_for(n, DOT_MIN))
    block_w = min(_BLOCK_W, block_for(w, DOT_MIN))
    block_w_out = min(_LINE_BLOCK_W_OUT, block_for(w_out, DOT_MIN))
    grid = (triton.cdiv(n, block_rows), triton.cdiv(w_out, block_w_out))
    _separable_line_kernel[grid](
        x, x.stride(0), x.stride(2),
        b,
        y, y.stride(0), y.stride(2),
        n, w, w_out,
        BLOCK_ROWS=block_rows,
        BLOCK_W=block_w,
        BLOCK_W_OUT=block_w_out,
        num_warps=_NUM_WARPS,
    )  # fmt: skip


def apply_separable_triton(
    x: torch.Tensor, row_matrix: torch.Tensor, col_matrix: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    """Apply ``A · x[n] · Bᵀ`` to every plane: ``(N, H, W) → (N, H', W')``, twin of ``apply_separable_torch``.

    ``x``: float16/bfloat16/float32, any strides (read in place). ``row_matrix`` A ``(H', H)`` and
    ``col_matrix`` B ``(W', W)`` carry the coefficient and are staged as float32. Accumulates in
    float32, rounds once to ``out_dtype`` in the store; returns a contiguous tensor.
    Requires ``min(H, W) ≤ 256``.
    """
    what = "apply_separable_triton"
    check_tensor_args(x, out_dtype, 3, "(N, H, W)", what)
    n, h, w = x.shape
    a = stage_matrix(row_matrix, h, x.device, "row_matrix", what)
    b = stage_matrix(col_matrix, w, x.device, "col_matrix", what)
    h_out, w_out = a.shape[0], b.shape[0]
    y = torch.empty((n, h_out, w_out), dtype=out_dtype, device=x.device)
    if y.numel() == 0 or h == 0 or w == 0:
        return y.zero_()
    if min(h, w) > SEPARABLE_MAX_ROWS:
        raise InvalidOptionError(
            f"{what}: planes of {h}×{w}; the separable kernel holds the shorter side in registers "
            f"and takes min(H, W) ≤ {SEPARABLE_MAX_ROWS} — use backend='torch'"
        )
    # Hold the shorter side: (A x Bᵀ)ᵀ = B xᵀ Aᵀ, so swap the roles through strides (no copy).
    xs, ys = (x.transpose(1, 2), y.transpose(1, 2)) if h > w else (x, y)
    if h > w:
        a, b = b, a
    if xs.shape[1] == 1 and ys.shape[1] == 1:
        # Fold the 1×1 row factor into B (a (W', W) copy, tiny) and batch signals as rows.
        _launch_line(xs, (b * a[0, 0]).contiguous(), ys)
    else:
        _launch_plane(xs, a, b, ys)
    return y
