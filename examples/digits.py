"""The example network: a small CNN trained on scikit-learn's bundled 8×8 digits.

    python examples/digits.py train                     # writes examples/digits_cnn.safetensors
    python examples/digits.py evaluate CHECKPOINT [--size 16]

``evaluate`` loads a checkpoint — the original, or one written by ``kernelscale convert`` (read
through ``kernelscale.nn.load``, which applies the recorded geometry) — and reports accuracy on
the held-out digits, bicubic-upsampled to ``--size`` pixels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = SEED) -> nn.Module:
    """Adam (lr 3e-3), batches of 64 in an order seeded with ``seed``; returns the model in eval mode."""
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
    torch.manual_seed(SEED)
    x_train, y_train, x_test, y_test = load_digits_split()
    model = fit(DigitsCNN(), x_train, y_train, epochs)
    print(f"test accuracy at 8×8: {accuracy(model, x_test, y_test):.4f}")
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train the example CNN and write examples/digits_cnn.safetensors")
    ev = sub.add_parser("evaluate", help="accuracy of a checkpoint on upsampled held-out digits")
    ev.add_argument("checkpoint", type=Path)
    ev.add_argument("--size", type=int, default=None, help="input size in pixels (default: 8 × the manifest's scale)")
    args = parser.parse_args(argv)

    if args.command == "train":
        from safetensors.torch import save_file

        model = train()
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(CHECKPOINT), metadata={"description": "kernelscale example: DigitsCNN on sklearn 8x8 digits"})
        print(f"wrote {CHECKPOINT} ({CHECKPOINT.stat().st_size} bytes)")
        return 0

    from kernelscale.nn import load, read_manifest

    manifest = read_manifest(args.checkpoint)
    scale = 1.0
    if manifest is not None:
        scale = float(manifest["options"]["scale"] if not isinstance(manifest["options"]["scale"], list) else manifest["options"]["scale"][-1])
    size = args.size or int(round(8 * scale))
    model = DigitsCNN()
    load(model, args.checkpoint)
    *_, x_test, y_test = load_digits_split()
    print(f"{args.checkpoint.name}: accuracy on held-out digits at {size}×{size}: {accuracy(model, upsample(x_test, size), y_test):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
