"""Pure-torch application of a resize matrix R to a batch of kernel slices (DESIGN §3, §7).

This is the reference every other backend must equal, and the CPU default. Both functions take
R with the coefficient already folded in, accumulate in float32 (float64 for float64 input) and
round once, at the end, to ``out_dtype`` (DESIGN §6: fp16/bf16 computed in fp32, rounded once).

Never imports triton or ``kernelscale.triton_ops``: dispatch is the only module that sees both.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from kernelscale.errors import InvalidOptionError

_FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# On CPU the float32 intermediate of a whole SD-sized tensor (1280·1280 slices × 49 taps, 320 MB)
# falls out of cache; blocks keep it in L2 and made 3×3 → 7×7 on 1280×1280 fp16 2.5× faster
# (295 → 118 ms, 2 cores). The block is sized by the taps: about CPU_BLOCK_BYTES of intermediate,
# at most CPU_BLOCK_ROWS rows. Measured (640·1280 fp16 slices, one thread, CPU time): 7×7 taps
# 60 ms at 16384 and 4096 rows, 67 at 2048; 11×11 (cubic) 229 ms at 16384 rows, 158 at 4096,
# 153 at 2048, 163 at 1024: a fixed 16384 rows cost the cubic conversion a third more CPU.
CPU_BLOCK_BYTES = 2 << 20
CPU_BLOCK_ROWS = 16384


def _cpu_block_rows(k_out: int, compute: torch.dtype) -> int:
    """Rows per block for a ``k_out``-tap product: about CPU_BLOCK_BYTES of ``compute`` values."""
    itemsize = torch.empty((), dtype=compute).element_size()
    return max(256, min(CPU_BLOCK_ROWS, CPU_BLOCK_BYTES // max(1, k_out * itemsize)))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_dtypes(x: torch.Tensor, out_dtype: torch.dtype, what: str) -> None:
    if x.dtype not in _FLOATING:
        raise InvalidOptionError(f"{what}: input dtype {x.dtype} is not one of float16/bfloat16/float32/float64")
    if out_dtype not in _FLOATING:
        raise InvalidOptionError(f"{what}: out_dtype {out_dtype} is not one of float16/bfloat16/float32/float64")


def _check_matrix(matrix: torch.Tensor, k_in: int, what: str, role: str) -> None:
    if matrix.ndim != 2 or matrix.shape[1] != k_in:
        raise InvalidOptionError(
            f"{what}: {role} has shape {tuple(matrix.shape)}, expected (k_out, {k_in}) to match the input"
        )


def check_out(out: object, shape: Sequence[int], out_dtype: torch.dtype, device: torch.device, what: str) -> None:
    """InvalidOptionError naming ``what`` unless ``out`` is a contiguous tensor of ``shape`` and
    ``out_dtype`` on ``device``: the one check of every ``out=`` a result is written into."""
    shape = tuple(shape)
    if not isinstance(out, torch.Tensor):
        raise InvalidOptionError(f"{what}: out is a {type(out).__name__}, expected a contiguous {shape} {out_dtype} tensor on {device}")
    if out.dtype != out_dtype or tuple(out.shape) != shape or out.device != device or not out.is_contiguous():
        raise InvalidOptionError(
            f"{what}: out is a {'contiguous' if out.is_contiguous() else 'strided'} {tuple(out.shape)} {out.dtype} tensor on "
            f"{out.device}, expected a contiguous {shape} {out_dtype} tensor on {device}"
        )


def apply_dense_torch(x: torch.Tensor, matrix: torch.Tensor, out_dtype: torch.dtype,
                      out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Apply one dense map to every row: ``(N, K_in) → (N, K_out)``, ``y[n] = R · x[n]``.

    ``x`` may have any strides and dtype float16/bfloat16/float32/float64; ``matrix`` is R
    ``(K_out, K_in)`` with the coefficient folded in (float32, or float64 for float64 input; it
    is converted to the compute dtype if not). Computes ``x.to(compute) @ R.T`` with compute =
    float64 for float64 input, float32 otherwise, and casts once. Returns a contiguous
    ``(N, K_out)`` tensor of ``out_dtype`` on ``x``'s device: ``out`` when given (a contiguous
    tensor of that shape, dtype and device, written in place: the result is computed straight into
    it, block by block on CPU, with the same values as without it).
    """
    _check_dtypes(x, out_dtype, "apply_dense")
    if x.ndim != 2:
        raise InvalidOptionError(f"apply_dense: input has shape {tuple(x.shape)}, expected (N, K_in)")
    _check_matrix(matrix, x.shape[1], "apply_dense", "matrix")
    compute = _compute_dtype(x)
    r_t = matrix.to(device=x.device, dtype=compute).T
    n = x.shape[0]
    if out is not None:
        check_out(out, (n, r_t.shape[1]), out_dtype, x.device, "apply_dense")
    block = _cpu_block_rows(r_t.shape[1], compute)
    if x.device.type != "cpu" or n <= block:
        if out is None:
            return (x.to(compute) @ r_t).to(out_dtype).contiguous()
        return out.copy_(x.to(compute) @ r_t)
    if out is None:
        out = torch.empty(n, r_t.shape[1], dtype=out_dtype)
    buffer = torch.empty(block, r_t.shape[1], dtype=compute)
    for start in range(0, n, block):
        stop = min(n, start + block)
        torch.matmul(x[start:stop].to(compute), r_t, out=buffer[: stop - start])
        out[start:stop].copy_(buffer[: stop - start])
    return out


def apply_separable_torch(
    x: torch.Tensor, row_matrix: torch.Tensor, col_matrix: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    """Apply a separable map to every plane: ``(N, H, W) → (N, H', W')``, ``y[n] = A · x[n] · Bᵀ``.

    ``row_matrix`` is A ``(H', H)``, ``col_matrix`` is B ``(W', W)``; the coefficient is folded
    into them. A 1-D signal is the case ``H = H' = 1`` (A is the 1×1 coefficient). Accumulates
    in float32 (float64 for float64 input), multiplying ``(A · x[n]) · Bᵀ`` in that order, and
    casts once. Returns a contiguous tensor of ``out_dtype``.
    """
    _check_dtypes(x, out_dtype, "apply_separable")
    if x.ndim != 3:
        raise InvalidOptionError(f"apply_separable: input has shape {tuple(x.shape)}, expected (N, H, W)")
    _check_matrix(row_matrix, x.shape[1], "apply_separable", "row_matrix")
    _check_matrix(col_matrix, x.shape[2], "apply_separable", "col_matrix")
    compute = _compute_dtype(x)
    a = row_matrix.to(device=x.device, dtype=compute)
    b = col_matrix.to(device=x.device, dtype=compute)
    return torch.matmul(torch.matmul(a, x.to(compute)), b.T).to(out_dtype).contiguous()
