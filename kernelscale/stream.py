"""Streaming one planned file from the input to its place in the output (DESIGN §6).

Per tensor either a raw byte copy, a cast, or read → resize (the entry's operator by :mod:`kernelscale.execute`,
in blocks of rows) → write; weight norm's g is read, rescaled for its resized v (v read and
resized again in the same blocks of rows, wherever it sits in the file or in another shard:
:func:`_renormed`) → written. A reader thread reads blocks in order and hands them to the
resize workers (:func:`compute_workers`: on CPU one single-threaded worker per usable core, at
most QUEUE_DEPTH + 1; on CUDA two, each on its own stream); the main thread writes the results in order from a queue of
depth 2 while the next blocks are read and resized, and writer threads put the bytes on disk
(:class:`kernelscale.io.sink.DirectFileSink`, O_DIRECT where possible). Peak memory is a few blocks, whatever the checkpoint's size. The input
is only read; each written file is fsynced, and :func:`verify_output` reopens it with
kernelscale's own header reader (nothing mapped) and checks it against its plan.

Test hook: ``KERNELSCALE_TEST_SLOW_WRITE=<seconds>`` sleeps that long after writing each
tensor, so tests can interrupt a conversion mid-write.
"""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import threading
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from kernelscale.checkpoint_plan import ExtraFile, FilePlan, WeightNormSource
from kernelscale.errors import InvalidCheckpointError
from kernelscale.execute import apply, check_result, execute, overflow_check
from kernelscale.io.checkpoint import MANIFEST_KEY  # the metadata key of the manifest (docs/format.md)
from kernelscale.io.output import OutputError, fsync_path
from kernelscale.io.sink import DirectFileSink
from kernelscale.io.safetensors_io import PathLike, SafetensorsReader, SafetensorsWriter, TensorInfo, torch_dtype
from kernelscale.manifest import FORMAT_VERSION, Action
from kernelscale.plan import TensorPlan
from kernelscale.reparam import rescaled_g


SLOW_WRITE_ENV = "KERNELSCALE_TEST_SLOW_WRITE"

QUEUE_DEPTH = 2
"""Items waiting for the writer (raw chunks, or the future of a resized block). The reader blocks
when the queue is full, so at most QUEUE_DEPTH + 2 blocks are in memory at once (waiting, being
handed over, being written): with SD 1.5 at --scale 2, a peak RSS of 0.36 GB, torch included."""

BLOCK_BYTES = 8 << 20
"""Bytes per raw-copy chunk (and per group of cast chunks)."""

COMPUTE_BYTES = {"cpu": 16 << 20, "cuda": 64 << 20}
"""Output elements × 4 bytes per operator call, i.e. 8 MiB of fp16 output on CPU: bounds the
memory of a block in flight (the torch path blocks its float32 intermediate itself); on CUDA
larger calls amortise the transfers."""


class _End:
    """Marks the end of one tensor's blocks in the queue."""


@dataclass
class _Failed:
    error: BaseException


def _put(items: "queue.Queue[Any]", item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            items.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _as_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def _gather(buffers: Iterator[memoryview]) -> Iterator[list[memoryview]]:
    block: list[memoryview] = []
    size = 0
    for buf in buffers:
        block.append(buf)
        size += buf.nbytes
        if size >= BLOCK_BYTES:
            yield block
            block, size = [], 0
    if block:
        yield block


def _resized(reader: SafetensorsReader, info: TensorInfo, entry: TensorPlan, out_dtype: str, device: torch.device,
             pool: Executor) -> Iterator[Future]:
    """The resized tensor as raw bytes, one future per block of leading-axis rows (rows of a conv
    weight are independent slices, rows of a grid Linear independent outputs): the blocks are read
    here, in order, and resized by the pool's workers side by side."""
    dst_dtype = torch_dtype(out_dtype)
    for x in _row_blocks(reader, info, entry, device):
        yield pool.submit(_resize_block, entry, x, dst_dtype, device)


def _row_blocks(reader: SafetensorsReader, info: TensorInfo, entry: TensorPlan, device: torch.device) -> Iterator[torch.Tensor]:
    """Tensor ``info`` read in the blocks of leading-axis rows that ``entry`` is applied to; nothing
    for an empty tensor."""
    if info.nbytes == 0:
        return
    in_dtype = torch_dtype(info.dtype)
    row_shape = info.shape[1:] if info.shape else ()
    row_bytes = info.nbytes // (info.shape[0] if info.shape else 1)
    for raw in reader.iter_chunks(info.name, _rows_per_call(info, entry, device) * row_bytes):
        x = torch.frombuffer(bytearray(raw), dtype=in_dtype)
        yield x.reshape(-1, *row_shape) if info.shape else x.reshape(())


def _renormed(reader: SafetensorsReader, info: TensorInfo, entry: TensorPlan, out_dtype: str, source: WeightNormSource,
              device: torch.device, pool: Executor) -> Iterator[Future]:
    """A renorm entry's tensor (weight norm's g, rescaled for its resized v: :func:`_renorm`), as one
    future of raw bytes."""
    if info.nbytes:
        yield pool.submit(_renorm, reader, info, entry, out_dtype, source, device)


def _renorm(reader: SafetensorsReader, info: TensorInfo, entry: TensorPlan, out_dtype: str, source: WeightNormSource,
            device: torch.device) -> memoryview:
    """The renorm entry executed by :func:`kernelscale.reparam.rescaled_g` on v read from its file
    (``reader``'s, or another shard's) and resized again in the same blocks of rows as when it is
    written, hence to the same v' bit for bit. The blocks are handed over one at a time, so memory
    stays at one block of v and its v' (about COMPUTE_BYTES of output, as for any resized tensor)
    whatever v's size."""
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


def _resize_block(entry: TensorPlan, x: torch.Tensor, dst_dtype: torch.dtype, device: torch.device) -> memoryview:
    return _as_bytes(_resize_rows(entry, x, dst_dtype, device))


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


def _cast(reader: SafetensorsReader, info: TensorInfo, out_dtype: str) -> Iterator[memoryview]:
    """The tensor's values in another dtype (one rounding), as raw bytes, a block at a time."""
    in_dtype, dst_dtype = torch_dtype(info.dtype), torch_dtype(out_dtype)
    itemsize = torch.empty((), dtype=in_dtype).element_size()
    for raw in reader.iter_chunks(info.name, max(1, BLOCK_BYTES // 4) * itemsize):
        yield _as_bytes(torch.frombuffer(bytearray(raw), dtype=in_dtype).to(dst_dtype))


def _blocks(reader: SafetensorsReader, fp: FilePlan, i: int, device: torch.device, pool: Executor) -> Iterator[Any]:
    """Tensor i's output as queue items: a list of raw buffers, or a future of one."""
    info, entry, out_dtype = fp.tensors[i], fp.entries[i], fp.out_dtypes[i]
    op = fp.operation(i)
    if op == Action.RESIZE:
        return _resized(reader, info, entry, out_dtype, device, pool)
    if op == Action.RENORM:
        return _renormed(reader, info, entry, out_dtype, fp.weight_norm_sources[entry.name], device, pool)
    if op == Action.CAST or (op in (Action.GEOMETRY, Action.FACTORED) and out_dtype != info.dtype):
        return _gather(_cast(reader, info, out_dtype))
    return ([chunk] for chunk in reader.iter_chunks(info.name, BLOCK_BYTES))


def compute_workers(device: torch.device) -> int:
    """Resize workers: on CPU one single-threaded worker per usable core (at most QUEUE_DEPTH + 1,
    the blocks that can be in flight); on CUDA two, each with its own stream, so that one block's
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
    return max(1, min(cores, QUEUE_DEPTH + 1))


def _single_threaded() -> None:
    torch.set_num_threads(1)  # per thread (OpenMP): the caller's own setting is untouched


class _Readahead:
    """Asks the kernel to read the input ahead of the producer (posix_fadvise WILLNEED over the
    next READAHEAD bytes), so reading overlaps resizing instead of preceding it; the window keeps
    the page cache it fills bounded, whatever the checkpoint's size."""

    READAHEAD = 256 << 20

    def __init__(self, path: str) -> None:
        self._fd = -1
        self._advised = 0
        if hasattr(os, "posix_fadvise"):
            try:
                self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                self._fd = -1

    def before(self, info: TensorInfo) -> None:
        end = info.end + self.READAHEAD
        if self._fd < 0 or end <= self._advised + self.READAHEAD // 4:
            return
        start = max(info.start, self._advised)
        try:
            os.posix_fadvise(self._fd, start, end - start, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        self._advised = end

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _produce(reader: SafetensorsReader, fp: FilePlan, device: torch.device, items: "queue.Queue[Any]", stop: threading.Event,
             pool: Executor) -> None:
    readahead = _Readahead(fp.src)
    try:
        for i in range(len(fp.tensors)):
            readahead.before(fp.tensors[i])
            for block in _blocks(reader, fp, i, device, pool):
                if not _put(items, block, stop):
                    return
            if not _put(items, _End, stop):
                return
    except BaseException as exc:  # handed to the writer thread, which raises it
        _put(items, _Failed(exc), stop)
    finally:
        readahead.close()


def _drain(items: "queue.Queue[Any]", tick: Callable[[int], None]) -> Iterator[memoryview]:
    while True:
        item = items.get()
        if item is _End:
            return
        if isinstance(item, _Failed):
            raise item.error
        for buf in ([item.result()] if isinstance(item, Future) else item):
            yield buf
            tick(len(memoryview(buf).cast("B")))


def _slow_write_delay() -> float:
    value = os.environ.get(SLOW_WRITE_ENV, "").strip()
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


def write_safetensors(fp: FilePlan, out_path: str, device: torch.device, tick: Callable[[int], None]) -> None:
    """Stream one output file: header first, then each tensor, a producer thread computing ahead."""
    delay = _slow_write_delay()
    with SafetensorsReader(fp.src) as reader:
        if tuple(reader.tensors.values()) != fp.tensors:
            raise InvalidCheckpointError(f"{fp.src}: the file changed since it was planned")
        with DirectFileSink(out_path) as fh:
            writer = SafetensorsWriter(fh, fp.specs(), dict(fp.metadata))
            tick(fp.header_size)
            items: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_DEPTH)
            stop = threading.Event()
            pool = ThreadPoolExecutor(max_workers=compute_workers(device), thread_name_prefix="kernelscale-resize",
                                      initializer=_single_threaded if device.type == "cpu" else None)
            producer = threading.Thread(target=_produce, args=(reader, fp, device, items, stop, pool), name="kernelscale-reader",
                                        daemon=True)
            producer.start()
            try:
                for info in fp.tensors:
                    writer.write_raw(info.name, _drain(items, tick))
                    if delay:
                        time.sleep(delay)
            finally:
                stop.set()
                producer.join()
                pool.shutdown(wait=True, cancel_futures=True)
            writer.fsync()
            writer.close()


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


CHECK_BYTES = 1 << 20
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
        size = os.fstat(reader._fd).st_size
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
