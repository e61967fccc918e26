"""ScaleCrafter's dispersed convolution: R minimises the stated calibration loss (DESIGN §3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernelscale import resize_kernel
from kernelscale.disperse import disperse_matrix, disperse_system
from kernelscale.method import DisperseParams
from kernelscale.transforms import build_kernel_resize


def embed(k: int, k_new: int, ndim: int = 2) -> np.ndarray:
    """K zero-padded to k_new, centred: the pixel-level term's exact minimiser."""
    pad = (k_new - k) // 2
    rows = []
    for index in np.ndindex(*(k,) * ndim):
        big = np.zeros((k_new,) * ndim)
        big[tuple(i + pad for i in index)] = 1.0
        rows.append(big.reshape(-1))
    return np.stack(rows, axis=1)


@pytest.mark.parametrize("k, k_new, s, ndim", [(3, 5, 2, 2), (3, 7, 2, 2), (5, 9, 2, 1), (3, 7, 3, 1)])
def test_solution_minimises_the_loss(k, k_new, s, ndim):
    rng = np.random.default_rng(0)
    system = disperse_system(k, k_new, s, 7, 0.05, ndim)
    matrix, relative = disperse_matrix(k, k_new, s, 7, 0.05, ndim)
    kernel = rng.standard_normal(k**ndim)
    best = system.loss(matrix @ kernel, kernel)
    # J is a convex quadratic and R K its stationary point, so J(RK + δ) = J(RK) + ‖Aδ‖² ≥ J(RK);
    # rounding of J is ≤ rows·ε·J, far below the ‖Aδ‖² of a 1e-3 perturbation.
    for _ in range(50):
        delta = 1e-3 * rng.standard_normal(k_new**ndim)
        assert system.loss(matrix @ kernel + delta, kernel) > best
    # The reported loss is the Frobenius residual of the whole operator, relative to the target.
    np.testing.assert_allclose(relative, np.linalg.norm(system.a @ matrix - system.b) / np.linalg.norm(system.b), rtol=1e-12)
    assert 0 < relative < 1


def test_symmetric_kernels_stay_symmetric():
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 5.0, 2.0], [1.0, 2.0, 1.0]], dtype=torch.float64)[None, None]
    new = resize_kernel(kernel, 2, method="disperse")[0, 0]
    # The calibration problem is invariant under flips and transposes; lstsq in float64 keeps
    # the symmetry to ≈ cond(A)·ε relative (cond ≈ 1e2 here).
    for sym in (new.flip(0), new.flip(1), new.T):
        torch.testing.assert_close(sym, new, rtol=0, atol=1e-12)


def test_eta_to_infinity_gives_the_zero_padded_kernel():
    # R(η) = E + O(1/η²) where E embeds K: ten times η, a hundred times closer.
    e = embed(3, 5)
    gaps = [np.abs(disperse_matrix(3, 5, 2, 7, eta, 2)[0] - e).max() for eta in (10.0, 100.0)]
    assert gaps[1] < gaps[0] / 50


def test_eta_to_zero_gives_the_structure_only_solution():
    system = disperse_system(3, 5, 2, 7, 1.0, 2)
    structure_rows = system.a.shape[0] - 49 * 49  # the pixel term has m²·m² rows
    p1, q1 = system.a[:structure_rows], system.b[:structure_rows]
    r0, *_ = np.linalg.lstsq(p1, q1, rcond=None)
    # P₁ has full column rank here, so R(η) = R₀ + O(η²).
    assert np.linalg.matrix_rank(p1) == p1.shape[1]
    gaps = [np.abs(disperse_matrix(3, 5, 2, 7, eta, 2)[0] - r0).max() for eta in (1e-1, 1e-2)]
    assert gaps[1] < gaps[0] / 50


def test_structure_error_is_smaller_than_plain_embedding():
    system = disperse_system(3, 5, 2, 7, 0.0, 2)
    matrix, relative = disperse_matrix(3, 5, 2, 7, 0.0, 2)
    plain = np.linalg.norm(system.a @ embed(3, 5) - system.b) / np.linalg.norm(system.b)
    assert relative < plain


def test_bad_settings():
    with pytest.raises(ValueError, match="integer scale"):
        build_kernel_resize((3, 3), 1.5, "disperse")
    with pytest.raises(ValueError, match="square kernel"):
        build_kernel_resize((3, 5), 2, "disperse")
    with pytest.raises(ValueError, match="eta"):
        DisperseParams(eta=-1.0)
    with pytest.raises(ValueError, match="odd"):
        build_kernel_resize((3, 3), 2, "disperse", disperse=DisperseParams(size=6))


def test_disperse_output_bytes_do_not_depend_on_the_thread_count(tmp_path) -> None:
    """DESIGN §6 (deterministic): the calibration's solve and its relative_loss, which the manifest
    stores, are computed on one thread, so 1 and 2 threads (torch's and the BLAS's) give the same
    bytes; before, R and relative_loss differed in their last bits."""
    import hashlib
    import os
    import subprocess
    import sys
    from pathlib import Path

    import safetensors.torch

    root = Path(__file__).resolve().parents[1]
    g = torch.Generator().manual_seed(0)
    src = tmp_path / "in.safetensors"
    safetensors.torch.save_file({"a.weight": torch.randn(4, 4, 3, 3, generator=g), "b.weight": torch.randn(4, 4, 5, 5, generator=g)},
                                str(src))
    digests = set()
    for threads in ("1", "2"):
        out = tmp_path / f"out{threads}.safetensors"
        script = (f"import sys, torch; torch.set_num_threads({threads}); from kernelscale.cli import main; "
                  f"sys.exit(main(['convert', {str(src)!r}, {str(out)!r}, '--scale', '3', '--method', 'disperse']))")
        env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1
