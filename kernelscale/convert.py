"""The streaming converter: one safetensors file, a sharded checkpoint or a model folder (DESIGN §6).

:func:`convert_checkpoint` plans the whole checkpoint from its headers
(:mod:`kernelscale.checkpoint_plan`), removes dead runs' leftovers and checks OUT and the free
space (:mod:`kernelscale.io.output`), streams every file into a temp entry beside OUT and checks it
against its plan (:mod:`kernelscale.stream`), then commits by renaming; on any failure or
interruption no OUT is left behind and the temp entry is removed. This module is the public front
of those three; :class:`ConvertSummary` reports what a conversion did or would do.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from kernelscale.checkpoint_plan import CheckpointPlan, plan_checkpoint
from kernelscale.errors import BackendUnavailableError, InvalidOptionError
from kernelscale.io.safetensors_io import PathLike
from kernelscale.io.output import AtomicOutput, OutputError, check_free_space, clean_stale, resolve_output
from kernelscale.options import ResizeOptions
from kernelscale.stream import verify_output, write_extra, write_safetensors
from kernelscale.text import human_bytes

__all__ = ["AUTO_CUDA_MIN_BYTES", "DEVICES", "ConvertSummary", "convert_checkpoint", "resolve_device"]


DEVICES = ("auto", "cpu", "cuda")


# Under ``auto``, a checkpoint whose resized tensors come to less than this stays on the CPU:
# creating the CUDA context and compiling the Triton kernels on first use cost about a second,
# which the CPU path does not pay; at 256 MiB of output the CPU resize itself takes about as long
# (roughly 1.3 GB/s per core in benchmarks/bench_kernels.py).
AUTO_CUDA_MIN_BYTES = 256 << 20


def resolve_device(device: str, bytes_resized: Optional[int] = None) -> torch.device:
    """Where resizing runs. ``cpu``; ``cuda`` (an error without a GPU); ``auto``: CUDA when torch
    sees a GPU and ``bytes_resized`` (the resized tensors' output bytes, when known) is at least
    :data:`AUTO_CUDA_MIN_BYTES`, else CPU. CUDA means the caller's current device, index included."""
    if device not in DEVICES:
        raise InvalidOptionError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    if device == "cpu":
        return torch.device("cpu")
    if device == "auto":
        small = bytes_resized is not None and bytes_resized < AUTO_CUDA_MIN_BYTES
        return _current_cuda() if torch.cuda.is_available() and not small else torch.device("cpu")
    if not torch.cuda.is_available():
        raise BackendUnavailableError(f"--device cuda: torch {torch.__version__} sees no CUDA device here")
    return _current_cuda()


def _current_cuda() -> torch.device:
    # With its index: the resize workers are other threads, whose current device is the default
    # one, not the one the caller chose with torch.cuda.set_device.
    return torch.device("cuda", torch.cuda.current_device())


def convert_checkpoint(
    src: PathLike,
    dst: PathLike,
    options: ResizeOptions,
    *,
    dtype: str = "keep",
    device: str = "auto",
    force: bool = False,
    progress: Optional[bool] = None,
    dry_run: bool = False,
) -> ConvertSummary:
    """Convert a checkpoint (file, ``*.safetensors.index.json`` or folder) from ``src`` to ``dst``
    (a file ``src`` into a ``dst`` folder when ``dst`` ends in ``/`` or is a folder; a folder or
    index ``src`` never into a ``dst`` named ``*.safetensors``: :func:`kernelscale.io.output.resolve_output`).

    ``dtype``: ``keep``, or ``float16``/``bfloat16``/``float32`` for every floating tensor (resized
    ones are computed in float32 and rounded once to it; other floating tensors are cast; integer,
    bool and float8 tensors stay byte-exact). ``device``: where resizing runs (see
    :func:`resolve_device`; the summary says which was used). ``force``: replace an existing
    ``dst``. ``progress``: a tqdm bar on stderr (None = only when stderr is a terminal).
    ``dry_run``: plan and check everything, write nothing.

    Raises KernelscaleError subclasses for bad input or options and OutputError when ``dst`` cannot
    be written; on any failure or interruption no ``dst`` is left behind and temp files are removed.
    """
    started = time.perf_counter()
    if not os.fspath(dst):
        raise OutputError("OUT is empty; give the output's file or folder name")
    try:
        os.fsencode(dst)
    except UnicodeEncodeError as exc:  # e.g. a lone surrogate: no file can have that name
        raise OutputError(f"OUT {os.fspath(dst)!r} cannot be a file name on this system: {exc.reason} "
                          f"at character {exc.start}") from None
    src = os.fspath(src)  # scan_checkpoint refuses an empty IN, which abspath would make the current folder
    dst = resolve_output(os.path.abspath(src), os.fspath(dst)) if src else os.path.abspath(os.fspath(dst))
    resolve_device(device)  # a bad or unavailable device is refused before any reading
    plan = plan_checkpoint(src, options, dtype=dtype, dst=dst)
    torch_device = resolve_device(device, plan.bytes_resized)
    # before the checks: a dead run's leftovers may include the previous OUT, moved aside
    cleaned = clean_stale(dst) if not dry_run else []
    output = AtomicOutput(plan, dst, force)
    check_free_space(output.parent, plan.bytes_out)
    if dry_run:
        return summarize(plan, dst, torch_device.type, time.perf_counter() - started, True)

    bar = _progress_bar(progress, plan.bytes_out)
    tick = bar.update if bar is not None else (lambda n: None)
    committed = False
    try:
        output.begin()
        for fp in plan.files:
            path = output.path_for(fp.rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_safetensors(fp, path, torch_device, tick)
            verify_output(path, fp)
        for extra in plan.extras:
            write_extra(extra, output.path_for(extra.rel))
            tick(extra.size)
        output.commit(force)
        committed = True
    except OSError as exc:
        raise OutputError(f"cannot write {dst}: {exc.strerror or exc}"
                          + (f" ({exc.filename})" if getattr(exc, "filename", None) else "")) from exc
    finally:
        if bar is not None:
            bar.close()
        if not committed:
            output.abort()
    return summarize(plan, dst, torch_device.type, time.perf_counter() - started, False, cleaned)


def _progress_bar(progress: Optional[bool], total: int):
    if progress is None:  # sys.stderr is None when the process started with it closed
        progress = sys.stderr is not None and sys.stderr.isatty()
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, file=sys.stderr, desc="kernelscale", leave=False,
                dynamic_ncols=True)


# --- the summary -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvertSummary:
    """What a conversion did (or, with ``dry_run``, would do). ``tensors_resized``: new kernels
    (grids, weight norm's g with its v); ``tensors_rescaled``: query projections multiplied by an
    attention temperature (values only, shapes kept); ``tensors_dilated``: geometry-only records."""

    src: str
    dst: str
    layout: str
    dry_run: bool
    device: str
    dtype: str
    tensors_resized: int
    tensors_rescaled: int
    tensors_dilated: int
    tensors_cast: int
    tensors_copied: int
    bytes_in: int
    bytes_out: int
    seconds: float
    files: tuple[dict[str, Any], ...] = ()
    copied_files: tuple[str, ...] = ()
    rewritten_files: tuple[str, ...] = ()
    skipped_files: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    loading: tuple[dict[str, Any], ...] = ()
    tensors_factored: int = 0
    cleaned: tuple[str, ...] = ()
    fallbacks: tuple[str, ...] = ()
    plan: Optional[CheckpointPlan] = field(default=None, repr=False, compare=False)

    @property
    def mb_per_s(self) -> float:
        """Output megabytes (10⁶ bytes) written per second of the whole run."""
        return self.bytes_out / 1e6 / self.seconds if self.seconds > 0 and not self.dry_run else 0.0

    def to_json(self) -> dict[str, Any]:
        data = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items() if k != "plan"}
        data["seconds"] = round(self.seconds, 3)
        data["mb_per_s"] = round(self.mb_per_s, 1)
        return data

    def describe(self) -> str:
        """The closing one-line summary."""
        parts = [f"{self.tensors_resized} resized"]
        if self.tensors_rescaled:
            parts.append(f"{self.tensors_rescaled} rescaled (attention temperature)")
        if self.tensors_dilated:
            parts.append(f"{self.tensors_dilated} re-dilated")
        if self.tensors_factored:
            parts.append(f"{self.tensors_factored} factored (bytes kept)")
        if self.tensors_cast:
            parts.append(f"{self.tensors_cast} cast")
        parts.append(f"{self.tensors_copied} copied")
        if self.fallbacks:
            shown = ", ".join(self.fallbacks[:3]) + (f", … ({len(self.fallbacks)} in all)" if len(self.fallbacks) > 3 else "")
            parts.append(f"{len(self.fallbacks)} by the fallback method ({shown})")
        files = len(self.files) + len(self.copied_files) + len(self.rewritten_files)
        where = f"{self.src} -> {self.dst}"
        if self.dry_run:
            return (f"dry run: {where}: would write {files} file(s), {human_bytes(self.bytes_out)}; tensors: {', '.join(parts)}; "
                    f"{human_bytes(self.bytes_in)} in")
        return (f"{where}: {files} file(s); tensors: {', '.join(parts)}; {human_bytes(self.bytes_in)} in, {human_bytes(self.bytes_out)} out "
                f"in {self.seconds:.1f} s ({self.mb_per_s:.0f} MB/s)")


def summarize(plan: CheckpointPlan, dst: str, device: str, seconds: float, dry_run: bool, cleaned: Sequence[str] = ()) -> ConvertSummary:
    """The summary of converting (or, with ``dry_run``, planning) ``plan`` to ``dst`` on ``device`` in ``seconds``."""
    counts = plan.counts()
    files = tuple({"input": fp.src, "output": fp.rel or dst, **fp.counts(),
                   "bytes_in": fp.bytes_in, "bytes_out": fp.bytes_out} for fp in plan.files)
    return ConvertSummary(
        src=plan.src, dst=dst, layout=plan.layout, dry_run=dry_run, device=device, dtype=plan.dtype,
        tensors_resized=counts["resize"], tensors_rescaled=counts["rescale"], tensors_dilated=counts["dilate"], tensors_cast=counts["cast"], tensors_copied=counts["copy"],
        tensors_factored=counts["factored"], bytes_in=plan.bytes_in, bytes_out=plan.bytes_out, seconds=seconds, files=files,
        copied_files=tuple(x.rel for x in plan.extras if x.data is None),
        rewritten_files=tuple(x.rel for x in plan.extras if x.data is not None),
        skipped_files=plan.skipped, notes=plan.notes, loading=plan.loading, cleaned=tuple(cleaned), plan=plan,
        fallbacks=tuple(f"{e.name}: {e.record.fallback} -> {e.record.method}" for fp in plan.files for e in fp.entries
                        if e.record is not None and getattr(e.record, "fallback", None)),
    )
