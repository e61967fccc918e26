"""Generation at 2× and 3× the training resolution: does a method remove duplication?

    python benchmarks/exp_generation.py                # the full run recorded in docs/generation.md
    python benchmarks/exp_generation.py --quick        # a smoke run on a handful of samples

The model: examples/digits_diffusion.safetensors (class-conditional UNet2DModel trained at 16×16).
For each scale (2: 32², 3: 48²) and each method in ``METHODS``, every seed samples
``--per-class`` digits of every class with DDIM (``--steps``) and classifier-free guidance
(``--guidance``), and examples/generation_metrics.py scores them: Fréchet distance in the
features of a classifier trained at 16×16 (samples area-downsampled to 16×16, against the
held-out real digits; pooled over seeds, with the floor of real digits at the same N), class
accuracy and duplication rate (mean ± standard deviation over seeds), network evaluations (rows
of the batch the UNet saw, per sample) and CPU time per sample (one thread: the wall time on an idle core). It prints the tables of
docs/generation.md (Markdown) and writes a grid of the first seed's samples per method and scale
(``--png``, default docs/generation_samples.png).

A method is one entry of ``METHODS``: a label and a :class:`Recipe` — the network at the new size
(the trained weights: direct inference; ``supersample`` options: weight surgery, e.g. interp,
dilate, geometry-only dilate; or a re-dilation :class:`Schedule`), optionally with upsample
guidance (w, η) and noise-damped CFG (τ), all from ``kernelscale.sampling``. A recipe is called
with (trained model, integer scale, guidance scale) and returns the ε function for
``ddim_sample`` and the networks it evaluates (counted by forward hooks).

``--cache DIR`` keeps each finished (method, scale) run, so subsets run with ``--methods`` in
separate processes combine into one table: a last run with every method reads them back.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import digits_diffusion as dd  # noqa: E402
from generation_metrics import Metrics, Report  # noqa: E402

import kernelscale.sampling as ks  # noqa: E402
from kernelscale.layers import FactoredConv  # noqa: E402
from kernelscale.nn import supersample  # noqa: E402

QUICK_STEPS = 2
TRAIN_STEPS = 1000  # the schedule's T (examples/digits_diffusion.py SCHEDULE)
REFERENCE_STEPS = 50  # τ of re-dilation and ND-CFG counts steps of a 50-step sampler, as ScaleCrafter's

# (trained model, integer scale, guidance scale) -> (ε function for ddim_sample, the networks it evaluates)
Builder = Callable[[nn.Module, int, float], "tuple[dd.EpsFn, list[nn.Module]]"]


@dataclass(frozen=True)
class Method:
    """A row of the table: its label and its builder (a :class:`Recipe`)."""

    label: str
    build: "Recipe"


def direct(model: nn.Module, scale: int, guidance: float) -> tuple[dd.EpsFn, list[nn.Module]]:
    """The unmodified network on the s× larger canvas."""
    return dd.guided(model, guidance), [model]


def weight_method(**options: Any) -> Builder:
    """Weight surgery: a copy of the model through ``supersample(copy, scale, **options)``."""

    def build(model: nn.Module, scale: int, guidance: float) -> tuple[dd.EpsFn, list[nn.Module]]:
        resized = copy.deepcopy(model)
        supersample(resized, scale, **{"execution": "materialised", **options})  # the factored rows: Factored
        return dd.guided(resized, guidance), [resized]

    return build


def nominal_step(t: int) -> int:
    """The step index i of timestep t on a ``REFERENCE_STEPS``-step sampler, i = ⌊(T−1−t)·50/T⌋
    (as kernelscale.integrations.diffusers counts): τ keeps ScaleCrafter's meaning (a noise level)
    at any number of DDIM steps. With 10 steps, t = 900, 800, …, 0 are i = 4, 9, …, 49."""
    return (TRAIN_STEPS - 1 - int(t)) * REFERENCE_STEPS // TRAIN_STEPS


def conv_names(model: nn.Module, levels: str) -> list[str]:
    """The 3×3 convs of the digits UNet to re-dilate. ``"all"``: every one (the stride-2
    downsampler included). ``"inner"``: ScaleCrafter's SD settings fitted to this two-level UNet —
    the outermost level (conv_in, down_blocks.0, up_blocks.1, conv_out) stays plain, every conv of
    the inner level (down_blocks.1, mid_block, up_blocks.0 and its upsampler, which SD's settings
    dilate too) gets the factor; the 1×1 shortcuts are never dilated."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    if levels == "all":
        return names
    if levels == "inner":
        return [n for n in names if n.startswith(("down_blocks.1.", "mid_block.", "up_blocks.0."))]
    raise ValueError(f"conv_names: levels must be 'all' or 'inner', got {levels!r}")


@dataclass(frozen=True)
class Schedule:
    """A re-dilation schedule (kernelscale.sampling): the layers (``conv_names`` levels) at factor
    s for nominal steps i < τ, ScaleCrafter's progressive rule when ``progressive``, plain after."""

    levels: str
    tau: int
    progressive: bool


class Redilated:
    """A copy of the trained network whose scheduled convs run ``kernelscale.sampling.redilated_conv``
    at the factor ``kernelscale.sampling.layer_dilations`` gives for the current step (set by
    :meth:`at`); the weights are the trained ones."""

    def __init__(self, model: nn.Module, scale: int, schedule: Schedule):
        self.net = copy.deepcopy(model)
        self.schedule = schedule
        self.settings = {name: float(scale) for name in conv_names(self.net, schedule.levels)}
        self.factors = {name: 1.0 for name in self.settings}
        for name in self.settings:
            conv = self.net.get_submodule(name)
            conv.forward = functools.partial(self._forward, conv, name)

    def _forward(self, conv: nn.Conv2d, name: str, x: torch.Tensor) -> torch.Tensor:
        return ks.redilated_conv(x, conv.weight, conv.bias, self.factors[name], stride=conv.stride, groups=conv.groups)

    def at(self, t: int) -> nn.Module:
        """The network with its factors set for timestep t."""
        self.factors = ks.layer_dilations(self.settings, nominal_step(t), self.schedule.tau,
                                          progressive=self.schedule.progressive)
        return self.net


class Factored:
    """A copy of the trained network whose convs are ``kernelscale.layers.FactoredConv`` (DESIGN §9):
    the trained taps, run as prefilter + dilated conv (``"interpolated"``, equal to interp's
    materialised kernel by T2) — or, with a switch step τ, as the geometry-only re-dilation
    (``"dilated"``) for nominal steps i < τ and interpolated afterwards; the state is a buffer-free
    switch per step, no weight changes."""

    def __init__(self, model: nn.Module, scale: int, mode: str, switch_tau: Optional[int] = None):
        self.net = copy.deepcopy(model)
        self.switch_tau = switch_tau
        self.layers: list[FactoredConv] = []
        for name, conv in [(n, m) for n, m in self.net.named_modules() if isinstance(m, nn.Conv2d)]:
            parent, _, child = name.rpartition(".")
            layer = FactoredConv.from_conv(conv, scale, method="interp", mode=mode)
            setattr(self.net.get_submodule(parent) if parent else self.net, child, layer)
            self.layers.append(layer)

    def at(self, t: int) -> nn.Module:
        """The network with every layer's state set for timestep t."""
        state = "dilated" if self.switch_tau is not None and nominal_step(t) < self.switch_tau else "interpolated"
        for layer in self.layers:
            layer.state = state
        return self.net


@dataclass(frozen=True)
class Recipe:
    """A sampling-time method, optionally on top of weight surgery.

    - ``weights``: ``supersample`` options for the network at the new size (None: the trained
      weights, i.e. direct inference); ``schedule``: a re-dilation schedule instead; ``factored``:
      (interp mode, switch τ or None) for a :class:`Factored` network instead.
    - ``ug``: upsample guidance (w, η) — ``kernelscale.sampling``'s ``low_res_step`` (continuous τ,
      SNR matching), ``guidance_weight`` and ``upsample_guidance.combine`` — with the trained
      network at 16² (both CFG halves) as the low-resolution model.
    - ``nd_tau``: noise-damped CFG (``kernelscale.sampling.nd_cfg``) for nominal steps i < τ, the
      trained network on the s× canvas (direct inference) as the base model's unconditional term,
      the guidance direction from the network above; plain CFG afterwards.
    """

    weights: Optional[dict[str, Any]] = None
    schedule: Optional[Schedule] = None
    ug: Optional[tuple[float, float]] = None
    nd_tau: Optional[int] = None
    factored: Optional[tuple[str, Optional[int]]] = None

    def __call__(self, model: nn.Module, scale: int, guidance: float) -> tuple[dd.EpsFn, list[nn.Module]]:
        if sum(option is not None for option in (self.weights, self.schedule, self.factored)) > 1:
            raise ValueError(f"a recipe has at most one of weights {self.weights}, schedule {self.schedule} and "
                             f"factored {self.factored}")
        if self.factored is not None:
            factored = Factored(model, scale, *self.factored)
            network = factored.at
            networks = [model, factored.net]
        elif self.weights is not None:
            resized = copy.deepcopy(model)
            supersample(resized, scale, **{"execution": "materialised", **self.weights})
            network: Callable[[int], nn.Module] = lambda t: resized  # noqa: E731
            networks = [model, resized]
        elif self.schedule is not None:
            redilated = Redilated(model, scale, self.schedule)
            network = redilated.at
            networks = [model, redilated.net]
        else:
            network = lambda t: model  # noqa: E731
            networks = [model]
        factors = (scale, scale)
        alphas = dd.noise_scheduler("ddim").alphas_cumprod

        def halves(net: nn.Module, x: torch.Tensor, t: Union[int, torch.Tensor], labels: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
            null = torch.full_like(labels, dd.NULL_CLASS)
            cond, uncond = net(torch.cat([x, x]), t, class_labels=torch.cat([labels, null])).sample.chunk(2)
            return cond, uncond

        def eps(x: torch.Tensor, t: int, labels: torch.Tensor) -> torch.Tensor:
            cond, uncond = halves(network(t), x, t, labels)
            if self.nd_tau is not None and ks.nd_cfg_active(nominal_step(t), self.nd_tau):
                base = model(x, t, class_labels=torch.full_like(labels, dd.NULL_CLASS)).sample
                out = ks.nd_cfg(base, uncond, cond, guidance)
            else:
                out = ks.cfg(uncond, cond, guidance)
            if self.ug is not None:
                w_t = ks.guidance_weight(float(t), w=self.ug[0], eta=self.ug[1], t_max=TRAIN_STEPS)
                if w_t:
                    low = ks.low_res_step(x, alphas, float(t), factors)
                    low_cond, low_uncond = halves(model, low.sample, low.timestep.to(torch.float32), labels)
                    out = ks.upsample_guidance.combine(out, ks.cfg(low_uncond, low_cond, guidance), factors, w_t)
            return out

        return eps, networks

    def evals(self, timesteps: Sequence[int]) -> int:
        """Network rows per sample over a sampling run at ``timesteps``: the two CFG halves per
        step, one more row per noise-damped step, two more (at 16²) per upsample-guided step."""
        n = 2 * len(timesteps)
        if self.nd_tau is not None:
            n += sum(nominal_step(t) < self.nd_tau for t in timesteps)
        if self.ug is not None:
            n += 2 * sum(float(t) >= (1 - self.ug[1]) * TRAIN_STEPS for t in timesteps)
        return n


GEOMETRY_DILATE = dict(method="dilate", geometry_only=True)
INTERP_LINEAR = dict(method="interp", mode="linear")
ALL_CONVS = Schedule("all", tau=30, progressive=True)
ALL_CONVS_40 = Schedule("all", tau=40, progressive=True)
INNER_LEVEL = Schedule("inner", tau=30, progressive=True)

METHODS: dict[str, Method] = {
    "direct": Method("direct inference", Recipe()),
    "interp-linear": Method("interp, linear taps", Recipe(weights=INTERP_LINEAR)),
    "interp-cubic": Method("interp, cubic taps", Recipe(weights=dict(method="interp", mode="cubic"))),
    "interp-cells": Method("interp, linear cells (paper)",
                           Recipe(weights=dict(method="interp", mode="linear", align="cells", padding="asymmetric"))),
    "dilate": Method("dilate (every conv)", Recipe(weights=dict(method="dilate"))),
    "factored-linear": Method("interp, linear taps, factored", Recipe(factored=("linear", None))),
    "factored-cubic": Method("interp, cubic taps, factored", Recipe(factored=("cubic", None))),
    "dilate-geometry": Method("dilate, geometry only", Recipe(weights=GEOMETRY_DILATE)),
    "ug-0.5": Method("UG w=0.5 η=1", Recipe(ug=(0.5, 1.0))),
    "ug-1": Method("UG w=1 η=1", Recipe(ug=(1.0, 1.0))),
    "ug-1.5": Method("UG w=1.5 η=1", Recipe(ug=(1.5, 1.0))),
    "ug-2": Method("UG w=2 η=1", Recipe(ug=(2.0, 1.0))),
    "ug-1-eta0.8": Method("UG w=1 η=0.8", Recipe(ug=(1.0, 0.8))),
    "ug-1-eta0.5": Method("UG w=1 η=0.5", Recipe(ug=(1.0, 0.5))),
    "nd-cfg": Method("ND-CFG, base direct, direction dilate", Recipe(weights=GEOMETRY_DILATE, nd_tau=REFERENCE_STEPS)),
    "redilate-all": Method("re-dilation, every conv, τ=30", Recipe(schedule=ALL_CONVS)),
    "redilate-all-40": Method("re-dilation, every conv, τ=40", Recipe(schedule=ALL_CONVS_40)),
    "redilate-inner": Method("re-dilation, inner level, τ=30", Recipe(schedule=INNER_LEVEL)),
    "ug-dilate": Method("UG w=1 + dilate, geometry only", Recipe(weights=GEOMETRY_DILATE, ug=(1.0, 1.0))),
    "ug-redilate-inner": Method("UG w=1 + re-dilation, inner level, τ=30", Recipe(schedule=INNER_LEVEL, ug=(1.0, 1.0))),
    "dilate-then-interp": Method("factored cubic: dilated for τ=40, then interpolated", Recipe(factored=("cubic", 40))),
    "ug-interp": Method("UG w=1 + interp linear taps", Recipe(weights=INTERP_LINEAR, ug=(1.0, 1.0))),
    "nd-redilate-all": Method("ND-CFG + re-dilation, every conv, τ=30", Recipe(schedule=ALL_CONVS, nd_tau=ALL_CONVS.tau)),
    "nd-redilate-inner": Method("ND-CFG + re-dilation, inner level, τ=30", Recipe(schedule=INNER_LEVEL, nd_tau=INNER_LEVEL.tau)),
}


@dataclass
class Run:
    """One method at one scale: per-seed reports, the pooled report, cost per sample."""

    seeds: list[Report]
    pooled: Report
    evals: float
    seconds: float
    images: torch.Tensor  # the first seed's samples


def count_rows(networks: Sequence[nn.Module]) -> tuple[list[int], list[Any]]:
    """A counter of batch rows seen by ``networks``' forwards, and the hook handles."""
    counter = [0]
    handles = [net.register_forward_pre_hook(lambda _m, args: counter.__setitem__(0, counter[0] + len(args[0])))
               for net in networks]
    return counter, handles


def run_method(build: Builder, model: nn.Module, scale: int, seeds: Sequence[int], per_class: int, steps: int,
               guidance: float, metrics: Metrics) -> Run:
    """Sample and score one method at one scale (one torch thread, as everything here)."""
    labels = dd.class_labels(per_class)
    reports, batches, evals, seconds = [], [], 0, 0.0
    with dd.deterministic():
        eps, networks = build(model, scale, guidance)
        counter, handles = count_rows(networks)
        try:
            for seed in seeds:
                start = time.process_time()
                images = dd.ddim_sample(eps, labels, dd.RESOLUTION * scale, steps, seed)
                seconds += time.process_time() - start
                batches.append(images)
                reports.append(metrics.report(images, labels, scale))
        finally:
            for handle in handles:
                handle.remove()
        evals = counter[0]
    n = len(labels) * len(seeds)
    pooled = metrics.report(torch.cat(batches), labels.repeat(len(seeds)), scale)
    return Run(reports, pooled, evals / n, seconds / n, batches[0])


def spread(values: Sequence[float], digits: int = 2) -> str:
    """"mean ± std" over seeds (std with n − 1; just the mean for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def tables(results: dict[int, dict[str, Run]], floor: float, reference: Optional[Run]) -> str:
    """Markdown: quality (methods × scales, ScaleCrafter's layout) and cost."""
    scales = sorted(results)
    head = "| method | " + " | ".join(f"{16 * s}² FD ↓ | {16 * s}² class acc ↑ | {16 * s}² dup ↓" for s in scales) + " |"
    lines = [head, "|---" * (1 + 3 * len(scales)) + "|"]
    names = list(next(iter(results.values())))
    for name in names:
        cells = []
        for s in scales:
            run = results[s][name]
            cells += [f"{run.pooled.fd:.1f}", spread([r.accuracy for r in run.seeds]),
                      spread([r.duplication for r in run.seeds])]
        lines.append(f"| {METHODS[name].label} | " + " | ".join(cells) + " |")
    if reference is not None:
        lines.append(f"| *trained resolution, 16²* | {reference.pooled.fd:.1f} | {spread([r.accuracy for r in reference.seeds])} "
                     f"| {spread([r.duplication for r in reference.seeds])} |" + " |" * (3 * len(scales) - 3))
    lines.append(f"| *real held-out digits, same N* | {floor:.1f} | | |" + " |" * (3 * len(scales) - 3))
    lines += ["", "| method | " + " | ".join(f"{16 * s}² evals/sample | {16 * s}² CPU s/sample" for s in scales) + " |",
              "|---" * (1 + 2 * len(scales)) + "|"]
    for name in names:
        cells = []
        for s in scales:
            run = results[s][name]
            cells += [f"{run.evals:.0f}", f"{run.seconds:.3f}"]
        lines.append(f"| {METHODS[name].label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sample_grid(results: dict[int, dict[str, Run]], path: Path) -> None:
    """One row per method, one column per scale: the first seed's samples, labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = sorted(results)
    names = list(results[scales[0]])
    columns = max(len(results[s][name].images) for s in scales for name in names)
    figure, axes = plt.subplots(len(names), len(scales), figsize=(len(scales) * (columns * 0.45 + 0.2) + 2.4,
                                                                   len(names) * 0.5 + 0.4), squeeze=False)
    for row, name in enumerate(names):
        for col, s in enumerate(scales):
            axis = axes[row, col]
            images = results[s][name].images
            size = images.shape[-1]
            strip = torch.ones(size, len(images) * (size + 2) - 2)
            for i, image in enumerate(images):
                strip[:, i * (size + 2):i * (size + 2) + size] = 1 - image[0]
            axis.imshow(strip.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(f"{size}²", fontsize=8)
            if col == 0:
                axis.set_ylabel(METHODS[name].label, rotation=0, ha="right", va="center", fontsize=7)
    figure.tight_layout()
    figure.savefig(str(path), dpi=110)
    plt.close(figure)


def cache_path(cache: Path, name: str, scale: int, seeds: int, per_class: int, steps: int, guidance: float) -> Path:
    return cache / f"{name}-x{scale}-seeds{seeds}-pc{per_class}-steps{steps}-w{guidance:g}.pt"


def save_run(run: Run, path: Path) -> None:
    """Write a run as plain data (reports as dicts), so runs from separate processes combine."""
    torch.save(dict(seeds=[dataclasses.asdict(r) for r in run.seeds], pooled=dataclasses.asdict(run.pooled),
                    evals=run.evals, seconds=run.seconds, images=run.images), str(path))


def load_run(path: Path) -> Run:
    data = torch.load(str(path))
    return Run([Report(**r) for r in data["seeds"]], Report(**data["pooled"]), data["evals"], data["seconds"],
               data["images"])


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"smoke run: scale 2, one seed, 1 per class, {QUICK_STEPS} steps")
    parser.add_argument("--checkpoint", type=Path, default=dd.CHECKPOINT)
    parser.add_argument("--scales", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 … n−1")
    parser.add_argument("--per-class", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "generation_samples.png")
    parser.add_argument("--cache", type=Path, default=None,
                        help="a folder for finished (method, scale) runs: reused when present, so runs of "
                             "--methods subsets in separate processes combine into one table")
    args = parser.parse_args(argv)
    if args.quick:
        args.scales, args.seeds, args.per_class, args.steps = [2], 1, 1, QUICK_STEPS
    if min(args.scales) < 2 or args.seeds < 1 or args.per_class < 1 or args.steps < 1:
        parser.error(f"scales must be integers ≥ 2 and seeds, per-class, steps ≥ 1; got {args.scales}, "
                     f"{args.seeds}, {args.per_class}, {args.steps}")

    model = dd.load_model(args.checkpoint)
    metrics = Metrics.fit()
    seeds = list(range(args.seeds))
    reference = run_method(direct, model, 1, seeds, args.per_class, args.steps, args.guidance, metrics)
    results: dict[int, dict[str, Run]] = {}
    for scale in args.scales:
        results[scale] = {}
        for name in args.methods:
            path = None
            if args.cache is not None:
                args.cache.mkdir(parents=True, exist_ok=True)
                path = cache_path(args.cache, name, scale, args.seeds, args.per_class, args.steps, args.guidance)
            if path is not None and path.exists():
                run = load_run(path)
            else:
                run = run_method(METHODS[name].build, model, scale, seeds, args.per_class, args.steps, args.guidance,
                                 metrics)
                if path is not None:
                    save_run(run, path)
            results[scale][name] = run
            print(f"[{16 * scale}² {name}] " + run.pooled.line("pooled") + f"; {run.evals:.0f} evals, "
                  f"{run.seconds:.3f} s per sample", file=sys.stderr, flush=True)
    floor = metrics.real_floor(reference.pooled.n)
    print(f"DDIM {args.steps} steps, guidance {args.guidance}, seeds {seeds}, {args.per_class} per class "
          f"(N = {reference.pooled.n} per method and scale), one torch thread\n")
    print(tables(results, floor, reference))
    sample_grid(results, args.png)
    print(f"\nwrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
