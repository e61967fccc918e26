"""Smoke run of benchmarks/exp_generation.py --quick: every method samples, is scored and drawn."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("diffusers")
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def load_experiment():
    spec = importlib.util.spec_from_file_location("exp_generation", ROOT / "benchmarks" / "exp_generation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_run_scores_every_method(tmp_path, capsys):
    exp = load_experiment()
    png = tmp_path / "samples.png"
    assert exp.main(["--quick", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert png.stat().st_size > 0
    for method in exp.METHODS.values():
        rows = [line for line in out.splitlines() if line.startswith(f"| {method.label} |")]
        assert len(rows) == 2, (method.label, out)  # one quality row, one cost row
        quality = [float(cell.split(" ± ")[0]) for cell in rows[0].strip("| ").split(" | ")[1:]]
        assert len(quality) == 3 and all(math.isfinite(v) for v in quality)
        assert 0 <= quality[1] <= 1 and 0 <= quality[2] <= 1
        evals = float(rows[1].strip("| ").split(" | ")[1])
        assert evals == method.build.evals([500, 0])  # the rows the networks saw, counted by hooks
    assert re.search(r"N = 10 per method", out)


EXPECTED_QUICK_EVALS = {  # DDIM 2 steps: t = 500 (nominal step 24 of 50) and t = 0 (step 49)
    "direct": 4,  # 2 steps × the two CFG halves
    "ug-1": 8,  # + both halves at 16² on every step (η = 1)
    "ug-1-eta0.5": 6,  # + both halves at 16² where t ≥ 500: the first step only
    "nd-cfg": 6,  # + the base model's unconditional row on both steps (τ = 50)
    "nd-redilate-all": 5,  # + that row on the first step only (τ = 30)
}


def test_quick_evals_follow_the_recipes():
    exp = load_experiment()
    for name, evals in EXPECTED_QUICK_EVALS.items():
        assert exp.METHODS[name].build.evals([500, 0]) == evals, name


@pytest.fixture(scope="module")
def model():
    exp = load_experiment()
    return exp.dd.load_model()


def sample_input(scale: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 1, 16 * scale, 16 * scale, generator=g), torch.tensor([3, 7])


def test_redilation_schedule_is_dilation_while_active_and_plain_after(model):
    """Steps i < τ: the scheduled network equals the geometry-only dilated one (integer factor:
    both run the same conv with dilation 2 and padding 2, DESIGN §4 T1, so bit for bit); i ≥ τ:
    the trained network itself."""
    import torch

    exp = load_experiment()
    x, labels = sample_input(2)
    redilated = exp.Redilated(model, 2, exp.Schedule("all", tau=30, progressive=True))
    dilated = exp.copy.deepcopy(model)
    exp.supersample(dilated, 2, method="dilate", geometry_only=True)
    with torch.no_grad():
        early = redilated.at(900)(x, 900, class_labels=labels).sample  # nominal step 4 < 30
        late = redilated.at(100)(x, 100, class_labels=labels).sample  # nominal step 44 ≥ 30
        torch.testing.assert_close(early, dilated(x, 900, class_labels=labels).sample, rtol=0, atol=0)
        torch.testing.assert_close(late, model(x, 100, class_labels=labels).sample, rtol=0, atol=0)
        assert (early - late).abs().max() > 1e-2  # the schedule changes something


def test_upsample_guidance_w1_puts_the_low_resolution_estimate_in_the_coarse_part(model):
    """With w = 1, D(ε̃) = ε_low/√k, ε_low = CFG of the trained network at 16² on D(x_t)/√P_t at
    the SNR-matched τ (DESIGN §10). Tolerance: D(ε̃) = D(ε_high) + ε_low/2 − D(ε_high) cancels
    terms of size |ε| ≤ ~5 in float32 (ulp 5e-7), a few roundings: 1e-5 absolute."""
    import torch

    exp = load_experiment()
    ks = exp.ks
    x, labels = sample_input(2, seed=1)
    eps, _ = exp.Recipe(ug=(1.0, 1.0))(model, 2, 2.0)
    alphas = exp.dd.noise_scheduler("ddim").alphas_cumprod
    with torch.no_grad():
        out = eps(x, 700, labels)
        low = ks.low_res_step(x, alphas, 700.0, (2, 2))
        expected = exp.dd.guided(model, 2.0)(low.sample, low.timestep.to(torch.float32), labels) / 2
        torch.testing.assert_close(ks.downsample_mean(out, (2, 2)), expected, rtol=0, atol=1e-5)
        direct = exp.dd.guided(model, 2.0)(x, 700, labels)
        assert (out - direct).abs().max() > 1e-2


def test_nd_cfg_with_the_same_base_is_cfg(model):
    """ND-CFG reduces to CFG when the base and the guided network are the same (direct inference).
    The base row runs in a batch of 2, the CFG halves in one of 4: float32 results differ by a few
    ulps per layer through ~20 layers (measured 1e-6 on |ε| ≤ ~5): 1e-5."""
    import torch

    exp = load_experiment()
    x, labels = sample_input(3, seed=2)
    nd, _ = exp.Recipe(nd_tau=50)(model, 3, 2.0)
    with torch.no_grad():
        torch.testing.assert_close(nd(x, 500, labels), exp.dd.guided(model, 2.0)(x, 500, labels), rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_factored_network_is_the_materialised_interp_and_switches_to_dilation(model, mode):
    """DESIGN §9 T2 on the whole UNet: the FactoredConv network computes what ``supersample(...,
    method="interp")`` computes (float32; measured 2e-6 on |ε| ≤ 2: 1e-5), and in the "dilated"
    state (nominal steps i < τ) the geometry-only dilation, bit for bit."""
    import torch

    exp = load_experiment()
    x, labels = sample_input(3, seed=3)
    factored = exp.Factored(model, 3, mode, switch_tau=40)
    materialised = exp.copy.deepcopy(model)
    exp.supersample(materialised, 3, method="interp", mode=mode, execution="materialised")
    dilated = exp.copy.deepcopy(model)
    exp.supersample(dilated, 3, method="dilate", geometry_only=True)
    with torch.no_grad():
        late = factored.at(100)(x, 100, class_labels=labels).sample  # nominal step 44 ≥ 40: interpolated
        torch.testing.assert_close(late, materialised(x, 100, class_labels=labels).sample, rtol=0, atol=1e-5)
        early = factored.at(900)(x, 900, class_labels=labels).sample  # step 4 < 40: dilated
        torch.testing.assert_close(early, dilated(x, 900, class_labels=labels).sample, rtol=0, atol=0)
