"""Write a synthetic fp16 checkpoint with the tensor names and shapes of the Stable Diffusion 1.5 UNet.

The layout comes from diffusers' ``UNet2DConditionModel`` built on the meta device (no download,
no allocation): the default config, which is SD 1.5's except for the cross-attention width, set
to SD 1.5's 768 here (the default, 1280, only changes the 32 ``attn2.to_k``/``to_v`` matrices).
Values are seeded N(0, 0.02²) in fp16, generated and written one tensor at a time with
kernelscale's streaming writer, so memory stays at one tensor (~60 MB). About 1.72 GB: put it
under /tmp, never in the repository::

    python benchmarks/make_sd15_checkpoint.py /tmp/kernelscale-bench/sd15_unet_fp16.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from kernelscale.io.safetensors_io import SafetensorsWriter

SD15_CROSS_ATTENTION_DIM = 768
SHAPES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sd15_unet_shapes.json")


def sd15_unet_specs() -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, "F16", shape) of every tensor of the SD 1.5 UNet, in the model's state_dict order.

    From diffusers when it is installed; otherwise from ``sd15_unet_shapes.json`` beside this
    script, the same list written by ``--write-shapes`` (for machines without diffusers, such as
    a GPU host with no package index)."""
    try:
        from diffusers import UNet2DConditionModel
    except ImportError:
        with open(SHAPES_FILE) as fh:
            return [(name, "F16", tuple(shape)) for name, shape in json.load(fh)]
    with torch.device("meta"):
        model = UNet2DConditionModel(cross_attention_dim=SD15_CROSS_ATTENTION_DIM)
    return [(name, "F16", tuple(t.shape)) for name, t in model.state_dict().items()]


def write_checkpoint(path: str, seed: int = 0) -> int:
    """Write the checkpoint to ``path`` (via a temp file renamed at the end); return its size."""
    specs = sd15_unet_specs()
    generator = torch.Generator().manual_seed(seed)
    tmp = f"{path}.partial"
    with SafetensorsWriter(tmp, specs, {"source": "synthetic SD 1.5 UNet (kernelscale benchmarks)"}) as writer:
        for name, _, shape in specs:
            writer.write_tensor(name, (torch.randn(shape, generator=generator) * 0.02).to(torch.float16))
        writer.fsync()
    os.replace(tmp, path)
    return os.path.getsize(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", nargs="?", help="where to write the .safetensors file (under /tmp, not in the repository)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random values (default: 0)")
    parser.add_argument("--write-shapes", action="store_true",
                        help=f"write the (name, shape) list from diffusers to {os.path.basename(SHAPES_FILE)} and exit")
    args = parser.parse_args(argv)
    if args.write_shapes:
        with open(SHAPES_FILE, "w") as fh:
            json.dump([[name, list(shape)] for name, _, shape in sd15_unet_specs()], fh, separators=(",", ":"))
            fh.write("\n")
        return 0
    if args.output is None:
        parser.error("the output path is required (unless --write-shapes)")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    started = time.perf_counter()
    size = write_checkpoint(args.output, args.seed)
    print(f"wrote {args.output}: {size / 1e9:.2f} GB, {len(sd15_unet_specs())} tensors, {time.perf_counter() - started:.1f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
