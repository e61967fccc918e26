"""kernelscale.execute: one path from a built operator to a resized tensor (overflow check once,
then the backend), for the state-dict API, the stream and the nn adapter alike."""

import numpy as np
import pytest
import torch

from kernelscale.errors import NonFiniteResultError, UnsupportedTensorError
from kernelscale.execute import apply, check_result, execute, gains, out_shape, overflow_check
from kernelscale.method import Method
from kernelscale.transforms import GridResize, ScaleFactor, grid_resize, kernel_resize

CONV = kernel_resize((3, 3), (2.0, 2.0), Method(mode="cubic"))
GRID = GridResize((2, 3, 4), grid_resize((3, 4), (2.0, 2.0), Method()))


def test_conv_is_the_kronecker_product_on_every_slice():
    x = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    y = execute(CONV, x, name="c.weight")
    expected = (x.reshape(12, 9) @ torch.tensor(CONV.dense()).T).reshape(4, 3, *CONV.out_shape)
    assert y.shape == out_shape(CONV, x.shape) == (4, 3, 11, 11)
    assert torch.allclose(y, expected, rtol=0, atol=1e-12)


def test_grid_resizes_each_plane_of_each_row():
    x = torch.randn(5, 2 * 3 * 4, dtype=torch.float64)
    y = execute(GRID, x, name="fc.weight")
    rows, cols = (torch.tensor(a.matrix) for a in GRID.planes.axes)
    planes = x.reshape(5, 2, 3, 4)
    expected = torch.einsum("Hh,ochw,Ww->ocHW", rows, planes, cols).reshape(5, -1)
    assert y.shape == out_shape(GRID, x.shape) == (5, 2 * 6 * 8)
    assert torch.allclose(y, expected, rtol=0, atol=1e-12)


def test_scale_factor_rounds_once():
    x = torch.randn(7, 5).to(torch.float16)
    y = execute(ScaleFactor(1.1), x, name="q.weight")
    assert y.dtype == torch.float16 and torch.equal(y, (x.float() * 1.1).half())
    assert execute(ScaleFactor(2.0), torch.tensor(3.0)).item() == 6.0  # a 0-d bias works too


def test_kinds_dtypes_and_identity():
    w = np.random.default_rng(0).standard_normal((2, 2, 3, 3)).astype(np.float32)
    out = execute(CONV, w)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (2, 2, 11, 11)
    identity = kernel_resize((3, 3), (1.0, 1.0), Method())
    t = torch.randn(2, 2, 3, 3)
    assert execute(identity, t) is t
    assert execute(identity, t, out_dtype=torch.float16).dtype == torch.float16
    with pytest.raises(UnsupportedTensorError, match=r"c\.weight: cannot resize a tensor of dtype torch\.int64"):
        execute(CONV, torch.ones(2, 2, 3, 3, dtype=torch.int64), name="c.weight")


def test_gains_bound_every_result():
    for op, x in ((CONV, torch.randn(6, 2, 3, 3)), (GRID, torch.randn(3, 24)), (ScaleFactor(-3.0), torch.randn(4, 4))):
        gain, peak = gains(op)
        assert peak >= 1.0 and peak >= gain
        assert float(apply(op, x, torch.float32).abs().max()) <= gain * float(x.abs().max()) * (1 + 1e-6)


def test_overflow_checked_once_and_named():
    x = torch.full((2, 2, 3, 3), 6e4, dtype=torch.float16)
    assert overflow_check(CONV, torch.randn(2, 2, 3, 3, dtype=torch.float16), torch.float16) is None  # the bound is enough
    big = kernel_resize((3, 3), (2.0, 2.0), Method(coef=10.0))
    magnitude = overflow_check(big, x, torch.float16)
    assert magnitude == pytest.approx(6e4, rel=1e-3)
    y = apply(big, x, torch.float16)  # unchecked: the stream's GPU path checks on the host afterwards
    assert not torch.isfinite(y).all()
    with pytest.raises(NonFiniteResultError, match=r"^c\.weight: the resized values reach .*float16's largest finite value 65504"):
        check_result(big, x, y, torch.float16, magnitude, "c.weight")
    with pytest.raises(NonFiniteResultError, match=r"^c\.weight: "):
        execute(big, x, name="c.weight")
    # inf in, inf out: garbage is passed through, not refused
    x[0, 0, 1, 1] = float("inf")
    assert overflow_check(big, x, torch.float16) is None


@pytest.mark.parametrize("operator, shape", [
    (CONV, (4, 3, 3, 3)),
    (kernel_resize((5, 5, 5), (2.0, 2.0, 2.0), Method(mode="lanczos3")), (2, 2, 5, 5, 5)),  # separable, 3-D
    (kernel_resize((9,), (2.0,), Method()), (3, 2, 9)),
    (GRID, (5, 2 * 3 * 4)),
    (ScaleFactor(1.1), (7, 5)),
])
@pytest.mark.parametrize("out_dtype", [torch.float16, torch.float32])
def test_out_receives_the_same_values(operator, shape, out_dtype) -> None:
    """``out=`` (the converter computes into its output blocks so) gives the bytes of the plain call,
    one rounding."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2)).half()
    expected = execute(operator, x, name="w", out_dtype=out_dtype)
    out = torch.full(out_shape(operator, x.shape), float("nan"), dtype=out_dtype)
    assert execute(operator, x, name="w", out_dtype=out_dtype, out=out) is out
    assert torch.equal(out, expected)


def test_out_receives_a_blocked_product_whole() -> None:
    big = torch.randn(10000, 1, 3, 3, generator=torch.Generator().manual_seed(3)).half()  # beyond one CPU block of rows
    out = torch.empty(out_shape(CONV, big.shape), dtype=torch.float16)
    execute(CONV, big, out_dtype=torch.float16, out=out)
    assert torch.equal(out, execute(CONV, big, out_dtype=torch.float16))


def test_out_of_the_wrong_shape_or_dtype_is_refused() -> None:
    from kernelscale.errors import InvalidOptionError

    x = torch.randn(2, 3, 3, 3)
    with pytest.raises(InvalidOptionError, match=r"expected a contiguous \(2, 3, 11, 11\) torch.float32"):
        execute(CONV, x, out=torch.empty(2, 3, 11, 10))
    with pytest.raises(InvalidOptionError, match="torch.float16"):
        execute(CONV, x, out_dtype=torch.float16, out=torch.empty(2, 3, 11, 11))
    with pytest.raises(InvalidOptionError, match="contiguous"):
        execute(CONV, x, out=torch.empty(2, 3, 11, 22)[..., ::2])


@pytest.mark.parametrize("out", [torch.empty(4, 3, 3, 3), torch.empty(2, 3, 3, 3, dtype=torch.float16)],
                         ids=["broadcast-shape", "other-dtype"])
def test_an_identity_refuses_an_out_it_cannot_return(out) -> None:
    # the identity shortcut copies x into out: a wrong shape would broadcast, a wrong dtype cast
    from kernelscale.errors import InvalidOptionError

    identity = kernel_resize((3, 3), (1.0, 1.0), Method())
    x = torch.randn(1 if out.dtype == torch.float32 else 2, 3, 3, 3)
    with pytest.raises(InvalidOptionError, match="expected a contiguous"):
        execute(identity, x, out=out)
