"""kernelscale.integrations.diffusers on tiny pipelines built from configs (tests/pipelines.py).

What is measured, and why the assertions hold:

- **Downsamplers aligned** (on by default): on test_e2e_unet's smooth UNet2DModel with periodic
  borders and a periodic bilinear U, the error of the supersampled model against U(model(x)) is
  0.019 with the downsamplers resized by cells and padded (3, 2) — exactly on the supersampled
  grid — against 0.054 with the default taps resize (half a high-res pixel off, DESIGN §4).
  Asserted: aligned < unaligned, through ``supersample_denoiser``.
- **Attention temperature** (on by default): for near-uniform attention (small logit variance σ²),
  the entropy over N keys is H ≈ log N − σ²/2, so H/log N ≈ 1 − σ²/(2 log N): multiplying the
  logits by λ = √(log N′/log N) keeps the normalised entropy H/log N of the trained size to first
  order. Measured on the tiny SD UNet (random weights: near-uniform attention) on Gaussian latents,
  the first self-attention: 0.9886 at 8×8, 0.9937 at 16×16 without the temperature, 0.9916 with it.
  Asserted, for every self-attention layer: the temperature brings H/log N closer to the
  trained size's, and the query projection carries exactly λ.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import pipelines as P  # noqa: E402
from kernelscale.errors import InvalidCheckpointError, InvalidOptionError, KernelscaleError  # noqa: E402
from kernelscale.integrations.diffusers import (  # noqa: E402
    CONFIG_KEY, WEIGHTS_NAME, ExecutionUnavailableError, UnsupportedDenoiserError, attention_rules, convert_rules, load_denoiser,
    load_pipeline, supersample_denoiser, supersample_pipeline,
)

pytestmark = pytest.mark.usefixtures("one_thread")

HI = 2 * P.SAMPLE_SIZE * 2  # image side at 2× latents (VAE factor 2)


def states(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_state(module, before: dict[str, torch.Tensor]) -> bool:
    after = module.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


# ---------------------------------------------------------------------------------------------
# Generation at 2×


@pytest.mark.parametrize("build", [P.sd_pipeline, P.sdxl_pipeline], ids=["sd", "sdxl"])
def test_pipeline_generates_at_twice_the_latent_size_and_leaves_vae_and_text_encoders_alone(build, tmp_path):
    pipe = build(tmp_path)
    kept = {name: states(getattr(pipe, name)) for name in ("vae", "text_encoder", "text_encoder_2") if hasattr(pipe, name)}
    report = supersample_pipeline(pipe, 2)
    assert pipe.unet.config.sample_size == 2 * P.SAMPLE_SIZE
    assert report.sample_size == (P.SAMPLE_SIZE, 2 * P.SAMPLE_SIZE)
    for name, before in kept.items():
        assert same_state(getattr(pipe, name), before), f"{name} was modified"
    assert report.layers["down_blocks.0.resnets.0.conv1"].new_kernel_size == (7, 7)
    images = P.generate(pipe, None)  # the default size comes from the scaled sample_size
    assert images.shape == (1, HI, HI, 3)
    assert torch.isfinite(images).all()


def test_ddpm_unet2dmodel_generates_at_twice_the_size():
    from diffusers import DDPMPipeline, DDPMScheduler

    pipe = DDPMPipeline(unet=P.ddpm_unet(), scheduler=DDPMScheduler(num_train_timesteps=10))
    report = supersample_pipeline(pipe, 2)
    assert [r.pattern for r in report.attention] == ["down_blocks.1.attentions.0.to_q", "up_blocks.0.attentions.0.to_q",
                                                     "up_blocks.0.attentions.1.to_q", "mid_block.attentions.0.to_q"]
    with torch.no_grad():
        images = pipe(num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (1, 4 * P.SAMPLE_SIZE, 4 * P.SAMPLE_SIZE, 3)  # sample_size 16 → 32, pixel space


def test_geometry_only_implies_dilate_and_keeps_every_weight(tmp_path):
    pipe = P.sd_pipeline(tmp_path)
    before = states(pipe.unet)
    report = supersample_pipeline(pipe, 2, geometry_only=True, attention=None)
    assert same_state(pipe.unet, before)
    change = report.layers["down_blocks.0.resnets.0.conv1"]
    assert (change.new_kernel_size, change.new_dilation, change.new_padding) == ((3, 3), (2, 2), (2, 2))
    assert P.generate(pipe, None).shape == (1, HI, HI, 3)


# ---------------------------------------------------------------------------------------------
# Measured: aligned downsamplers, attention temperature


def test_aligned_downsamplers_lower_the_error():
    from test_e2e_unet import PLAIN, build_unet, periodic_bilinear, rel, run, smooth_input

    model = build_unet(PLAIN, circular=True)
    x = smooth_input()
    reference = periodic_bilinear(run(model, x))
    errors = {}
    for aligned in (True, False):
        m = copy.deepcopy(model)
        report = supersample_denoiser(m, 2, attention=None, align_downsamplers=aligned)
        down = report.layers["down_blocks.0.downsamplers.0.conv"]
        assert down.offset == ((0.0, 0.0) if aligned else (0.5, 0.5))
        errors[aligned] = rel(run(m, periodic_bilinear(x)), reference)
    assert errors[True] < errors[False], errors  # measured 0.019 vs 0.054


def attention_entropy(unet, latent: torch.Tensor, cond: torch.Tensor) -> dict[str, tuple[int, float]]:
    """Per self-attention layer: (tokens N, mean softmax entropy over heads and queries), computed
    from the layer's own to_q/to_k on its input during one forward pass."""
    out: dict[str, tuple[int, float]] = {}
    hooks = []
    for name, layer in unet.named_modules():
        if not hasattr(layer, "to_q") or layer.is_cross_attention:
            continue

        def hook(mod, args, kwargs, name=name):
            h = args[0] if args else kwargs["hidden_states"]
            q, k = mod.to_q(h), mod.to_k(h)
            b, n, c = q.shape
            q = q.view(b, n, mod.heads, -1).transpose(1, 2)
            k = k.view(b, n, mod.heads, -1).transpose(1, 2)
            p = torch.softmax(q @ k.transpose(-1, -2) * mod.scale, dim=-1)
            out[name] = (n, -(p * p.clamp_min(1e-30).log()).sum(-1).mean().item())

        hooks.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            unet(latent, 500, encoder_hidden_states=cond)
    finally:
        for h in hooks:
            h.remove()
    return out


def test_attention_temperature_keeps_the_normalised_entropy():
    unet = P.sd_unet()
    rules = attention_rules(unet)
    # token counts per level: 8×8 latents at level 0, 4×4 in the middle block (one downsampler)
    assert {r.pattern: r.tokens for r in rules} == {
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": 64,
        "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": 64,
        "up_blocks.1.attentions.1.transformer_blocks.0.attn1.to_q": 64,
        "mid_block.attentions.0.transformer_blocks.0.attn1.to_q": 16,
    }
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(1, P.TOKENS, P.TEXT_DIM, generator=g)
    low = attention_entropy(unet, torch.randn(1, 4, 8, 8, generator=g), cond)
    latent = torch.randn(1, 4, 16, 16, generator=g)
    on, off = copy.deepcopy(unet), copy.deepcopy(unet)
    supersample_denoiser(on, 2)
    supersample_denoiser(off, 2, attention=None)
    for rule in rules:
        layer = rule.pattern[: -len(".to_q")]
        factor = math.sqrt(math.log(4 * rule.tokens) / math.log(rule.tokens))
        q_on, q_off = on.get_submodule(rule.pattern).weight, off.get_submodule(rule.pattern).weight
        torch.testing.assert_close(q_on, q_off * factor, rtol=2 ** -22, atol=0)  # one float32 product
    h_on, h_off = attention_entropy(on, latent, cond), attention_entropy(off, latent, cond)
    for layer, (n, h) in low.items():
        target = h / math.log(n)
        n2, with_t = h_on[layer]
        without = h_off[layer][1]
        assert n2 == 4 * n
        assert abs(with_t / math.log(n2) - target) < abs(without / math.log(n2) - target), layer


# ---------------------------------------------------------------------------------------------
# Saving and loading


def test_round_trip_saves_with_the_manifest_and_reloads_the_same_outputs(tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = P.sd_pipeline(tmp_path)
    supersample_pipeline(pipe, 2)
    images = P.generate(pipe, None)
    pipe.save_pretrained(tmp_path / "x2")
    unet_dir = tmp_path / "x2" / "unet"
    assert sorted(p.name for p in unet_dir.iterdir()) == ["config.json", WEIGHTS_NAME]
    config = json.loads((unet_dir / "config.json").read_text())
    assert config["sample_size"] == 2 * P.SAMPLE_SIZE
    assert config[CONFIG_KEY]["trained_sample_size"] == P.SAMPLE_SIZE

    again = load_pipeline(tmp_path / "x2")
    assert again.unet.config.sample_size == 2 * P.SAMPLE_SIZE
    assert same_state(again.unet, states(pipe.unet))
    assert torch.equal(P.generate(again, None), images)

    again.save_pretrained(tmp_path / "x2b")  # a loaded pipeline saves the same way
    third = load_pipeline(tmp_path / "x2b")
    assert torch.equal(P.generate(third, None), images)

    # stock diffusers finds no weights it knows and fails loudly instead of loading the wrong geometry
    with pytest.raises(OSError, match="diffusion_pytorch_model"):
        StableDiffusionPipeline.from_pretrained(tmp_path / "x2")


def test_factored_execution_generates_the_materialised_images_and_round_trips(tmp_path):
    """Factored and materialised generate the same images to rounding: fp32, the two forms of each
    conv sum the same products in another order (≤ 49 terms per tap group of a 7×7 kernel, ~20
    layers deep, two steps and the VAE): 2¹⁰ ulps of the [0, 1] images bounds that; a missing
    prefilter or a wrong padding changes them by order 0.1. Saving writes the original weights
    byte for byte with factored records; loading wraps the layers again and generates the same."""
    from kernelscale.layers import FactoredConv

    factored, materialised = P.sd_pipeline(tmp_path), P.sd_pipeline(tmp_path)
    original = states(factored.unet)
    report = supersample_pipeline(factored, 2, execution="factored")
    supersample_pipeline(materialised, 2)
    ran = {c.name: c.execution for c in report.layers if c.execution}
    assert ran["conv_in"] == "factored" and isinstance(factored.unet.conv_in, FactoredConv)
    assert ran["down_blocks.0.downsamplers.0.conv"] == "materialised"  # the aligned rule: cells, half-pixel
    kept = states(factored.unet)
    assert all(torch.equal(kept[f"{n}.weight"], original[f"{n}.weight"]) for n, c in ran.items() if c == "factored")
    images = P.generate(factored, None)
    torch.testing.assert_close(images, P.generate(materialised, None), rtol=0, atol=2 ** 10 * torch.finfo(torch.float32).eps)

    factored.save_pretrained(tmp_path / "x2")
    again = load_pipeline(tmp_path / "x2")
    assert isinstance(again.unet.conv_in, FactoredConv) and same_state(again.unet, kept)
    assert torch.equal(P.generate(again, None), images)


def test_factored_conversion_of_a_folder_loads_as_factored_supersample(tmp_path):
    """``convert --execution factored`` on a pipeline folder: load_pipeline wraps the same layers
    and generates bit for bit what ``supersample_pipeline(execution="factored")`` does."""
    from kernelscale.layers import FactoredConv

    rules = convert_rules(dict(P.sd_unet().config))
    out = converted_folder(tmp_path, exclude=("encoder.*", "decoder.*"), execution="factored", **rules)
    pipe = load_pipeline(out)
    direct = P.sd_pipeline(tmp_path)
    supersample_pipeline(direct, 2, execution="factored")
    assert isinstance(pipe.unet.conv_in, FactoredConv) and same_state(pipe.unet, states(direct.unet))
    assert torch.equal(P.generate(pipe, None), P.generate(direct, None))


def test_sdxl_round_trip(tmp_path):
    pipe = P.sdxl_pipeline(tmp_path)
    supersample_pipeline(pipe, 2)
    images = P.generate(pipe, None)
    pipe.save_pretrained(tmp_path / "x2")
    again = load_pipeline(tmp_path / "x2")
    assert type(again).__name__ == "StableDiffusionXLPipeline"
    assert torch.equal(P.generate(again, None), images)


def converted_folder(tmp_path: Path, **options) -> Path:
    from kernelscale.convert import convert_checkpoint
    from kernelscale.options import ResizeOptions

    P.sd_pipeline(tmp_path).save_pretrained(tmp_path / "orig")
    out = tmp_path / "converted"
    convert_checkpoint(tmp_path / "orig", out, ResizeOptions(scale=2, **options), progress=False)
    return out


def test_converted_folder_loads_and_matches_supersample(tmp_path):
    rules = convert_rules(dict(P.sd_unet().config))  # what `kernelscale convert` needs to match the defaults
    assert [r.pattern for r in rules["layers"]] == ["*downsamplers*"] and len(rules["attention"]) == 4
    out = converted_folder(tmp_path, exclude=("encoder.*", "decoder.*"), **rules)
    pipe = load_pipeline(out)
    direct = P.sd_pipeline(tmp_path)
    supersample_pipeline(direct, 2)
    assert pipe.unet.config.sample_size == 2 * P.SAMPLE_SIZE
    assert same_state(pipe.unet, states(direct.unet))
    assert torch.equal(P.generate(pipe, None), P.generate(direct, None))
    unet = load_denoiser(out / "unet")
    assert same_state(unet, states(direct.unet))


# ---------------------------------------------------------------------------------------------
# Refusals: each names what to do


def test_converted_folder_with_a_resized_vae_is_refused_with_the_fix(tmp_path):
    out = converted_folder(tmp_path, include=("*",))  # an explicit include resizes every component's convs
    with pytest.raises(InvalidCheckpointError, match=r"vae .*resized too.*without --include.*kernelscale convert ORIGINAL OUT --scale 2\.0"):
        load_pipeline(out)


def test_transformer_denoisers_are_refused_by_name(tmp_path):
    from diffusers import DiTTransformer2DModel

    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=1, sample_size=8,
                                patch_size=2, norm_num_groups=8, num_embeds_ada_norm=10)

    class Pipe:  # what supersample_pipeline reads of a pipeline
        components = {"transformer": dit, "vae": None}

    with pytest.raises(UnsupportedDenoiserError, match="DiTTransformer2DModel, a transformer.*UNet2DConditionModel"):
        supersample_pipeline(Pipe(), 2)
    (tmp_path / "dit").mkdir()
    (tmp_path / "dit" / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline",
                                                                      "transformer": ["diffusers", "DiTTransformer2DModel"]}))
    with pytest.raises(UnsupportedDenoiserError, match="DiTTransformer2DModel, a transformer"):
        load_pipeline(tmp_path / "dit")


def test_refusals_name_the_fix(tmp_path):
    pipe = P.sd_pipeline(tmp_path)
    before = states(pipe.unet)
    with pytest.raises(InvalidOptionError, match="unknown execution 'lazy'; expected one of materialised, factored"):
        supersample_pipeline(pipe, 2, execution="lazy")
    with pytest.raises(InvalidOptionError, match="geometry_only=True is re-dilation"):
        supersample_pipeline(pipe, 2, geometry_only=True, method="pinv")
    with pytest.raises(InvalidOptionError, match="not whole latent cells"):
        supersample_pipeline(pipe, 1.3)
    assert same_state(pipe.unet, before)  # nothing modified on an error
    supersample_pipeline(pipe, 2)
    with pytest.raises(InvalidOptionError, match="combined scale"):
        supersample_pipeline(pipe, 2)
    with pytest.raises(InvalidOptionError, match="supersample_denoiser"):
        supersample_pipeline(pipe.unet, 2)
    assert issubclass(ExecutionUnavailableError, KernelscaleError) and issubclass(UnsupportedDenoiserError, KernelscaleError)


def test_unconverted_folder_is_refused_with_the_fix(tmp_path):
    P.sd_pipeline(tmp_path).save_pretrained(tmp_path / "orig")
    with pytest.raises(InvalidCheckpointError, match=r"supersample_pipeline\(pipe, scale\)"):
        load_pipeline(tmp_path / "orig")


# ---------------------------------------------------------------------------------------------
# Single files in the original layout


def single_file(tmp_path: Path, pipe, **options) -> Path:
    """``pipe`` saved as an original-layout single file, converted by ``kernelscale convert``."""
    from safetensors.torch import save_file

    from kernelscale.convert import convert_checkpoint
    from kernelscale.options import ResizeOptions

    save_file({k: v.contiguous() for k, v in P.original_file_layout(pipe).items()}, str(tmp_path / "model.safetensors"))
    out = tmp_path / "model_x2.safetensors"
    convert_checkpoint(tmp_path / "model.safetensors", out, ResizeOptions(scale=2, **options), progress=False)
    return out


def test_converted_single_file_loads_and_matches_supersample(tmp_path):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    pipe = P.sd_pipeline(tmp_path)
    pipe.save_pretrained(tmp_path / "orig")  # the configs and tokenizer a single file lacks
    reference = P.generate(pipe, None)
    # the test's original layout is what diffusers reads: stock from_single_file rebuilds the same pipeline
    save_file({k: v.contiguous() for k, v in P.original_file_layout(pipe).items()}, str(tmp_path / "plain.safetensors"))
    stock = StableDiffusionPipeline.from_single_file(str(tmp_path / "plain.safetensors"), config=str(tmp_path / "orig"))
    assert torch.equal(P.generate(stock, None), reference)

    names = list(P.original_file_layout(pipe))
    rules = convert_rules(dict(pipe.unet.config), names)  # in the original names: input_blocks.2.0.op, …attn1.to_q
    assert [r.pattern for r in rules["layers"]] == ["model.diffusion_model.input_blocks.2.0.op"]  # one resnet per block
    assert rules["attention"][0].pattern == "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q"
    path = single_file(tmp_path, pipe, include=("model.diffusion_model.*",), **rules)
    direct = P.sd_pipeline(tmp_path)
    supersample_pipeline(direct, 2)
    loaded = load_pipeline(path, config=tmp_path / "orig")
    assert loaded.unet.config.sample_size == 2 * P.SAMPLE_SIZE
    assert same_state(loaded.unet, states(direct.unet))
    assert same_state(loaded.vae, states(pipe.vae)) and same_state(loaded.text_encoder, states(pipe.text_encoder))
    assert torch.equal(P.generate(loaded, None), P.generate(direct, None))

    unet = load_denoiser(path, config=tmp_path / "orig" / "unet")
    assert same_state(unet, states(direct.unet))
    loaded.save_pretrained(tmp_path / "resaved")  # a single file's pipeline saves as a folder with the manifest
    assert torch.equal(P.generate(load_pipeline(tmp_path / "resaved"), None), P.generate(direct, None))


def test_single_file_refusals_name_the_fix(tmp_path):
    pipe = P.sd_pipeline(tmp_path)
    pipe.save_pretrained(tmp_path / "orig")
    path = single_file(tmp_path, pipe, include=("*",))  # an explicit include resizes the VAE's convs too
    with pytest.raises(InvalidCheckpointError, match=r"VAE or text encoder was resized too.*without --include.*--config FOLDER"):
        load_pipeline(path, config=tmp_path / "orig")
    with pytest.raises(InvalidOptionError, match="config= a local diffusers"):
        load_denoiser(path)
    with pytest.raises(InvalidOptionError, match="config= a local diffusers pipeline folder"):
        load_pipeline(path)
    with pytest.raises(InvalidCheckpointError, match="no kernelscale manifest.*kernelscale convert"):
        load_denoiser(tmp_path / "model.safetensors", config=tmp_path / "orig")


def test_a_copy_saves_itself_and_stock_save_options_that_would_lose_the_manifest_are_refused(tmp_path):
    pipe = P.sd_pipeline(tmp_path)
    supersample_pipeline(pipe, 2, attention=None)
    copied = copy.deepcopy(pipe.unet)
    with torch.no_grad():
        copied.conv_in.bias.add_(1.0)  # the copy differs from the original
    copied.save_pretrained(tmp_path / "copy")
    assert same_state(load_denoiser(tmp_path / "copy"), states(copied))
    with pytest.raises(InvalidOptionError, match="variant='fp16'"):
        pipe.save_pretrained(tmp_path / "v", variant="fp16")
    with pytest.raises(InvalidOptionError, match="safetensors only"):
        pipe.save_pretrained(tmp_path / "bin", safe_serialization=False)


def test_geometry_only_converted_folder_loads_dilated_and_in_the_dtype_asked(tmp_path):
    out = converted_folder(tmp_path, method="dilate", geometry_only=True, exclude=("encoder.*", "decoder.*"))
    pipe = load_pipeline(out)
    direct = P.sd_pipeline(tmp_path)
    supersample_pipeline(direct, 2, geometry_only=True, attention=None)
    assert pipe.unet.down_blocks[0].resnets[0].conv1.dilation == (2, 2)  # the 3×3 kernels re-dilated, not as stored
    assert torch.equal(P.generate(pipe, None), P.generate(direct, None))
    half = load_pipeline(out, dtype=torch.bfloat16)
    assert {p.dtype for p in half.unet.parameters()} == {torch.bfloat16} == {p.dtype for p in half.vae.parameters()}
    assert half.unet.down_blocks[0].resnets[0].conv1.dilation == (2, 2)
