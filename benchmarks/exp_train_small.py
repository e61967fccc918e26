"""Train small, deploy large: the paper's training-memory claim, on scikit-learn's 8×8 digits.

    .venv/bin/python benchmarks/exp_train_small.py [--budget 0.97] [--seeds 3]

The same CNN (conv 3×3 1→16, ReLU, conv 3×3 16→32, ReLU, Linear over the (32, n, n) grid) is
trained twice per seed until its accuracy on a validation split (20 % of the training digits)
reaches the budget: at 8×8 on the digits, and at 16×16 on the digits upsampled bicubically. Then
the 8×8 model is resized to 16×16 by kernelscale.nn.supersample (no training) and everything is
evaluated on the held-out digits at 16×16.

Training memory is counted with torch's own accounting: a saved-tensor hook
(torch.autograd.graph.saved_tensors_hooks) sums the bytes of every distinct tensor autograd keeps
for the backward pass during one training step, parameters excluded: the activation memory,
which is what grows with the input's resolution. The peak over all steps is reported, for
batches of 64, float32. Parameter, gradient and Adam-state bytes are reported beside it.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exp_fc_interpolation import accuracy, cnn, load_split, seeded_init, upsample  # noqa: E402

from kernelscale.nn import supersample  # noqa: E402

BATCH = 64
MAX_EPOCHS = 60
RESIZES = [
    ("dilate (+ grid interp cells)", dict(method="dilate")),
    ("pinv cubic", dict(method="pinv", mode="cubic", padding="asymmetric")),
    ("interp cubic taps", dict(mode="cubic")),
    ("interp linear taps (default)", dict()),
]


class SavedBytes:
    """Peak bytes of the distinct non-parameter tensors autograd saves during one step."""

    def __init__(self, model: nn.Module):
        self.params = {p.data_ptr() for p in model.parameters()}
        self.step: dict[int, int] = {}
        self.peak = 0

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in self.params:
            self.step[ptr] = max(self.step.get(ptr, 0), tensor.untyped_storage().nbytes())
        return tensor

    def end_step(self) -> None:
        self.peak = max(self.peak, sum(self.step.values()))
        self.step = {}


def train_to_budget(size: int, x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
                    budget: float, seed: int) -> tuple[nn.Module, int, float, SavedBytes]:
    """Train cnn(size) until validation accuracy ≥ budget: (model, epochs, seconds, memory)."""
    model = seeded_init(cnn(size), seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    memory = SavedBytes(model)
    started = time.perf_counter()
    for epoch in range(1, MAX_EPOCHS + 1):
        model.train()
        for batch in torch.randperm(len(y), generator=generator).split(BATCH):
            optimiser.zero_grad()
            with torch.autograd.graph.saved_tensors_hooks(memory.pack, lambda t: t):
                loss = F.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimiser.step()
            memory.end_step()
        model.eval()
        if accuracy(model, x_val, y_val) >= budget:
            break
    return model, epoch, time.perf_counter() - started, memory


def state_bytes(model: nn.Module) -> int:
    """Parameters + gradients + Adam's two moments: 4 copies of every float32 parameter."""
    return 4 * sum(p.numel() * p.element_size() for p in model.parameters())


def run(seed: int, budget: float) -> dict:
    x_train, y_train, x_test, y_test = load_split(seed)
    cut = int(0.8 * len(y_train))
    x_fit, y_fit, x_val, y_val = x_train[:cut], y_train[:cut], x_train[cut:], y_train[cut:]
    row: dict = {}
    for size in (8, 16):
        model, epochs, seconds, memory = train_to_budget(size, upsample(x_fit, size), y_fit, upsample(x_val, size), y_val, budget, seed)
        row[size] = dict(model=model, epochs=epochs, seconds=seconds, activations=memory.peak, state=state_bytes(model),
                         val=accuracy(model, upsample(x_val, size), y_val), test=accuracy(model, upsample(x_test, size), y_test))
    x16 = upsample(x_test, 16)
    row["resized"] = {}
    for label, options in RESIZES:
        big = copy.deepcopy(row[8]["model"])
        supersample(big, 2, grids={"5": (32, 8, 8)}, **options)
        row["resized"][label] = accuracy(big, x16, y_test)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=0.97, help="validation accuracy to train to")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [run(seed, args.budget) for seed in range(args.seeds)]

    kib = lambda n: f"{n / 1024:.0f} KiB"  # noqa: E731
    print(f"Budget: {100 * args.budget:.0f} % validation accuracy; batch {BATCH}, float32, {args.threads} thread(s), torch {torch.__version__}")
    print()
    print("| seed | trained at | epochs to budget | train time (s) | peak activations / step | params+grads+Adam | test acc at own size |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for seed, row in enumerate(rows):
        for size in (8, 16):
            r = row[size]
            print(f"| {seed} | {size}×{size} | {r['epochs']} | {r['seconds']:.1f} | {kib(r['activations'])} | {kib(r['state'])} | {100 * r['test']:.1f} % |")
    print()
    ratios = [row[16]["activations"] / row[8]["activations"] for row in rows]
    time_ratios = [row[16]["seconds"] / row[8]["seconds"] for row in rows]
    print(f"Activation memory, 16×16 over 8×8: {', '.join(f'{r:.3f}×' for r in ratios)} (per seed); "
          f"training time ratio: {', '.join(f'{r:.1f}×' for r in time_ratios)}")
    print()
    print("| model on 16×16 bicubic digits | " + " | ".join(f"seed {s}" for s in range(len(rows))) + " | mean |")
    print("|---|" + "---:|" * (len(rows) + 1))
    entries = [("trained at 16×16", [row[16]["test"] for row in rows]), ("trained at 8×8, on 8×8 digits (reference)", [row[8]["test"] for row in rows])]
    entries += [(f"trained at 8×8, resized: {label}", [row["resized"][label] for row in rows]) for label, _ in RESIZES]
    for label, values in entries:
        print(f"| {label} | " + " | ".join(f"{100 * v:.1f} %" for v in values) + f" | {100 * sum(values) / len(values):.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
