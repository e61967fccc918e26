"""Parity of the Triton kernels with the torch reference (DESIGN §7).

Without a GPU the kernels run on CPU tensors in the Triton interpreter (``TRITON_INTERPRET=1``,
set below before triton is imported: triton reads it when a kernel is decorated). With a CUDA
device and ``TRITON_INTERPRET`` unset the same tests run compiled kernels on the GPU.

Tolerance, derived rather than tuned. Both sides accumulate in float32 from the same exactly
converted inputs, in different orders, then round once to the output dtype.
- Accumulation: each fp32 result is within γ_K·S of the exact value (γ_K ≈ K·u, u = 2**-24,
  S = |x|·|R|ᵀ; K = K_in for dense, H + W and S = |A|·|x|·|B|ᵀ for separable), so the two fp32
  values v, v_ref differ by δ ≤ 2·γ_K·S.
- Output rounding: out = rd(v), ref = rn(v_ref). rn is round-to-nearest-even (torch, and the
  GPU store); the interpreter in triton 3.9 casts fp32→bf16 by truncation. Either way
  |out − ref| ≤ 1.5·ulp + δ, and out − ref is a whole number m of ulps: m ≤ 1 when δ < ulp/2,
  otherwise m·ulp ≤ ulp + 2δ. So |out − ref| ≤ ulp + 2δ ≤ rtol·|ref| + atol + 4·γ_K·S, where
  rtol·|ref| bounds one ulp of the output dtype (2**-10 for f16's 11-bit significand, 2**-7 for
  bf16's 8 bits, 0 for f32/f64 which are not rounded again) and atol is the spacing of the
  subnormals near 0 (f16: 2**-24; bf16 has fp32's exponent range: 2**-133).
"""

from __future__ import annotations

import os

import pytest
import torch

if not (torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"):
    os.environ["TRITON_INTERPRET"] = "1"
DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"

pytest.importorskip("triton", reason="triton is not importable: the Triton backend cannot be tested here")

from kernelscale import dispatch  # noqa: E402
from kernelscale.apply_torch import apply_dense_torch, apply_separable_torch  # noqa: E402
from kernelscale.errors import BackendUnavailableError, InvalidOptionError  # noqa: E402
from kernelscale.transforms import build_kernel_resize  # noqa: E402
from kernelscale.triton_ops import apply_dense_triton, apply_separable_triton  # noqa: E402

U32 = 2.0**-24
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

# (out dtype) → (rtol, atol): one ulp of the output dtype, relative; subnormal spacing near 0.
OUT_TOL = {
    torch.float32: (0.0, 0.0),
    torch.float64: (0.0, 0.0),
    torch.float16: (2.0**-10, 2.0**-24),
    torch.bfloat16: (2.0**-7, 2.0**-133),
}
DTYPE_PAIRS = [(i, o) for i in (F32, F16, BF16) for o in (F32, F16, BF16)]
PAIR_IDS = [f"{str(i)[6:]}->{str(o)[6:]}" for i, o in DTYPE_PAIRS]


def assert_within(out: torch.Tensor, ref: torch.Tensor, tol: torch.Tensor, what: str) -> None:
    """Elementwise |out − ref| ≤ tol; on failure name the first bad index and the count."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert out.dtype == ref.dtype, f"{what}: dtype {out.dtype} != {ref.dtype}"
    o, r = out.detach().cpu().double(), ref.detach().cpu().double()
    bad = ~((o - r).abs() <= tol.cpu())  # NaN counts as bad
    if bool(bad.any()):
        idx = tuple(bad.nonzero()[0].tolist())
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{bad.numel()} elements out of tolerance; first at {idx}: "
            f"got {o[idx].item()!r}, expected {r[idx].item()!r}, |diff| {abs(o[idx] - r[idx]).item():.3g} "
            f"> tol {tol[idx].item():.3g}"
        )


def _tolerance(ref: torch.Tensor, k: int, magnitude: torch.Tensor) -> torch.Tensor:
    rtol, atol = OUT_TOL[ref.dtype]
    return atol + rtol * ref.detach().cpu().double().abs() + 4 * k * U32 * magnitude.cpu().double()


def _rand(*shape: int, seed: int, dtype=F32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).to(DEVICE)


def _check_dense(x: torch.Tensor, r: torch.Tensor, out_dtype: torch.dtype, what: str) -> None:
    out = apply_dense_triton(x, r, out_dtype)
    assert out.is_contiguous() and out.device == x.device
    ref = apply_dense_torch(x, r, out_dtype)
    magnitude = x.double().abs() @ r.double().abs().T
    assert_within(out, ref, _tolerance(ref, x.shape[1], magnitude), what)


def _check_separable(x, a, b, out_dtype, what: str) -> None:
    out = apply_separable_triton(x, a, b, out_dtype)
    assert out.is_contiguous() and out.device == x.device
    ref = apply_separable_torch(x, a, b, out_dtype)
    magnitude = a.double().abs() @ x.double().abs() @ b.double().abs().T
    assert_within(out, ref, _tolerance(ref, x.shape[1] + x.shape[2], magnitude), what)


# Dense: odd tap counts masked up to powers of two; 9→49 is 3×3→7×7 (linear taps, s = 2).
DENSE_SHAPES = [(5, 9, 49), (7, 9, 25), (3, 3, 7), (4, 27, 64)]


@pytest.mark.parametrize("dtype_in, dtype_out", DTYPE_PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("n, k_in, k_out", DENSE_SHAPES)
def test_dense_parity(n, k_in, k_out, dtype_in, dtype_out):
    x = _rand(n, k_in, seed=n * 100 + k_in, dtype=dtype_in)
    r = _rand(k_out, k_in, seed=k_out)
    _check_dense(x, r, dtype_out, f"dense {n}×{k_in}→{k_out} {dtype_in}->{dtype_out}")


@pytest.mark.parametrize("dtype", [F32, F16, BF16])
def test_dense_real_resize_matrix_3x3_to_7x7(dtype):
    # 300 rows: several row blocks, the last one partial.
    r = torch.tensor(build_kernel_resize((3, 3), 2.0).dense(), dtype=F32, device=DEVICE)
    x = _rand(300, 9, seed=1, dtype=dtype)
    _check_dense(x, r, dtype, f"dense 3x3→7x7 {dtype}")


@pytest.mark.parametrize("layout", ["transposed", "every_other_row"])
@pytest.mark.parametrize("dtype_in, dtype_out", [(F32, F32), (F16, BF16), (BF16, F16)])
def test_dense_strided_input(layout, dtype_in, dtype_out):
    base = _rand(9, 23, seed=2, dtype=dtype_in)
    if layout == "transposed":
        x = base.T  # (23, 9) with strides (1, 23)
    else:  # odd rows are NaN: reading one would show up in the output
        x = torch.stack([base.T, torch.full_like(base.T, float("nan"))], 1).reshape(46, 9)[::2]
    assert not x.is_contiguous()
    _check_dense(x, _rand(49, 9, seed=3), dtype_out, f"dense strided {layout}")


def test_dense_float32_to_float64_output():
    _check_dense(_rand(5, 9, seed=4), _rand(49, 9, seed=5), torch.float64, "dense f32->f64")


def test_dense_empty_batch():
    out = apply_dense_triton(_rand(0, 9, seed=0), _rand(49, 9, seed=0), F16)
    assert out.shape == (0, 49) and out.dtype == F16


def test_dense_limits_raise_before_launch():
    with pytest.raises(InvalidOptionError, match=r"343×27.*K_out ≤ 256"):
        apply_dense_triton(_rand(2, 27, seed=0), _rand(343, 27, seed=0), F32)
    with pytest.raises(InvalidOptionError, match=r"K_in ≤ 64"):
        apply_dense_triton(_rand(2, 65, seed=0), _rand(7, 65, seed=0), F32)
    with pytest.raises(InvalidOptionError, match=r"\(49, 8\)"):
        apply_dense_triton(_rand(2, 9, seed=0), _rand(49, 8, seed=0), F32)


def test_float64_input_refused_with_reason():
    with pytest.raises(BackendUnavailableError, match="float64.*backend='torch'"):
        apply_dense_triton(_rand(2, 9, seed=0).double(), _rand(49, 9, seed=0).double(), torch.float64)
    with pytest.raises(BackendUnavailableError, match="float64"):
        apply_separable_triton(_rand(2, 3, 3, seed=0).double(), _rand(7, 3, seed=0), _rand(7, 3, seed=0), F32)


# Separable: a square grid, odd sizes, and a 256-tap 1-D kernel to 512 (H = H' = 1).
SEPARABLE_SHAPES = [(3, 8, 8, 16, 16), (2, 5, 7, 11, 13), (2, 1, 256, 1, 512)]


@pytest.mark.parametrize("dtype_in, dtype_out", DTYPE_PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("n, h, w, h_out, w_out", SEPARABLE_SHAPES)
def test_separable_parity(n, h, w, h_out, w_out, dtype_in, dtype_out):
    x = _rand(n, h, w, seed=n + h + w, dtype=dtype_in)
    a, b = _rand(h_out, h, seed=h_out), _rand(w_out, w, seed=w_out + 1)
    _check_separable(x, a, b, dtype_out, f"separable {n}×{h}×{w}→{h_out}×{w_out} {dtype_in}->{dtype_out}")


@pytest.mark.parametrize(
    "n, h, w, h_out, w_out",
    [(2, 13, 4, 6, 9), (2, 256, 1, 512, 1), (1, 64, 64, 128, 128), (40, 1, 20, 1, 33)],
    ids=["tall", "column-signal", "grid64", "many-signals"],
)
def test_separable_orientations_and_blocks(n, h, w, h_out, w_out):
    # Tall planes run transposed (through strides), H = 1 batches signals, 64×64 tiles W'.
    x = _rand(n, h, w, seed=7)
    _check_separable(x, _rand(h_out, h, seed=8), _rand(w_out, w, seed=9), BF16, f"separable {h}×{w}")


@pytest.mark.parametrize("layout", ["transposed", "every_other_row"])
@pytest.mark.parametrize("dtype_in, dtype_out", [(F32, F32), (BF16, F16)])
def test_separable_strided_input(layout, dtype_in, dtype_out):
    if layout == "transposed":
        x = _rand(3, 7, 5, seed=10, dtype=dtype_in).transpose(1, 2)  # (3, 5, 7)
    else:
        full = _rand(3, 10, 7, seed=10, dtype=dtype_in)
        full[:, 1::2] = float("nan")
        x = full[:, ::2]  # (3, 5, 7)
    assert not x.is_contiguous()
    _check_separable(x, _rand(11, 5, seed=11), _rand(13, 7, seed=12), dtype_out, f"separable strided {layout}")


def test_separable_limit_raises():
    with pytest.raises(InvalidOptionError, match=r"min\(H, W\) ≤ 256"):
        apply_separable_triton(_rand(1, 257, 257, seed=0), _rand(3, 257, seed=0), _rand(3, 257, seed=0), F32)


def test_dispatch_forced_triton_runs_the_kernel():
    # Bitwise equal to the direct kernel call: dispatch ran the Triton path, not torch.
    x, r = _rand(6, 9, seed=13, dtype=F16), _rand(49, 9, seed=14)
    chosen, reason = dispatch.select_backend(x, "triton")
    assert chosen == "triton", reason
    assert torch.equal(dispatch.apply_dense(x, r, F16, backend="triton"), apply_dense_triton(x, r, F16))
    x3, a, b = _rand(2, 5, 7, seed=15), _rand(11, 5, seed=16), _rand(13, 7, seed=17)
    assert torch.equal(
        dispatch.apply_separable(x3, a, b, F32, backend="triton"), apply_separable_triton(x3, a, b, F32)
    )


# Through the public resize functions: every method and mode, 1-D/2-D/3-D, grouped, transposed,
# long 1-D kernels and grids, each forced onto Triton and onto torch. The input/output dtype pair
# cycles through DTYPE_PAIRS (every pair is covered above on the primitives).
METHOD_MODES = [("interp", m) for m in ("nearest", "linear", "cubic", "lanczos3")] + [
    ("pinv", m) for m in ("nearest", "linear", "cubic", "lanczos3")
] + [("dilate", "linear"), ("disperse", "linear")]
CONV_SHAPES = {
    "conv1d": (3, 2, 5),
    "conv2d": (3, 2, 3, 3),
    "depthwise": (4, 1, 3, 3),  # groups = C: C_in/groups = 1
    "conv3d": (2, 1, 2, 2, 2),  # 8 → 125 taps: still the dense kernel
    "rect": (2, 2, 1, 5),
}
DISPERSE_SHAPES = {"conv1d", "conv2d", "depthwise"}  # dispersed convolution takes odd kernels
RESIZE_CASES = [(shape_id, method, mode) for method, mode in METHOD_MODES for shape_id in CONV_SHAPES
                if method != "disperse" or shape_id in DISPERSE_SHAPES]


def _resize_operator_matrix(shape, method, mode):
    from kernelscale.transforms import build_kernel_resize as build

    return torch.tensor(build(tuple(shape[2:]), 2.0, method, mode).dense(), dtype=torch.float64)


@pytest.mark.parametrize("shape_id, method, mode", RESIZE_CASES, ids=["-".join(c) for c in RESIZE_CASES])
def test_resize_kernel_parity_every_method_and_mode(shape_id, method, mode):
    from kernelscale.resize import resize_kernel

    shape = CONV_SHAPES[shape_id]
    case = RESIZE_CASES.index((shape_id, method, mode))
    dtype_in, dtype_out = DTYPE_PAIRS[case % len(DTYPE_PAIRS)]
    x = _rand(*shape, seed=case, dtype=dtype_in)
    out = resize_kernel(x, 2.0, method=method, mode=mode, out_dtype=dtype_out, backend="triton")
    ref = resize_kernel(x, 2.0, method=method, mode=mode, out_dtype=dtype_out, backend="torch")
    r = _resize_operator_matrix(shape, method, mode)
    slices = x.reshape(-1, r.shape[1]).double().abs().cpu()
    magnitude = (slices @ r.abs().T).reshape(ref.shape)
    assert_within(out, ref, _tolerance(ref, r.shape[1], magnitude), f"{shape_id} {method}/{mode} {dtype_in}->{dtype_out}")


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic", "lanczos3"])
@pytest.mark.parametrize("method", ["interp", "pinv"])
def test_resize_grid_linear_parity(method, mode):
    # A Linear over a flattened (2, 4, 6) grid, ×2 per axis: separable on (H, W) planes.
    from kernelscale.resize import resize_grid_linear
    from kernelscale.transforms import build_axis_resize

    case = ["interp", "pinv"].index(method) * 4 + ["nearest", "linear", "cubic", "lanczos3"].index(mode)
    dtype_in, dtype_out = DTYPE_PAIRS[(case * 5) % len(DTYPE_PAIRS)]
    x = _rand(3, 2 * 4 * 6, seed=100 + case, dtype=dtype_in)
    kwargs = dict(method=method, mode=mode, out_dtype=dtype_out)
    out = resize_grid_linear(x, (2, 4, 6), 2.0, backend="triton", **kwargs)
    ref = resize_grid_linear(x, (2, 4, 6), 2.0, backend="torch", **kwargs)
    a, b = (torch.tensor(build_axis_resize(n, 2.0, method, mode, "cells", "paper").matrix) for n in (4, 6))
    planes = x.reshape(6, 4, 6).double().abs().cpu()
    magnitude = (a.abs() @ planes @ b.abs().T).reshape(ref.shape)
    assert_within(out, ref, _tolerance(ref, 4 + 6, magnitude), f"grid {method}/{mode} {dtype_in}->{dtype_out}")


def test_long_1d_kernel_parity():
    # A 256-tap kernel (an STFT filter) to 512 taps: beyond the dense limits, so the separable
    # kernel with H = 1 (the line kernel) runs.
    from kernelscale.resize import resize_kernel

    x = _rand(2, 1, 256, seed=200, dtype=BF16)
    out = resize_kernel(x, 2.0, align="cells", out_dtype=F32, backend="triton")
    ref = resize_kernel(x, 2.0, align="cells", out_dtype=F32, backend="torch")
    assert out.shape == (2, 1, 512)
    from kernelscale.transforms import build_axis_resize

    b = torch.tensor(build_axis_resize(256, 2.0, "interp", "linear", "cells", "mass").matrix)
    magnitude = (x.reshape(2, 256).double().abs().cpu() @ b.abs().T).reshape(ref.shape)
    assert_within(out, ref, _tolerance(ref, 1 + 256, magnitude), "256→512 taps")


@pytest.mark.parametrize("block_rows, num_warps", [(16, 2), (64, 4), (256, 8)])
def test_dense_launch_constants_do_not_change_the_result(block_rows, num_warps):
    # bench_kernels.py --sweep picks the launch constants by speed alone: every row is computed on
    # its own with the taps in one order, so any rows-per-program gives the same bits.
    from kernelscale.triton_ops.dense import _launch_dense

    x, r = _rand(300, 9, seed=21, dtype=F16), _rand(49, 9, seed=22)
    y = torch.full((300, 49), float("nan"), dtype=F16, device=DEVICE)
    _launch_dense(x, r.T.contiguous(), y, block_rows=block_rows, num_warps=num_warps)
    assert torch.equal(y, apply_dense_triton(x, r, F16))
