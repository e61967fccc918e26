"""The example diffusion model: a class-conditional pixel-space UNet2DModel on scikit-learn's digits.

    python examples/digits_diffusion.py train        # writes examples/digits_diffusion.safetensors
    python examples/digits_diffusion.py sample OUT.png [--size 32] [--per-class 4] [--seed 0]
    python examples/digits_diffusion.py evaluate [--size 32] [--per-class 20] [--seed 0]

The data: the 8×8 digits of the 75 % split of examples/digits.py, bicubic-upsampled to 16×16
(``RESOLUTION``), clamped to [0, 1] and mapped to [-1, 1]. The model: diffusers' ``UNet2DModel``
(two levels 16² → 8², 32 and 64 channels, one resnet per block, no attention: ``CONFIG``), class
labels through ``num_class_embeds = 11`` where label 10 (``NULL_CLASS``) is the unconditional
"null" class that classifier-free guidance needs; during training a label is replaced by it with
probability ``CFG_DROPOUT``. The schedule: DDPM's, 1000 steps, linear β from 1e-4 to 0.02,
ε-prediction (``SCHEDULE``). Sampling: DDIM (η = 0) with classifier-free guidance, both halves in
one batched forward, so one step costs two network evaluations per sample.

``train`` is byte-reproducible (examples/digits.py's ``deterministic``: one torch thread and
deterministic algorithms; seeded initialisation, batch order, timesteps, noise and label
dropout), so the file it writes does not depend on the machine's number of cores. The weights
shipped are an exponential moving average (``EMA``) of the trained ones. The checkpoint holds the
``UNet2DModel`` config and the schedule as JSON in the safetensors metadata (key
``METADATA_KEY``): :func:`load_model` rebuilds the model from the file alone.

``evaluate`` samples ``--per-class`` digits of every class at ``--size`` pixels, by direct
inference (the unmodified network on a larger canvas) and prints the metrics of
examples/generation_metrics.py. ``sample`` writes a grid of samples, one row per class.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from digits import deterministic, load_digits_split  # noqa: E402  the classifier example's data and threading

CHECKPOINT = HERE / "digits_diffusion.safetensors"
SEED = 0
RESOLUTION = 16
NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES  # the extra class embedding: "no label", for classifier-free guidance
CFG_DROPOUT = 0.1
BATCH = 64
STEPS = 2600
LEARNING_RATE = 1e-3
EMA = 0.999
METADATA_KEY = "digits_diffusion"

CONFIG: dict[str, Any] = dict(
    sample_size=RESOLUTION, in_channels=1, out_channels=1, block_out_channels=[32, 64], layers_per_block=1,
    down_block_types=["DownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "UpBlock2D"],
    add_attention=False, norm_num_groups=8, num_class_embeds=NUM_CLASSES + 1,
)
SCHEDULE: dict[str, Any] = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                prediction_type="epsilon")

# ε-prediction function: (x_t (N, 1, H, W), timestep (int), labels (N,) int64) -> ε (N, 1, H, W)
EpsFn = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]


def build_model(config: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """A ``UNet2DModel`` from ``config`` (default ``CONFIG``), torch's default initialisation."""
    from diffusers import UNet2DModel

    return UNet2DModel(**dict(config or CONFIG))


def training_images(seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y): the 75 % split of examples/digits.py at ``RESOLUTION``², x (N, 1, 16, 16) in [-1, 1]
    (bicubic, clamped to [0, 1], then 2x − 1), y (N,) int64 labels."""
    x, y, _, _ = load_digits_split(seed)
    return to_model_range(upsample(x, RESOLUTION)), y


def upsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic, cell-aligned resize of (N, 1, h, w) images in [0, 1] to size², clamped to [0, 1]."""
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] → [-1, 1]."""
    return x * 2 - 1


def to_image_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → [0, 1], clamped."""
    return ((x + 1) / 2).clamp(0, 1)


def noise_scheduler(kind: str = "ddpm") -> Any:
    """diffusers' DDPMScheduler (``kind="ddpm"``) or DDIMScheduler (``"ddim"``) for ``SCHEDULE``."""
    from diffusers import DDIMScheduler, DDPMScheduler

    if kind == "ddpm":
        return DDPMScheduler(**SCHEDULE)
    if kind == "ddim":
        return DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=True)
    raise ValueError(f"noise_scheduler: kind must be 'ddpm' or 'ddim', got {kind!r}")


def train(steps: int = STEPS, seed: int = SEED, log_every: int = 200) -> nn.Module:
    """Train the shipped model: ``steps`` Adam steps (lr ``LEARNING_RATE``, linearly decayed to 0)
    on batches of ``BATCH`` in a seeded order, DDPM's ε-loss at uniform timesteps, labels dropped
    to ``NULL_CLASS`` with probability ``CFG_DROPOUT``; returns the EMA weights, in eval mode.
    Byte-reproducible for a given (steps, seed) (module docstring)."""
    x, y = training_images(seed)
    scheduler = noise_scheduler("ddpm")
    alphas = scheduler.alphas_cumprod.float()
    with deterministic():
        torch.manual_seed(seed)
        model = build_model()
        ema = build_model()
        ema.load_state_dict(model.state_dict())
        ema.requires_grad_(False)
        optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        decay = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda i: 1 - i / steps)
        generator = torch.Generator().manual_seed(seed)
        order = torch.empty(0, dtype=torch.long)
        model.train()
        start = time.process_time()
        for step in range(steps):
            if len(order) < BATCH:
                order = torch.cat([order, torch.randperm(len(y), generator=generator)])
            batch, order = order[:BATCH], order[BATCH:]
            x0, labels = x[batch], y[batch].clone()
            t = torch.randint(0, len(alphas), (BATCH,), generator=generator)
            noise = torch.randn(x0.shape, generator=generator)
            labels[torch.rand(BATCH, generator=generator) < CFG_DROPOUT] = NULL_CLASS
            a = alphas[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            loss = F.mse_loss(model(xt, t, class_labels=labels).sample, noise)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            decay.step()
            with torch.no_grad():
                rate = min(EMA, (1 + step) / (10 + step))
                for p_ema, p in zip(ema.parameters(), model.parameters()):
                    p_ema.lerp_(p, 1 - rate)
            if log_every and (step + 1) % log_every == 0:
                print(f"step {step + 1}/{steps}: loss {loss.item():.4f}, {time.process_time() - start:.0f} s CPU",
                      flush=True)
    return ema.eval()


def save_model(model: nn.Module, path: Path) -> None:
    """Write ``model``'s state dict to ``path`` as safetensors; the metadata key ``METADATA_KEY``
    holds JSON with the ``UNet2DModel`` ``config``, the ``schedule`` and the ``null_class``."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in CONFIG.items()}
    # One metadata key: safetensors writes several in hash order, which would break byte-reproducibility.
    record = {"description": "kernelscale example: class-conditional UNet2DModel (DDPM) on sklearn digits at 16x16",
              "config": config, "schedule": SCHEDULE, "null_class": NULL_CLASS}
    save_file(state, str(path), metadata={METADATA_KEY: json.dumps(record, sort_keys=True)})


def load_model(path: Path = CHECKPOINT) -> nn.Module:
    """The ``UNet2DModel`` rebuilt from the config in ``path``'s metadata, its weights loaded
    (strictly), in eval mode. ValueError naming the file if the metadata has no config."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path}: no {METADATA_KEY!r} key in the safetensors metadata; not a digits_diffusion checkpoint")
    model = build_model(json.loads(metadata[METADATA_KEY])["config"])
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def guided(model: nn.Module, guidance: float) -> EpsFn:
    """Classifier-free guidance on ``model``: ε = ε(x, ∅) + w·(ε(x, y) − ε(x, ∅)), w = ``guidance``;
    both halves in one forward of a doubled batch (two network evaluations per sample)."""

    def eps(x: torch.Tensor, t: int, labels: torch.Tensor) -> torch.Tensor:
        null = torch.full_like(labels, NULL_CLASS)
        out = model(torch.cat([x, x]), t, class_labels=torch.cat([labels, null])).sample
        cond, uncond = out.chunk(2)
        return uncond + guidance * (cond - uncond)

    return eps


@torch.no_grad()
def ddim_sample(eps: EpsFn, labels: torch.Tensor, size: int, steps: int = 50, seed: int = SEED) -> torch.Tensor:
    """DDIM (η = 0) from seeded Gaussian noise (N, 1, size, size) to images in [0, 1]; ``eps``
    gives the (guided) ε-prediction at each of ``steps`` timesteps (diffusers' DDIMScheduler,
    "leading" spacing)."""
    scheduler = noise_scheduler("ddim")
    scheduler.set_timesteps(steps)
    x = torch.randn((len(labels), 1, size, size), generator=torch.Generator().manual_seed(seed))
    for t in scheduler.timesteps:
        x = scheduler.step(eps(x, int(t), labels), t, x).prev_sample
    return to_image_range(x)


def class_labels(per_class: int) -> torch.Tensor:
    """(10·per_class,) labels 0,0,…,1,1,…,9 (``per_class`` of each)."""
    return torch.arange(NUM_CLASSES).repeat_interleave(per_class)


def save_grid(images: torch.Tensor, path: Path, columns: int) -> None:
    """Write (N, 1, H, W) images in [0, 1] as one grayscale PNG, ``columns`` per row, 1 px gaps."""
    import matplotlib.pyplot as plt

    n, _, h, w = images.shape
    rows = -(-n // columns)
    canvas = torch.ones(rows * (h + 1) - 1, columns * (w + 1) - 1)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = 1 - image[0]
    plt.imsave(str(path), canvas.numpy(), cmap="gray", vmin=0, vmax=1)


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train the model and write examples/digits_diffusion.safetensors")
    tr.add_argument("--steps", type=positive_int, default=STEPS)
    tr.add_argument("--out", type=Path, default=CHECKPOINT)
    for name, helptext in (("sample", "write a PNG grid of samples, one row per class"),
                           ("evaluate", "sample every class and print the generation metrics")):
        p = sub.add_parser(name, help=helptext)
        if name == "sample":
            p.add_argument("out", type=Path)
        p.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
        p.add_argument("--size", type=positive_int, default=RESOLUTION, help="canvas size in pixels (direct inference)")
        p.add_argument("--per-class", type=positive_int, default=4 if name == "sample" else 20)
        p.add_argument("--steps", type=positive_int, default=50, help="DDIM steps")
        p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale")
        p.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)

    if args.command == "train":
        start = time.process_time()
        model = train(args.steps)
        save_model(model, args.out)
        print(f"wrote {args.out} ({args.out.stat().st_size} bytes) after {time.process_time() - start:.0f} s CPU")
        return 0

    model = load_model(args.checkpoint)
    labels = class_labels(args.per_class)
    with deterministic():
        images = ddim_sample(guided(model, args.guidance), labels, args.size, args.steps, args.seed)
    if args.command == "sample":
        save_grid(images, args.out, columns=args.per_class)
        print(f"wrote {args.out}")
        return 0
    from generation_metrics import Metrics

    print(Metrics.fit().report(images, labels).line(f"direct {args.size}x{args.size}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
