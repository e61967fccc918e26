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


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def sd_pipeline(folder: Path, seed: int = 0):
    """StableDiffusionPipeline of :func:`sd_unet`, :func:`vae`, a CLIPTextModel and :func:`tokenizer`."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config()).eval()
    return StableDiffusionPipeline(vae=vae(), text_encoder=text_encoder, tokenizer=tokenizer(Path(folder) / "tokenizer"),
                                   unet=sd_unet(seed), scheduler=_scheduler(), safety_checker=None,
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
                                     unet=sdxl_unet(seed), scheduler=_scheduler(), force_zeros_for_empty_prompt=True)


def generate(pipe, size: int, steps: int = 2, seed: int = 0) -> torch.Tensor:
    """``pipe("a cat", height=size, width=size)`` with a fixed generator; the images as a tensor
    (batch, height, width, 3) in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    kwargs = {} if size is None else {"height": size, "width": size}
    with torch.no_grad():
        out = pipe("a cat", num_inference_steps=steps, generator=generator, output_type="np", **kwargs)
    return torch.from_numpy(out.images)
