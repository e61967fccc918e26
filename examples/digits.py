"""The example network: a small CNN trained on scikit-learn's bundled 8×8 digits.

    python examples/digits.py train                     # writes examples/digits_cnn.safetensors
    python examples/digits.py evaluate CHECKPOINT [--size 16]

``evaluate`` loads a checkpoint — the original, or one written by ``kernelscale convert`` (read
through ``kernelscale.nn.load``, which applies the recorded geometry) — and reports accuracy on
the held-out digits, bicubic-upsampled to ``--size`` pixels. A checkpoint it cannot use is one
line on stderr and exit status 2.

``train`` is byte-reproducible: seeded initialisation, split and batch order, and training on
one torch thread with deterministic algorithms (see ``deterministic``), so the file it writes
does not depend on the machine's number of cores.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
CHECKPOINT = HERE / "digits_cnn.safetensors"
SEED = 0


class DigitsCNN(nn.Module):
    """conv3×3(1→16) → ReLU → conv3×3(16→32) → ReLU → maxpool 2 → Linear over the (32, H/2, W/2) grid."""

    def __init__(self, size: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(32 * (size // 2) ** 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv2(F.relu(self.conv1(x)))))
        return self.fc(x.flatten(1))


def load_digits_split(seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): images (N, 1, 8, 8) scaled to [0, 1]; a 75/25 split
    by a permutation seeded with ``seed``. Shared by the tests and the experiments."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    cut = int(0.75 * len(y))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def seeded_init(model: nn.Module, seed: int) -> nn.Module:
    """Re-initialise every parameter under ``seed`` (Kaiming-uniform weights, small uniform
    biases), whatever ran before: the same network for the same seed in any process."""
    torch.manual_seed(seed)
    for p in model.parameters():
        if p.ndim > 1:
            nn.init.kaiming_uniform_(p, a=5 ** 0.5)
        else:
            nn.init.uniform_(p, -0.05, 0.05)
    return model


def upsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic supersampling of (N, 1, 8, 8) digits to (N, 1, size, size), cell-aligned."""
    if size == x.shape[-1]:
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)


@contextmanager
def deterministic() -> Iterator[None]:
    """Run the body on one torch thread with deterministic algorithms, then restore both settings.

    torch splits a CPU reduction (a conv's weight gradient, a matmul) over its intra-op threads,
    so the summation order, hence the float32 rounding, and after a few hundred Adam steps the
    trained weights, depend on the thread count, i.e. on the machine's cores. One thread fixes the
    order; deterministic algorithms rule out the few kernels that are nondeterministic even then
    (a no-op for the CPU ops used here). The CPU's vector instruction set can still change the
    rounding, so "byte-identical" holds across core counts on the same kind of CPU.
    """
    threads = torch.get_num_threads()
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.set_num_threads(threads)


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = SEED) -> nn.Module:
    """Adam (lr 3e-3), batches of 64 in an order seeded with ``seed``, under ``deterministic()``;
    returns the model in eval mode."""
    with deterministic():
        optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
        generator = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(y), generator=generator).split(64):
                optimiser.zero_grad()
                F.cross_entropy(model(x[batch]), y[batch]).backward()
                optimiser.step()
    return model.eval()


def train(epochs: int = 40) -> DigitsCNN:
    """The shipped example: DigitsCNN with torch's default initialisation under seed SEED, fitted
    for ``epochs`` on the 75 % split."""
    torch.manual_seed(SEED)
    x_train, y_train, x_test, y_test = load_digits_split()
    model = fit(DigitsCNN(), x_train, y_train, epochs)
    print(f"test accuracy at 8×8: {accuracy(model, x_test, y_test):.4f}")
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of pixels, got {text}")
    return value


def evaluate(path: Path, size: int | None) -> str:
    """The accuracy line for the checkpoint at ``path``; KernelscaleError or ValueError (one
    line, naming the file) for a checkpoint this network cannot use."""
    from kernelscale.nn import load, read_manifest

    manifest = read_manifest(path)
    scale = 1.0
    if manifest is not None:
        value = manifest.get("options", {}).get("scale", 1.0)
        scale = float(value[-1] if isinstance(value, list) else value)
    size = size or int(round(8 * scale))
    model = DigitsCNN()
    load(model, path)
    grid = size // 2  # convs keep the size (stride 1, same padding), the 2×2 max-pool halves it
    if model.fc.in_features != 32 * grid * grid:
        raise ValueError(f"{path}: its Linear takes {model.fc.in_features} features, but {size}×{size} inputs give "
                         f"32×{grid}×{grid} = {32 * grid * grid} (was it converted with --grid fc=32,4,4, and for this --size?)")
    *_, x_test, y_test = load_digits_split()
    with deterministic():
        value = accuracy(model, upsample(x_test, size), y_test)
    return f"{path.name}: accuracy on held-out digits at {size}×{size}: {value:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train the example CNN and write examples/digits_cnn.safetensors")
    ev = sub.add_parser("evaluate", help="accuracy of a checkpoint on upsampled held-out digits")
    ev.add_argument("checkpoint", type=Path)
    ev.add_argument("--size", type=positive_int, default=None, help="input size in pixels (default: 8 × the manifest's scale)")
    args = parser.parse_args(argv)

    if args.command == "train":
        from safetensors.torch import save_file

        model = train()
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(CHECKPOINT), metadata={"description": "kernelscale example: DigitsCNN on sklearn 8x8 digits"})
        print(f"wrote {CHECKPOINT} ({CHECKPOINT.stat().st_size} bytes)")
        return 0

    from kernelscale.errors import KernelscaleError

    try:
        print(evaluate(args.checkpoint, args.size))
    except (KernelscaleError, ValueError, OSError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
