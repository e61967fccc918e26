"""kernelscale.integrations.diffusers.sampling (sampling_methods.py) on tests/pipelines.py's tiny pipelines
(built from configs, nothing downloaded): the wrapped denoiser computes the kernelscale.sampling functions exactly,
and stock pipelines run with every method on, for DDIM, Euler and DPM-Solver++, ε and v."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import pipelines as P  # noqa: E402
from kernelscale.errors import InvalidOptionError  # noqa: E402
from kernelscale.integrations.diffusers import (  # noqa: E402
    FouriScale,
    NoiseDampedCFG,
    Redilation,
    UnsupportedPipelineError,
    UpsampleGuidance,
    sampling,
)
from kernelscale.integrations.diffusers.sampling_methods import _step_index  # noqa: E402
from kernelscale.sampling import alpha_bar_at, cfg, fouriscale_conv, low_res_step, nd_cfg  # noqa: E402
from kernelscale.sampling.upsample_guidance import guide  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

U32 = 2.0**-24
SAMPLE = P.SAMPLE_SIZE  # trained latent size
CONV = "down_blocks.1.resnets.0.conv1"


def generate(pipe, steps: int = 3, size: int = 4 * SAMPLE) -> torch.Tensor:
    """A 2× image (latents 2·SAMPLE, VAE factor 2) with a fixed generator."""
    return P.generate(pipe, size, steps=steps)


class Counting(torch.nn.Module):
    """A denoiser that counts its calls and the input sizes it saw."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.sizes = inner, []

    def forward(self, sample, timestep, *args, **kwargs):
        self.sizes.append(tuple(sample.shape[-2:]))
        return self.inner(sample, timestep, *args, **kwargs)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return P.sd_pipeline(tmp_path_factory.mktemp("sd"))


def _inputs(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, 2 * SAMPLE, 2 * SAMPLE, generator=g),
            torch.randn(batch, P.TOKENS, P.TEXT_DIM, generator=g))


def test_without_methods_the_pipeline_is_unchanged_and_restored(pipe):
    plain = generate(pipe)
    with sampling(pipe):
        assert "forward" in pipe.unet.__dict__
        wrapped = generate(pipe)
    assert torch.equal(plain, wrapped)
    assert "forward" not in pipe.unet.__dict__


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("t", [981.0, 700.5])
def test_upsample_guidance_is_the_pure_function(tmp_path, prediction_type, t):
    p = P.sd_pipeline(tmp_path, prediction_type=prediction_type)
    x, text = _inputs()
    a = p.scheduler.alphas_cumprod.to(torch.float64)
    with torch.no_grad():
        high = p.unet(x, t, encoder_hidden_states=text).sample
        low = low_res_step(x.double(), a, t, (2, 2))
        low_pred = p.unet(low.sample.float(), low.timestep.float(), encoder_hidden_states=text).sample
        want = guide(high.double(), x.double(), alpha_bar_at(a, t), low_pred.double(), low, (2, 2), 1.2, prediction_type).float()
        with sampling(p, upsample_guidance=UpsampleGuidance(w=1.2, eta=0.6)):
            got = p.unet(x, t, encoder_hidden_states=text).sample
        with sampling(p, upsample_guidance=UpsampleGuidance(w=1.2, eta=0.2)):  # off below t = 800
            off = p.unet(x, t, encoder_hidden_states=text).sample
    assert torch.equal(got, want)
    assert torch.equal(off, high) == (t < 800)


def test_nd_cfg_shifts_both_halves_by_the_base_unconditional_term(pipe):
    base = P.sd_unet(seed=5)
    x, text = _inputs()
    t = 900.0
    with torch.no_grad():
        plain = pipe.unet(x, t, encoder_hidden_states=text).sample
        base_u = base(x[:1], t, encoder_hidden_states=text[:1]).sample
        pipe._guidance_scale = 7.5  # what the pipeline sets during a call
        with sampling(pipe, nd_cfg=NoiseDampedCFG(tau=35, base=base)):
            got = pipe.unet(x, t, encoder_hidden_states=text).sample
    u, c = got.chunk(2)
    m = float(plain.abs().max() + base_u.abs().max())
    assert torch.allclose(u, base_u, rtol=0, atol=4 * U32 * m)
    # the pipeline's CFG on the shifted halves is noise-damped CFG, for any guidance scale
    for w in (1.0, 7.5, 12.0):
        assert torch.allclose(cfg(u, c, w), nd_cfg(base_u, *plain.chunk(2), w), rtol=0, atol=8 * (1 + 2 * w) * U32 * m)


def test_redilation_sets_the_conv_dilation_per_step(pipe):
    x, text = _inputs()
    conv = dict(pipe.unet.named_modules())[CONV]
    with torch.no_grad():
        plain = pipe.unet(x, 100.0, encoder_hidden_states=text).sample
        conv.dilation, conv.padding = (2, 2), (2, 2)
        dilated = pipe.unet(x, 981.0, encoder_hidden_states=text).sample
        conv.dilation, conv.padding = (1, 1), (1, 1)
        with sampling(pipe, redilation=Redilation(settings={CONV: 2}, tau=30)):
            early = pipe.unet(x, 981.0, encoder_hidden_states=text).sample   # step 0 of 50
            late = pipe.unet(x, 100.0, encoder_hidden_states=text).sample    # step 44 ≥ τ
    assert torch.equal(early, dilated)
    assert torch.equal(late, plain)
    assert "forward" not in conv.__dict__


@pytest.mark.parametrize("t, d", [(981.0, 2.0), (481.0, 1 + 10 / 15), (100.0, 1.0)])
def test_fouriscale_runs_the_annealed_factor(pipe, t, d):
    """Step 0 of 50: d; step 25 (t = 481): (2 − 1)·(35 − 25)/(35 − 20) + 1; step 44: the plain conv."""
    x, text = _inputs()
    conv = dict(pipe.unet.named_modules())[CONV]
    with torch.no_grad():
        conv.forward = lambda h: fouriscale_conv(h, conv.weight, conv.bias, d)
        try:
            want = pipe.unet(x, t, encoder_hidden_states=text).sample
        finally:
            del conv.forward
        with sampling(pipe, fouriscale=FouriScale(layers=[CONV], d=2.0, start=20, stop=35)):
            got = pipe.unet(x, t, encoder_hidden_states=text).sample
    assert torch.equal(got, want)
    assert "forward" not in conv.__dict__


def test_step_index_of_ddim_50_is_the_loop_index():
    s = P.make_scheduler()
    s.set_timesteps(50)
    assert [_step_index(float(t), 1000, 50) for t in s.timesteps] == list(range(50))


@pytest.mark.parametrize("scheduler", P.SCHEDULERS)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_stock_pipelines_run_with_every_method(tmp_path, scheduler, prediction_type):
    p = P.sd_pipeline(tmp_path, scheduler=scheduler, prediction_type=prediction_type)
    plain = generate(p)
    low = Counting(P.sd_unet())
    with sampling(p, upsample_guidance=UpsampleGuidance(w=1.2, eta=0.6, model=low),
                  nd_cfg=NoiseDampedCFG(tau=35, base_settings={CONV: 2}),
                  redilation=Redilation(settings={CONV: 3, "up_blocks.0.resnets.0.conv2": 2.5}, tau=30, progressive=False),
                  fouriscale=FouriScale(layers=["up_blocks.1.resnets.0.conv1", "up_blocks.0.upsamplers.0.conv"], d=2.0)):
        images = generate(p)
    assert images.shape == plain.shape == (1, 4 * SAMPLE, 4 * SAMPLE, 3)
    assert bool(torch.isfinite(images).all()) and not torch.equal(images, plain)
    p.scheduler.set_timesteps(3)
    guided_steps = sum(float(t) >= 400 for t in p.scheduler.timesteps)
    assert guided_steps >= 1 and low.sizes == [(SAMPLE, SAMPLE)] * guided_steps
    assert "forward" not in p.unet.__dict__


def test_sdxl_pipeline_runs_with_upsample_guidance_and_nd_cfg(tmp_path):
    p = P.sdxl_pipeline(tmp_path)
    plain = generate(p, steps=2)
    with sampling(p, upsample_guidance=UpsampleGuidance(), nd_cfg=NoiseDampedCFG(tau=35, base_settings={CONV: 2})):
        images = generate(p, steps=2)
    assert bool(torch.isfinite(images).all()) and not torch.equal(images, plain)


def test_pipelines_that_cannot_be_wrapped_are_named(tmp_path, pipe):
    class TransformerPipeline:
        transformer = torch.nn.Linear(1, 1)

    with pytest.raises(UnsupportedPipelineError, match="TransformerPipeline has a transformer denoiser"):
        with sampling(TransformerPipeline()):
            pass
    flow = P.sd_pipeline(tmp_path)
    flow.scheduler = diffusers.FlowMatchEulerDiscreteScheduler()
    with pytest.raises(UnsupportedPipelineError, match="FlowMatchEulerDiscreteScheduler"):
        with sampling(flow, upsample_guidance=UpsampleGuidance()):
            pass


def test_bad_options_are_refused_before_anything_is_touched(pipe):
    with pytest.raises(InvalidOptionError, match="'mid_block.resnets.9.conv1' matches no layer"):
        with sampling(pipe, redilation=Redilation(settings={"mid_block.resnets.9.conv1": 2}, tau=30)):
            pass
    with pytest.raises(InvalidOptionError, match="matches no layer"):  # SD 1.5's names on a two-level UNet
        with sampling(pipe, redilation=Redilation(preset="sd1.5-1024x1024")):
            pass
    with pytest.raises(InvalidOptionError, match="tau"):
        Redilation(settings={CONV: 2})
    with pytest.raises(InvalidOptionError, match="'time_embedding.linear_1' matches no layer"):  # not a conv
        with sampling(pipe, redilation=Redilation(settings={"time_embedding.linear_1": 2}, tau=30)):
            pass
    conv = dict(pipe.unet.named_modules())[CONV]
    conv.padding = (0, 0)
    try:
        with pytest.raises(InvalidOptionError, match=f"{CONV}: re-dilation needs a same-padded"):
            with sampling(pipe, redilation=Redilation(settings={CONV: 2}, tau=30)):
                pass
    finally:
        conv.padding = (1, 1)
    with pytest.raises(InvalidOptionError, match="needs tau"):
        with sampling(pipe, nd_cfg=NoiseDampedCFG()):
            pass
    with pytest.raises(InvalidOptionError, match=f"both re-dilation and FouriScale: {CONV}"):
        with sampling(pipe, redilation=Redilation(settings={CONV: 2}, tau=30), fouriscale=FouriScale(layers=[CONV], d=2)):
            pass
    with pytest.raises(InvalidOptionError, match="'nope' matches no layer"):
        with sampling(pipe, fouriscale=FouriScale(layers=["nope"], d=2)):
            pass
    assert "forward" not in pipe.unet.__dict__



def test_nd_cfg_base_settings_need_the_pipelines_own_unet(pipe):
    with pytest.raises(InvalidOptionError, match="base_settings re-dilate the pipeline's own UNet"):
        with sampling(pipe, nd_cfg=NoiseDampedCFG(tau=35, base=P.sd_unet(), base_settings={CONV: 2})):
            pass


def test_upsample_guidance_builds_the_log_snr_table_once_per_with_block(pipe, monkeypatch):
    """Each guided denoiser call needs ā_t, τ and ā_τ from the schedule's log-SNR table: built once
    when the block is entered (kernelscale.sampling.vp_schedule), not at every use."""
    from kernelscale.sampling import schedules

    builds = []
    build = schedules.log_snr_table
    monkeypatch.setattr(schedules, "log_snr_table", lambda a: builds.append(1) or build(a))
    x, text = _inputs()
    with torch.no_grad(), sampling(pipe, upsample_guidance=UpsampleGuidance(w=1.2, eta=0.6)):
        assert len(builds) == 1
        for t in (981.0, 900.0, 850.5):
            pipe.unet(x, t, encoder_hidden_states=text)
    assert len(builds) == 1
