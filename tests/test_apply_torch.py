"""The pure-torch path against float64 numpy, and its dtype contract (DESIGN §6, §7).

Error bound used throughout: a float32 dot product of length K is within γ_K·Σ|a_k||b_k| of the
exact value, γ_K = K·u/(1 − K·u) with u = 2**-24 (Higham, Accuracy and Stability, Thm 3.5). For
A·x·Bᵀ the two chained products give γ_H + γ_W + γ_H·γ_W ≤ γ_{H+W} times (|A|·|x|·|B|ᵀ). The
float64 numpy oracle is exact to 2**-53 relative, far below these bounds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernelscale.apply_torch import apply_dense_torch, apply_separable_torch
from kernelscale.errors import InvalidOptionError

U32 = 2.0**-24
U64 = 2.0**-53


def _gamma(k: int, u: float) -> float:
    return k * u / (1 - k * u)


def _dense_case(n: int, k_in: int, k_out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k_in, generator=g), torch.randn(k_out, k_in, generator=g)


@pytest.mark.parametrize("n, k_in, k_out", [(5, 9, 49), (7, 9, 25), (3, 3, 7), (4, 27, 64), (1, 1, 1), (6, 64, 256)])
def test_dense_float32_within_gamma_bound_of_float64(n, k_in, k_out):
    x, r = _dense_case(n, k_in, k_out, seed=n * 1000 + k_in)
    out = apply_dense_torch(x, r, torch.float32)
    xd, rd = x.double().numpy(), r.double().numpy()
    exact = xd @ rd.T
    bound = _gamma(k_in, U32) * (np.abs(xd) @ np.abs(rd).T)
    err = np.abs(out.double().numpy() - exact)
    assert out.shape == (n, k_out) and out.dtype == torch.float32 and out.is_contiguous()
    assert np.all(err <= bound), f"max err/bound = {(err / bound).max():.3g}"


@pytest.mark.parametrize("layout", ["transposed", "every_other_row"])
def test_dense_strided_input_read_in_place(layout):
    # BLAS may sum in another order for another layout, so compare to the bound, not bitwise.
    x, r = _dense_case(6, 9, 49, seed=3)
    if layout == "transposed":
        strided = x.T.contiguous().T  # strides (1, N)
    else:  # the odd rows are NaN: reading one of them would poison the result
        strided = torch.stack([x, torch.full_like(x, float("nan"))], 1).reshape(12, 9)[::2]
    assert not strided.is_contiguous()
    out = apply_dense_torch(strided, r, torch.float32).double().numpy()
    xd, rd = x.double().numpy(), r.double().numpy()
    assert np.all(np.abs(out - xd @ rd.T) <= _gamma(9, U32) * (np.abs(xd) @ np.abs(rd).T))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dense_half_input_computed_in_float32_and_rounded_once(dtype):
    x, r = _dense_case(9, 9, 49, seed=11)
    x = x.to(dtype)
    out = apply_dense_torch(x, r, dtype)
    assert out.dtype == dtype
    assert torch.equal(out, (x.float() @ r.T).to(dtype))


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dense_float32_input_to_any_output_dtype(out_dtype):
    x, r = _dense_case(4, 9, 25, seed=5)
    out = apply_dense_torch(x, r, out_dtype)
    assert out.dtype == out_dtype
    assert torch.equal(out, (x @ r.T).to(out_dtype))


def test_dense_float64_stays_float64():
    x, r = _dense_case(5, 27, 64, seed=7)
    x, r = x.double(), r.double()
    out = apply_dense_torch(x, r, torch.float64)
    assert out.dtype == torch.float64
    exact = x.numpy() @ r.numpy().T
    bound = 2 * _gamma(27, U64) * (np.abs(x.numpy()) @ np.abs(r.numpy()).T)
    assert np.all(np.abs(out.numpy() - exact) <= bound)


def test_dense_float64_input_with_float32_matrix_computes_in_float64():
    x, r = _dense_case(3, 9, 49, seed=8)
    out = apply_dense_torch(x.double(), r, torch.float64)
    assert torch.equal(out, x.double() @ r.double().T)


@pytest.mark.parametrize(
    "n, h, w, h_out, w_out", [(3, 8, 8, 16, 16), (2, 5, 7, 11, 13), (2, 1, 256, 1, 512), (2, 13, 4, 6, 9)]
)
def test_separable_float32_within_gamma_bound_of_float64(n, h, w, h_out, w_out):
    g = torch.Generator().manual_seed(n + h + w)
    x, a, b = torch.randn(n, h, w, generator=g), torch.randn(h_out, h, generator=g), torch.randn(w_out, w, generator=g)
    out = apply_separable_torch(x, a, b, torch.float32)
    xd, ad, bd = x.double().numpy(), a.double().numpy(), b.double().numpy()
    exact = np.einsum("ih,nhw,jw->nij", ad, xd, bd)
    bound = _gamma(h + w, U32) * np.einsum("ih,nhw,jw->nij", np.abs(ad), np.abs(xd), np.abs(bd))
    assert out.shape == (n, h_out, w_out) and out.is_contiguous()
    assert np.all(np.abs(out.double().numpy() - exact) <= bound)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_separable_half_input_rounded_once(dtype):
    g = torch.Generator().manual_seed(2)
    x, a, b = torch.randn(3, 5, 7, generator=g).to(dtype), torch.randn(11, 5, generator=g), torch.randn(13, 7, generator=g)
    out = apply_separable_torch(x, a, b, dtype)
    assert out.dtype == dtype
    assert torch.equal(out, ((a @ x.float()) @ b.T).to(dtype))


def test_separable_strided_input_read_in_place():
    g = torch.Generator().manual_seed(4)
    x, a, b = torch.randn(2, 6, 5, generator=g), torch.randn(9, 6, generator=g), torch.randn(8, 5, generator=g)
    strided = x.transpose(1, 2).contiguous().transpose(1, 2)
    assert not strided.is_contiguous()
    out = apply_separable_torch(strided, a, b, torch.float32).double().numpy()
    xd, ad, bd = x.double().numpy(), a.double().numpy(), b.double().numpy()
    bound = _gamma(11, U32) * np.einsum("ih,nhw,jw->nij", np.abs(ad), np.abs(xd), np.abs(bd))
    assert np.all(np.abs(out - np.einsum("ih,nhw,jw->nij", ad, xd, bd)) <= bound)


@settings(deadline=None, max_examples=40)
@given(
    n=st.integers(0, 4),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    h_out=st.integers(1, 6),
    w_out=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_separable_equals_dense_with_kronecker_matrix(n, h, w, h_out, w_out, seed):
    """A·x·Bᵀ flattened row-major is (A ⊗ B)·vec(x): the two forms agree (float64, to rounding)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, w, generator=g, dtype=torch.float64)
    a = torch.randn(h_out, h, generator=g, dtype=torch.float64)
    b = torch.randn(w_out, w, generator=g, dtype=torch.float64)
    sep = apply_separable_torch(x, a, b, torch.float64).reshape(n, h_out * w_out)
    dense = apply_dense_torch(x.reshape(n, h * w), torch.kron(a, b), torch.float64)
    scale = apply_dense_torch(x.abs().reshape(n, h * w), torch.kron(a.abs(), b.abs()), torch.float64)
    assert sep.dtype == torch.float64
    assert torch.all((sep - dense).abs() <= 2 * _gamma(h + w, U64) * scale)


def test_shape_mismatch_names_the_shapes():
    with pytest.raises(InvalidOptionError, match=r"\(49, 8\).*\(k_out, 9\)"):
        apply_dense_torch(torch.zeros(2, 9), torch.zeros(49, 8), torch.float32)
    with pytest.raises(InvalidOptionError, match=r"expected \(N, K_in\)"):
        apply_dense_torch(torch.zeros(2, 3, 3), torch.zeros(49, 9), torch.float32)
    with pytest.raises(InvalidOptionError, match="col_matrix"):
        apply_separable_torch(torch.zeros(2, 3, 4), torch.zeros(5, 3), torch.zeros(5, 3), torch.float32)


def test_integer_input_rejected():
    with pytest.raises(InvalidOptionError, match="int64"):
        apply_dense_torch(torch.zeros(2, 9, dtype=torch.int64), torch.zeros(49, 9), torch.float32)


def test_torch_path_does_not_import_triton():
    import kernelscale.apply_torch as mod

    source = open(mod.__file__).read()
    assert "import triton" not in source and "triton_ops" not in source.split('"""', 2)[2]


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.float32])
def test_cpu_row_blocks_match_one_product(out_dtype):
    """Above CPU_BLOCK_ROWS the rows are processed in cache-sized blocks. A BLAS may order a
    row's 9-term float32 sum differently per block size (≤ 9·2⁻²⁴ relative to Σ|x·r|), which can
    flip the final rounding by one ulp of the output dtype at most."""
    from kernelscale.apply_torch import CPU_BLOCK_ROWS

    x = torch.randn(2 * CPU_BLOCK_ROWS + 123, 9).half()
    r = torch.randn(49, 9)
    expected = torch.cat([(x[i : i + 1000].float() @ r.T) for i in range(0, x.shape[0], 1000)]).to(out_dtype)
    got = apply_dense_torch(x, r, out_dtype)
    ulp = {torch.float16: 2**-10, torch.float32: 2**-23}[out_dtype]
    bound = 9 * 2**-24 * (x.float().abs() @ r.abs().T) + ulp * expected.float().abs()
    assert torch.all((got.float() - expected.float()).abs() <= bound + 2**-24)
