"""Streaming one planned file from the input to its place in the output (DESIGN §6).

Per tensor either a raw byte copy, a cast, or read → resize (the entry's operator by
:mod:`kernelscale.execute`, in blocks of rows) → write; weight norm's g is read, rescaled for its
resized v (v read and resized again in the same blocks of rows, wherever it sits in the file or in
another shard: :func:`_renorm`) → written.

One thread lays the file out in order: it reserves each block's bytes in the output
(:class:`kernelscale.io.sink.DirectFileSink`, page-aligned blocks written with O_DIRECT where
possible), reads raw copies straight into them, and hands blocks to resize or cast to the workers
(:func:`compute_workers`: on CPU one single-threaded worker per usable core; on CUDA two, each on
its own stream), which compute straight into their reserved bytes; the sink's writer threads put
each block on disk once every reservation in it is filled. No result is copied between threads,
and the sink's fixed blocks bound memory, whatever the checkpoint's size. The input is only read;
each written file is fsynced, and :func:`verify_output` reopens it with kernelscale's own header
reader (nothing mapped) and checks it against its plan.

Test hook: ``KERNELSCALE_TEST_SLOW_WRITE=<seconds>`` sleeps that long after writing each
tensor, so tests can interrupt a conversion mid-write.
"""

from __future__ import annotations

import collections
import json
import math
import os
import shutil
import threading
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from kernelscale.checkpoint_plan import ExtraFile, FilePlan, WeightNormSource
from kernelscale.errors import InvalidCheckpointError
from kernelscale.execute import apply, check_result, execute, overflow_check
from kernelscale.io.checkpoint import MANIFEST_KEY  # the metadata key of the manifest (docs/format.md)
from kernelscale.io.output import OutputError, fsync_path
from kernelscale.io.prefetch import Readahead
from kernelscale.io.sink import DirectFileSink, Reservation
from kernelscale.io.safetensors_io import PathLike, SafetensorsReader, TensorInfo, encode_header, torch_dtype
from kernelscale.manifest import FORMAT_VERSION, Action
from kernelscale.plan import TensorPlan
from kernelscale.reparam import rescaled_g


SLOW_WRITE_ENV = "KERNELSCALE_TEST_SLOW_WRITE"

BLOCK_BYTES = 8 << 20
"""Bytes per raw-copy chunk (and per group of cast elements)."""

COMPUTE_BYTES = {"cpu": 16 << 20, "cuda": 64 << 20}
"""Output elements × 4 bytes per operator call, i.e. 8 MiB of fp16 output on CPU: bounds the
memory of a block in flight (the torch path blocks its float32 intermediate itself); on CUDA
larger calls amortise the transfers."""


def _as_bytes(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())


def _read_rows(reader: SafetensorsReader, info: TensorInfo, begin: int, nbytes: int) -> torch.Tensor:
    """``nbytes`` of tensor ``info`` from byte ``begin`` on, read straight into a new uint8 tensor."""
    raw = torch.empty(nbytes, dtype=torch.uint8)
    reader.read_into(info.name, begin, [raw.numpy()])
    return raw


def _row_blocks(reader: SafetensorsReader, info: TensorInfo, entry: TensorPlan, device: torch.device) -> Iterator[torch.Tensor]:
    """Tensor ``info`` read in the blocks of leading-axis rows that ``entry`` is applied to; nothing
    for an empty tensor."""
    if info.nbytes == 0:
        return
    in_dtype = torch_dtype(info.dtype)
    row_shape = info.shape[1:] if info.shape else ()
    row_bytes = info.nbytes // (info.shape[0] if info.shape else 1)
    step = _rows_per_call(info, entry, device) * row_bytes
    for begin in range(0, info.nbytes, step):
        x = _read_rows(reader, info, begin, min(step, info.nbytes - begin)).view(in_dtype)
        yield x.reshape(-1, *row_shape) if info.shape else x.reshape(())


def _fill_rows(views: Sequence[np.ndarray], rows: int, row_shape: Sequence[int], dtype: torch.dtype,
               into: Callable[[int, int, torch.Tensor], Any]) -> None:
    """Write rows ``[0, rows)`` of a result (each ``row_shape``, ``dtype``) into ``views``, the
    consecutive uint8 ranges of a :class:`~kernelscale.io.sink.Reservation`, by ``into(r0, r1, out)``,
    which computes rows ``r0 … r1 - 1`` into ``out`` (a contiguous ``(r1 - r0, *row_shape)`` tensor):
    straight into the views, except a row split between two views (or a misaligned view), which
    goes through a temporary."""
    itemsize = dtype.itemsize
    row_nbytes = math.prod(row_shape) * itemsize
    if row_nbytes == 0 or rows == 0:
        return
    row = 0
    carry: Optional[np.ndarray] = None  # the rest of a row split between two views
    for view in views:
        at = 0
        if carry is not None:
            take = min(len(carry), len(view))
            view[:take] = carry[:take]
            carry, at = (carry[take:] if take < len(carry) else None), take
            if carry is not None:
                continue
        whole = min(rows - row, (len(view) - at) // row_nbytes)
        if whole:
            target = view[at:at + whole * row_nbytes]
            if target.ctypes.data % itemsize == 0:
                into(row, row + whole, torch.from_numpy(target).view(dtype).view(whole, *row_shape))
            else:
                temporary = torch.empty(whole, *row_shape, dtype=dtype)
                into(row, row + whole, temporary)
                target[:] = temporary.reshape(-1).view(torch.uint8).numpy()
            row, at = row + whole, at + whole * row_nbytes
        if at < len(view):  # row ``row`` starts here and ends in the next view
            temporary = torch.empty(1, *row_shape, dtype=dtype)
            into(row, row + 1, temporary)
            raw = temporary.reshape(-1).view(torch.uint8).numpy()
            view[at:] = raw[:len(view) - at]
            carry, row = raw[len(view) - at:], row + 1
    if row != rows or carry is not None:
        raise RuntimeError(f"{rows} rows of {row_nbytes} bytes do not fill {sum(len(v) for v in views)} reserved bytes")


def _resize_into(reservation: Reservation, entry: TensorPlan, x: torch.Tensor, dst_dtype: torch.dtype,
                 device: torch.device) -> None:
    """One block of leading-axis rows resized by the entry's operator into its reserved output."""
    if device.type != "cpu":
        reservation.fill(_as_bytes(_resize_block_cuda(entry, x, dst_dtype, device)))
    elif x.ndim == 0:
        reservation.fill(_as_bytes(_resize_rows(entry, x, dst_dtype, device)))
    else:
        _fill_rows(reservation.views, x.shape[0], tuple(entry.new_shape[1:]), dst_dtype,
                   lambda r0, r1, out: execute(entry.operator, x[r0:r1], name=entry.name, out_dtype=dst_dtype, out=out))


def _cast_into(reservation: Reservation, x: torch.Tensor, dst_dtype: torch.dtype) -> None:
    """Elements ``x`` (1-D) cast to ``dst_dtype`` (one rounding) into their reserved output."""
    _fill_rows(reservation.views, x.numel(), (), dst_dtype, lambda r0, r1, out: out.copy_(x[r0:r1]))


def _renorm(reader: SafetensorsReader, info: TensorInfo, entry: TensorPlan, out_dtype: str, source: WeightNormSource,
            device: torch.device) -> memoryview:
    """The renorm entry executed by :func:`kernelscale.reparam.rescaled_g` on v read from its file
    (``reader``'s, or another shard's) and resized again in the same blocks of rows as when it is
    written, by the same operator and rounding, so the norms are those of the stored v' (to the
    float32 summation order of BLAS, which may change where an output block boundary splits a
    block). The blocks are handed over one at a time, so memory stays at one block of v and its v'
    (about COMPUTE_BYTES of output, as for any resized tensor) whatever v's size."""
    g = reader.read_tensor(info.name)
    v_reader = reader if os.path.abspath(source.path) == os.path.abspath(reader.path) else SafetensorsReader(source.path)
    try:
        if v_reader.tensors.get(source.info.name) != source.info:
            raise InvalidCheckpointError(f"{source.path}: the file changed since it was planned")
        v_dtype = torch_dtype(source.out_dtype)
        rows = ((x, _resize_rows(entry.partner, x, v_dtype, device)) for x in _row_blocks(v_reader, source.info, entry.partner, device))
        return _as_bytes(rescaled_g(entry, g, rows, torch_dtype(out_dtype)))
    finally:
        if v_reader is not reader:
            v_reader.close()


def _renorm_into(reservation: Reservation, reader: SafetensorsReader, info: TensorInfo, entry: TensorPlan, out_dtype: str,
                 source: WeightNormSource, device: torch.device) -> None:
    reservation.fill(_renorm(reader, info, entry, out_dtype, source, device))


def _resize_rows(entry: TensorPlan, x: torch.Tensor, dst_dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """One block of rows resized by the entry's operator, as a CPU tensor of ``dst_dtype``."""
    if device.type == "cpu":
        return execute(entry.operator, x, name=entry.name, out_dtype=dst_dtype)
    return _resize_block_cuda(entry, x, dst_dtype, device)


_worker = threading.local()
# One worker at a time compiles and launches: Triton's JIT cache is not documented as thread-safe.
# Launches return at once, so the workers still overlap their transfers.
_LAUNCH_LOCK = threading.Lock()


def _resize_block_cuda(entry: TensorPlan, x: torch.Tensor, dst_dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """One block on the GPU, on the calling worker's own stream: in through pinned memory,
    resized (the Triton kernels, through dispatch), back into pinned memory, then wait for that
    stream alone. With two workers one block's upload, kernel and download overlap the other's
    (separate copy engines each way), while the reader and writer threads keep the disk busy."""
    stream = getattr(_worker, "stream", None)
    if stream is None:
        stream = _worker.stream = torch.cuda.Stream(device)
    # The overflow check (execute's) runs here on the host, before the upload and after the
    # download: inside execute it would wait for the GPU while holding the launch lock.
    magnitude = overflow_check(entry.operator, x, dst_dtype)
    with torch.cuda.stream(stream):
        x_gpu = x.pin_memory().to(device, non_blocking=True)
        with _LAUNCH_LOCK:
            y = apply(entry.operator, x_gpu, dst_dtype)
        host = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
        host.copy_(y, non_blocking=True)
    stream.synchronize()
    if magnitude is not None:
        check_result(entry.operator, x, host, dst_dtype, magnitude, entry.name)
    return host


def _rows_per_call(info: TensorInfo, entry: TensorPlan, device: torch.device) -> int:
    """Leading-axis rows per operator call: about COMPUTE_BYTES of output. The operator is the
    same for every block; only the BLAS summation order may differ from a whole-tensor call (it can
    depend on the row count), so results agree with resize_state_dict's to float32 rounding."""
    rows = info.shape[0] if info.shape else 1
    out_row = math.prod(entry.new_shape[1:]) if entry.new_shape else 1
    return max(1, min(rows, COMPUTE_BYTES[device.type] // max(1, out_row * 4)))


def compute_workers(device: torch.device) -> int:
    """Resize workers: on CPU one single-threaded worker per usable core (at most the sink's
    SLOTS - 2: more could not all have a block to fill); on CUDA two, each with its own stream, so that one block's
    transfers overlap the other's.

    Why single-threaded workers rather than torch's own threads: OpenMP threads spin-wait between
    products, stealing the cores the writer and the kernel need. On 2 cores, SD 1.5 at --scale 2
    took 63 s wall / 47 s user time with 2 OpenMP threads against 28 s / 7 s with 1 (and up to
    49 s when other jobs shared the machine)."""
    if device.type != "cpu":
        return 2
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, DirectFileSink.SLOTS - 2))


def _single_threaded() -> None:
    torch.set_num_threads(1)  # per thread (OpenMP): the caller's own setting is untouched


class _Jobs:
    """Blocks computed by the worker pool straight into their reserved output (each job fills one
    :class:`~kernelscale.io.sink.Reservation` and releases it, even when it fails). The one thread
    laying the file out submits them in file order; progress is ticked in that order as they finish,
    and the first failure is raised to that thread."""

    def __init__(self, pool: Executor, tick: Callable[[int], None]) -> None:
        self._pool = pool
        self._tick = tick
        self._pending: collections.deque[tuple[Future, int]] = collections.deque()

    @staticmethod
    def _run(fill: Callable[..., None], reservation: Reservation, *args: Any) -> None:
        try:
            fill(reservation, *args)
        finally:
            reservation.release()

    def submit(self, fill: Callable[..., None], reservation: Reservation, *args: Any) -> None:
        self._pending.append((self._pool.submit(self._run, fill, reservation, *args), reservation.nbytes))
        self._collect(wait=False)

    def _collect(self, wait: bool) -> None:
        while self._pending and (wait or self._pending[0][0].done()):
            future, nbytes = self._pending.popleft()
            future.result()
            self._tick(nbytes)

    def wait(self) -> None:
        """Until every job submitted has finished; raises the first failure."""
        self._collect(wait=True)


def _lay_out_resized(reader: SafetensorsReader, info: TensorInfo, entry: TensorPlan, out_dtype: str, device: torch.device,
                     sink: DirectFileSink, jobs: _Jobs, tick: Callable[[int], None]) -> None:
    """A resized tensor: blocks of leading-axis rows (rows of a conv weight are independent slices,
    rows of a grid Linear independent outputs) read here, in order, and resized by the workers side
    by side straight into the output."""
    dst_dtype = torch_dtype(out_dtype)
    out_row = math.prod(entry.new_shape[1:]) if entry.new_shape else 1
    itemsize = dst_dtype.itemsize
    for x in _row_blocks(reader, info, entry, device):
        nbytes = (x.shape[0] if x.ndim else 1) * out_row * itemsize
        if nbytes > sink.largest_reservation:  # one row beyond the sink's blocks: computed, then copied in
            jobs.wait()
            sink.write(_as_bytes(_resize_rows(entry, x, dst_dtype, device)))
            tick(nbytes)
            continue
        jobs.submit(_resize_into, sink.reserve(nbytes), entry, x, dst_dtype, device)


def _lay_out_cast(reader: SafetensorsReader, info: TensorInfo, out_dtype: str, sink: DirectFileSink, jobs: _Jobs) -> None:
    """The tensor's values in another dtype (one rounding), a block of elements at a time."""
    in_dtype, dst_dtype = torch_dtype(info.dtype), torch_dtype(out_dtype)
    step = max(1, BLOCK_BYTES // 4) * in_dtype.itemsize
    for begin in range(0, info.nbytes, step):
        x = _read_rows(reader, info, begin, min(step, info.nbytes - begin)).view(in_dtype)
        jobs.submit(_cast_into, sink.reserve(x.numel() * dst_dtype.itemsize), x, dst_dtype)


def _lay_out_copy(reader: SafetensorsReader, info: TensorInfo, sink: DirectFileSink, tick: Callable[[int], None]) -> None:
    """The tensor's bytes read straight into the output."""
    for begin in range(0, info.nbytes, BLOCK_BYTES):
        reservation = sink.reserve(min(BLOCK_BYTES, info.nbytes - begin))
        try:
            reader.read_into(info.name, begin, reservation.views)
        finally:
            reservation.release()
        tick(reservation.nbytes)


def _lay_out(reader: SafetensorsReader, fp: FilePlan, i: int, device: torch.device, sink: DirectFileSink, jobs: _Jobs,
             tick: Callable[[int], None]) -> None:
    """Tensor i's output bytes, reserved in the sink in file order and filled here or by the workers."""
    info, entry, out_dtype = fp.tensors[i], fp.entries[i], fp.out_dtypes[i]
    op = fp.operation(i)
    if op == Action.RESIZE:
        _lay_out_resized(reader, info, entry, out_dtype, device, sink, jobs, tick)
    elif op == Action.RENORM:
        if info.nbytes:
            nbytes = math.prod(info.shape) * torch_dtype(out_dtype).itemsize
            jobs.submit(_renorm_into, sink.reserve(nbytes), reader, info, entry, out_dtype, fp.weight_norm_sources[entry.name], device)
    elif op == Action.CAST or (op in (Action.GEOMETRY, Action.FACTORED) and out_dtype != info.dtype):
        _lay_out_cast(reader, info, out_dtype, sink, jobs)
    else:
        _lay_out_copy(reader, info, sink, tick)


def _slow_write_delay() -> float:
    value = os.environ.get(SLOW_WRITE_ENV, "").strip()
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


def write_safetensors(fp: FilePlan, out_path: str, device: torch.device, tick: Callable[[int], None]) -> None:
    """Stream one output file: the header, then each tensor laid out in file order by this thread
    (raw copies read straight into the output, blocks to resize handed to the workers, which compute
    them straight into it), while the sink's writer threads put finished blocks on disk. The file is
    fsynced before this returns."""
    delay = _slow_write_delay()
    with SafetensorsReader(fp.src) as reader:
        if tuple(reader.tensors.values()) != fp.tensors:
            raise InvalidCheckpointError(f"{fp.src}: the file changed since it was planned")
        head, infos = encode_header(fp.specs(), dict(fp.metadata))
        with DirectFileSink(out_path) as sink:
            sink.write(head)
            tick(len(head))
            pool = ThreadPoolExecutor(max_workers=compute_workers(device), thread_name_prefix="kernelscale-resize",
                                      initializer=_single_threaded if device.type == "cpu" else None)
            jobs = _Jobs(pool, tick)
            readahead = Readahead(fp.src)
            try:
                for i, written in enumerate(infos):
                    readahead.before(fp.tensors[i].start, fp.tensors[i].end)
                    _lay_out(reader, fp, i, device, sink, jobs, tick)
                    if sink.position != written.end:
                        raise RuntimeError(f"{out_path}: tensor {written.name!r} laid out to byte {sink.position}, "
                                           f"planned to end at {written.end}")
                    if delay:
                        jobs.wait()
                        time.sleep(delay)
                jobs.wait()
            finally:
                readahead.close()
                pool.shutdown(wait=True, cancel_futures=True)
            sink.flush()
            os.fsync(sink.fileno())


def write_extra(extra: ExtraFile, out_path: str) -> None:
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    if extra.data is not None:
        fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(extra.data)
            fh.flush()
            os.fsync(fh.fileno())
        return
    shutil.copyfile(extra.src, out_path)  # type: ignore[arg-type]
    fsync_path(out_path)


CHECK_BYTES = 64 << 10
"""Bytes read back from each end of every written tensor by :func:`verify_output`."""


def verify_output(path: PathLike, fp: FilePlan) -> None:
    """Reopen a written file with kernelscale's own validating header reader and check it against
    the plan: names, shapes, dtypes, offsets tiling the data section, size, a manifest that parses;
    then read back the first and last CHECK_BYTES of every tensor (a filesystem that cannot return
    what was written shows here). Nothing is mapped and at most CHECK_BYTES are held, so the check
    runs where the file is larger than memory or the address-space limit. OutputError on any
    difference."""
    path = os.fspath(path)
    try:
        reader = SafetensorsReader(path)
    except InvalidCheckpointError as exc:
        raise OutputError(f"the written file does not reopen: {exc}") from None
    with reader:
        found = {name: (info.dtype, info.shape) for name, info in reader.tensors.items()}
        expected = {name: (dtype, tuple(shape)) for name, dtype, shape in fp.specs()}
        if found != expected:
            bad = sorted(set(found) ^ set(expected)) or sorted(n for n in expected if found[n] != expected[n])
            raise OutputError(f"{path}: the written file does not match its plan (first difference: {bad[0]!r})")
        size = reader.file_size
        if size != fp.bytes_out:
            raise OutputError(f"{path}: written {size} bytes, planned {fp.bytes_out}")
        try:
            for info in reader.tensors.values():
                head = min(CHECK_BYTES, info.nbytes)
                reader.read_range(info.name, 0, head)
                if info.nbytes > head:
                    reader.read_range(info.name, info.nbytes - min(CHECK_BYTES, info.nbytes - head), info.nbytes)
        except InvalidCheckpointError as exc:
            raise OutputError(f"the written file does not read back: {exc}") from None
        metadata = reader.metadata
    try:
        manifest = json.loads(metadata[MANIFEST_KEY])
    except (KeyError, ValueError, RecursionError):
        raise OutputError(f"{path}: the manifest is missing or does not parse") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise OutputError(f"{path}: the manifest has format_version {version!r}")
