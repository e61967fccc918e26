"""Tiny diffusers pipelines built from configs in code, for tests (nothing is downloaded).

    pipe = sd_pipeline(tmp_path)          # StableDiffusionPipeline: UNet2DConditionModel, AutoencoderKL, CLIP
    pipe = sdxl_pipeline(tmp_path)        # StableDiffusionXLPipeline: text_time addition embeddings, two encoders
    unet = ddpm_unet()                    # UNet2DModel (pixel space, one self-attention level)

The tokenizer is a byte-level CLIP BPE with no merges: its vocabulary (every byte character, alone
and as a word end ``</w>``, plus the two special tokens) and its merges file are written under
``folder``. Weights are random (seeded) and the models are in float32, eval mode. Latents are
8 × 8 at the trained size (``sample_size`` 8, a VAE factor 2: 16 × 16 images), so a 2× pipeline
generates 16 × 16 latents, 32 × 32 images.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SAMPLE_SIZE = 8
TEXT_DIM = 32
TOKENS = 16  # the tokenizer's and text encoders' context length


def _byte_chars() -> list[str]:
    """GPT-2's byte-to-character table (CLIP's byte-level BPE): printable bytes map to themselves,
    the others to the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def tokenizer(folder: Path):
    """A CLIPTokenizer over bytes, no merges: vocab.json and merges.txt written in ``folder``."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=TOKENS)


def _text_config(**extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=514, hidden_size=TEXT_DIM, intermediate_size=37, num_attention_heads=4,
                          num_hidden_layers=2, max_position_embeddings=TOKENS, bos_token_id=512, eos_token_id=513,
                          pad_token_id=513, **extra)


def vae():
    """AutoencoderKL with two levels (factor 2), 4 latent channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), latent_channels=4,
                         norm_num_groups=8, sample_size=2 * SAMPLE_SIZE).eval()


def sd_unet(seed: int = 0):
    """UNet2DConditionModel shaped like SD 1.x: cross-attention at the first level, plain at the second."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(sample_size=SAMPLE_SIZE, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_DIM,
                                attention_head_dim=8, norm_num_groups=8).eval()


def sdxl_unet(seed: int = 0):
    """UNet2DConditionModel shaped like SDXL: no attention at the first level, two transformer layers
    at the second, ``text_time`` addition embeddings (pooled text + six size conditions)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(sample_size=SAMPLE_SIZE, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
                                cross_attention_dim=2 * TEXT_DIM, attention_head_dim=(4, 8), norm_num_groups=8,
                                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                                projection_class_embeddings_input_dim=6 * 8 + TEXT_DIM).eval()


def ddpm_unet(seed: int = 0):
    """UNet2DModel (pixel space) with a self-attention level."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=2 * SAMPLE_SIZE, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=8).eval()


SCHEDULERS = ("ddim", "euler", "dpm")


def make_scheduler(kind: str = "ddim", prediction_type: str = "epsilon"):
    """SD's DDIM schedule (scaled-linear betas 0.00085 to 0.012, 1000 training steps); ``kind``
    "euler" or "dpm" (DPM-Solver++) gives that sampler with the same config; ``prediction_type``
    "epsilon" or "v_prediction"."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    ddim = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)
    if kind == "ddim":
        return ddim
    if kind == "euler":
        return EulerDiscreteScheduler.from_config(ddim.config)
    if kind == "dpm":
        return DPMSolverMultistepScheduler.from_config(ddim.config, algorithm_type="dpmsolver++")
    raise ValueError(f"scheduler kind {kind!r}: expected one of {SCHEDULERS}")


def sd_pipeline(folder: Path, seed: int = 0, scheduler: str = "ddim", prediction_type: str = "epsilon"):
    """StableDiffusionPipeline of :func:`sd_unet`, :func:`vae`, a CLIPTextModel and :func:`tokenizer`,
    with :func:`make_scheduler` (``scheduler``, ``prediction_type``)."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config()).eval()
    return StableDiffusionPipeline(vae=vae(), text_encoder=text_encoder, tokenizer=tokenizer(Path(folder) / "tokenizer"),
                                   unet=sd_unet(seed), scheduler=make_scheduler(scheduler, prediction_type),
                                   safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def sdxl_pipeline(folder: Path, seed: int = 0):
    """StableDiffusionXLPipeline of :func:`sdxl_unet`, :func:`vae`, CLIPTextModel and
    CLIPTextModelWithProjection (pooled output), one :func:`tokenizer` for both."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed + 2)
    one = CLIPTextModel(_text_config()).eval()
    two = CLIPTextModelWithProjection(_text_config(projection_dim=TEXT_DIM)).eval()
    tok = tokenizer(Path(folder) / "tokenizer")
    return StableDiffusionXLPipeline(vae=vae(), text_encoder=one, text_encoder_2=two, tokenizer=tok, tokenizer_2=tok,
                                     unet=sdxl_unet(seed), scheduler=make_scheduler(), force_zeros_for_empty_prompt=True)


def generate(pipe, size: int, steps: int = 2, seed: int = 0) -> torch.Tensor:
    """``pipe("a cat", height=size, width=size)`` with a fixed generator; the images as a tensor
    (batch, height, width, 3) in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    kwargs = {} if size is None else {"height": size, "width": size}
    with torch.no_grad():
        out = pipe("a cat", num_inference_steps=steps, generator=generator, output_type="np", **kwargs)
    return torch.from_numpy(out.images)


def original_layout(unet) -> dict[str, torch.Tensor]:
    """A UNet2DConditionModel's state dict under the original (LDM) names, ``model.diffusion_model.*``,
    as single-file checkpoints hold it: the inverse of diffusers' ``convert_ldm_unet_checkpoint``
    for this module's blocks (tests check that diffusers maps it back name for name)."""
    config = unet.config
    per = config.layers_per_block
    pairs = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
             ("add_embedding.linear_1.", "label_emb.0.0."), ("add_embedding.linear_2.", "label_emb.0.2."),
             ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2.")]
    for i, block in enumerate(unet.down_blocks):
        for j in range(per):
            pairs += [(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{(per + 1) * i + j + 1}.0."),
                      (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{(per + 1) * i + j + 1}.1.")]
        if block.downsamplers is not None:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(per + 1) * (i + 1)}.0.op."))
    for i, block in enumerate(unet.up_blocks):
        for j in range(per + 1):
            pairs += [(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{(per + 1) * i + j}.0."),
                      (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{(per + 1) * i + j}.1.")]
        if block.upsamplers is not None:
            slot = 2 if getattr(block, "attentions", None) is not None else 1
            pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{(per + 1) * i + per}.{slot}."))
    pairs += [("mid_block.resnets.0.", "middle_block.0."), ("mid_block.attentions.0.", "middle_block.1."),
              ("mid_block.resnets.1.", "middle_block.2.")]
    resnet = [("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("norm2.", "out_layers.0."),
              ("conv2.", "out_layers.3."), ("time_emb_proj.", "emb_layers.1."), ("conv_shortcut.", "skip_connection.")]
    out = {}
    for name, tensor in unet.state_dict().items():
        prefix = max((p for p in pairs if name.startswith(p[0])), key=lambda p: len(p[0]))
        rest = name[len(prefix[0]):]
        if ".resnets." in prefix[0]:
            rest = next((new + rest[len(old):] for old, new in resnet if rest.startswith(old)), rest)
        out["model.diffusion_model." + prefix[1] + rest] = tensor
    return out


def original_vae_layout(vae) -> dict[str, torch.Tensor]:
    """An AutoencoderKL's state dict under the original names, ``first_stage_model.*`` (attention
    projections as 1×1 convs): the inverse of diffusers' ``convert_ldm_vae_checkpoint``."""
    n = len(vae.decoder.up_blocks)
    pairs = [("encoder.conv_norm_out.", "encoder.norm_out."), ("decoder.conv_norm_out.", "decoder.norm_out.")]
    for part in ("encoder", "decoder"):
        pairs += [(f"{part}.mid_block.resnets.{i}.", f"{part}.mid.block_{i + 1}.") for i in range(2)]
        pairs.append((f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."))
    for i in range(len(vae.encoder.down_blocks)):
        pairs += [(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."),
                  (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")]
    for i in range(n):
        pairs += [(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n - 1 - i}.block."),
                  (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample.")]
    attention = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}
    out = {}
    for name, tensor in vae.state_dict().items():
        prefix = max((p for p in pairs if name.startswith(p[0])), key=lambda p: len(p[0]), default=("", ""))
        rest = name[len(prefix[0]):].replace("conv_shortcut.", "nin_shortcut.")
        if prefix[0].endswith("attentions.0."):
            old = next(o for o in attention if rest.startswith(o))
            rest = attention[old] + rest[len(old):]
            if tensor.ndim == 2:
                tensor = tensor[:, :, None, None]
        out["first_stage_model." + prefix[1] + rest] = tensor
    return out


def original_file_layout(pipe) -> dict[str, torch.Tensor]:
    """A StableDiffusionPipeline as one original-layout single file: UNet, VAE and text encoder."""
    text = {"cond_stage_model.transformer." + ("" if k.startswith("text_model.") else "text_model.") + k: v
            for k, v in pipe.text_encoder.state_dict().items()}  # transformers ≥ 5.6 drops ``text_model.``
    return {**original_layout(pipe.unet), **original_vae_layout(pipe.vae), **text}
