"""The streaming converter: one safetensors file, a sharded checkpoint or a model folder (DESIGN §6).

:func:`convert_checkpoint` plans the whole checkpoint from its headers
(:mod:`kernelscale.checkpoint_plan`), removes dead runs' leftovers and checks OUT and the free
space (:mod:`kernelscale.output`), streams every file into a temp entry beside OUT and checks it
against its plan (:mod:`kernelscale.stream`), then commits by renaming; on any failure or
interruption no OUT is left behind and the temp entry is removed. This module is the public front
of those three: every name in ``__all__`` is importable from here. The constants are read where
they are used, so a test that changes one patches that module (e.g. ``kernelscale.stream.COMPUTE_BYTES``).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Optional

import torch

from kernelscale.checkpoint import MANIFEST_KEY  # the metadata key of the manifest (docs/format.md)
from kernelscale.checkpoint_plan import (
    FOREIGN_WEIGHTS,
    OLD_TAG,
    OUTPUT_DTYPES,
    TMP_TAG,
    CheckpointPlan,
    CheckpointScan,
    ConvertSummary,
    ExtraFile,
    FilePlan,
    PathLike,
    _summary,
    describe_entries,
    plan_checkpoint,
    scan_checkpoint,
    shape_text,
)
from kernelscale.errors import BackendUnavailableError, InvalidOptionError
from kernelscale.output import SPACE_MARGIN, OutputError, _Output, check_free_space, clean_stale
from kernelscale.plan import ResizeOptions
from kernelscale.stream import (
    BLOCK_BYTES,
    COMPUTE_BYTES,
    QUEUE_DEPTH,
    SLOW_WRITE_ENV,
    _write_extra,
    _write_safetensors,
    compute_workers,
    verify_output,
)

__all__ = [
    "AUTO_CUDA_MIN_BYTES", "BLOCK_BYTES", "COMPUTE_BYTES", "DEVICES", "FOREIGN_WEIGHTS", "MANIFEST_KEY", "OLD_TAG", "OUTPUT_DTYPES", "QUEUE_DEPTH",
    "SLOW_WRITE_ENV", "SPACE_MARGIN", "TMP_TAG", "CheckpointPlan", "CheckpointScan", "ConvertSummary", "ExtraFile", "FilePlan",
    "OutputError", "PathLike", "check_free_space", "clean_stale", "compute_workers", "convert_checkpoint", "describe_entries",
    "plan_checkpoint", "resolve_device", "scan_checkpoint", "shape_text", "verify_output",
]


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
    """Convert a checkpoint (file, ``*.safetensors.index.json`` or folder) from ``src`` to ``dst``.

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
    src = os.path.abspath(os.fspath(src))
    dst = os.path.abspath(os.fspath(dst))
    resolve_device(device)  # a bad or unavailable device is refused before any reading
    plan = plan_checkpoint(src, options, dtype=dtype, dst=dst)
    torch_device = resolve_device(device, plan.bytes_resized)
    # before the checks: a dead run's leftovers may include the previous OUT, moved aside
    cleaned = clean_stale(dst) if not dry_run else []
    output = _Output(plan, dst, force)
    check_free_space(output.parent, plan.bytes_out)
    if dry_run:
        return _summary(plan, dst, torch_device.type, time.perf_counter() - started, True)

    bar = _progress_bar(progress, plan.bytes_out)
    tick = bar.update if bar is not None else (lambda n: None)
    committed = False
    try:
        output.begin()
        for fp in plan.files:
            path = output.path_for(fp.rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _write_safetensors(fp, path, torch_device, tick)
            verify_output(path, fp)
        for extra in plan.extras:
            _write_extra(extra, output.path_for(extra.rel))
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
    return _summary(plan, dst, torch_device.type, time.perf_counter() - started, False, cleaned)


def _progress_bar(progress: Optional[bool], total: int):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, file=sys.stderr, desc="kernelscale", leave=False,
                dynamic_ncols=True)
