"""The file the streaming writer writes into (kernelscale.io.sink): aligned blocks, the tail, O_DIRECT where allowed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from kernelscale.io import sink as sink_module


def _scribble(out, rng: torch.Generator, sizes: list[int]) -> bytes:
    written = b""
    for n in sizes:
        chunk = torch.randint(0, 256, (n,), generator=rng, dtype=torch.uint8).numpy().tobytes()
        out.write(memoryview(chunk))
        written += chunk
    return written


@pytest.mark.parametrize("refuse_direct", [False, True])
def test_output_file_blocks_tail_and_fallback(tmp_path: Path, monkeypatch, refuse_direct: bool) -> None:
    monkeypatch.setattr(sink_module.DirectFileSink, "BUFFER", 8192)
    path = tmp_path / "blocks.bin"
    out = sink_module.DirectFileSink(str(path))
    if refuse_direct:  # the first block refused as a filesystem without O_DIRECT would: buffered from then on
        if not out.direct:
            out.close()
            pytest.skip("this filesystem takes no O_DIRECT at all")
        real = os.pwrite
        refused = []

        def pwrite(fd, data, offset):
            if not refused:
                refused.append(offset)
                raise OSError(22, "Invalid argument")
            return real(fd, data, offset)

        monkeypatch.setattr(sink_module.os, "pwrite", pwrite)
    rng = torch.Generator().manual_seed(3)
    expected = _scribble(out, rng, [1, 4095, 3000, 20000, 7])
    out.flush()  # a padded tail, then truncated back
    assert path.stat().st_size == len(expected) and path.read_bytes() == expected
    expected += _scribble(out, rng, [5000, 100])  # the tail grows after a flush
    out.close()
    out.close()
    assert path.read_bytes() == expected
    if refuse_direct:
        assert refused and not out.direct


def _expected_blocks(total: int, seed: int) -> bytes:
    return torch.randint(0, 256, (total,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8).numpy().tobytes()


def test_reservations_filled_by_threads_in_any_order_land_at_their_offsets(tmp_path: Path, monkeypatch) -> None:
    """Reserved in file order, filled and released by other threads in reverse: the file holds every
    byte at its place, ranges crossing block boundaries included, and at most SLOTS blocks are held."""
    import threading

    monkeypatch.setattr(sink_module.DirectFileSink, "BUFFER", 8192)
    monkeypatch.setattr(sink_module.DirectFileSink, "SLOTS", 4)
    path = tmp_path / "reserved.bin"
    sizes = [10, 8182, 5000, 12000, 1, 0, 7001, 24000, 3]  # crossing 1, 2 and 3 block boundaries
    expected = _expected_blocks(sum(sizes), 5)
    with sink_module.DirectFileSink(str(path)) as out:
        assert out.largest_reservation == 3 * 8192
        batch: list = []
        at = 0
        for n in sizes:
            batch.append((out.reserve(n), expected[at:at + n]))
            at += n
            assert out.position == at
            if len(batch) == 2 or n == sizes[-1]:  # two reservations at a time, filled newest first
                threads = [threading.Thread(target=_fill, args=item) for item in reversed(batch)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                batch = []
        with pytest.raises(ValueError, match="exceeds"):
            out.reserve(out.largest_reservation + 1)
        with pytest.raises(ValueError, match="-1 bytes"):  # would move the position back over laid-out bytes
            out.reserve(-1)
        assert out.position == at
    assert path.read_bytes() == expected


def _fill(reservation, data: bytes) -> None:
    at = 0
    for view in reservation.views:
        view[:] = np.frombuffer(data[at:at + len(view)], dtype=np.uint8)
        at += len(view)
    assert at == reservation.nbytes == len(data)
    reservation.release()
    reservation.release()  # a second release does nothing


def test_a_flush_with_a_reservation_held_is_refused(tmp_path: Path) -> None:
    out = sink_module.DirectFileSink(str(tmp_path / "held.bin"))
    held = out.reserve(100)
    with pytest.raises(RuntimeError, match="not released"):
        out.flush()
    held.release()
    out.close()
    assert (tmp_path / "held.bin").stat().st_size == 100


def test_a_failed_disk_write_reaches_the_thread_that_reserves(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sink_module.DirectFileSink, "BUFFER", 8192)
    monkeypatch.setattr(sink_module.DirectFileSink, "SLOTS", 3)
    monkeypatch.setattr(sink_module.os, "pwrite", lambda fd, data, offset: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    out = sink_module.DirectFileSink(str(tmp_path / "full.bin"))
    with pytest.raises(OSError, match="No space left"):
        for _ in range(10):  # the first full block fails; a later reservation (or the flush) says so
            out.write(b"x" * 8192)
        out.flush()
    out.abandon()


def test_abandon_waits_only_for_the_writes_in_flight(tmp_path: Path, monkeypatch, caplog) -> None:
    """After a failure the file no longer matters: blocks queued behind the IO_DEPTH writes in
    flight are dropped, not written, and dropping them logs nothing."""
    import threading

    monkeypatch.setattr(sink_module.DirectFileSink, "BUFFER", 8192)
    monkeypatch.setattr(sink_module.DirectFileSink, "SLOTS", 6)
    real_pwrite = os.pwrite
    started, go = threading.Semaphore(0), threading.Event()
    offsets: list[int] = []

    def pwrite(fd, data, offset):
        offsets.append(offset)
        started.release()
        go.wait(timeout=60)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(sink_module.os, "pwrite", pwrite)
    out = sink_module.DirectFileSink(str(tmp_path / "abandoned.bin"))
    real_shutdown = out._io.shutdown

    def shutdown(wait: bool = True, *, cancel_futures: bool = False) -> None:
        real_shutdown(wait=False, cancel_futures=cancel_futures)  # what is queued is dropped (or not) now
        go.set()  # then the writes in flight finish
        real_shutdown(wait=wait)

    out._io.shutdown = shutdown
    for _ in range(4):  # four full blocks: IO_DEPTH (2) being written, two queued
        out.write(b"x" * 8192)
    for _ in range(out.IO_DEPTH):
        assert started.acquire(timeout=60)
    out.abandon()
    assert sorted(offsets) == [0, 8192]
    assert not [r for r in caplog.records if r.name == "concurrent.futures"]


def test_a_reservation_is_filled_with_exactly_its_bytes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sink_module.DirectFileSink, "BUFFER", 8192)
    with sink_module.DirectFileSink(str(tmp_path / "fill.bin")) as out:
        out.write(b"a" * 8000)
        crossing = out.reserve(400)  # 192 bytes in the first block, 208 in the second
        assert [len(v) for v in crossing.views] == [192, 208]
        with pytest.raises(ValueError, match="399 bytes given for a reservation of 400"):
            crossing.fill(b"b" * 399)
        crossing.fill(bytes(range(200)) * 2)
        crossing.release()
    assert (tmp_path / "fill.bin").read_bytes() == b"a" * 8000 + bytes(range(200)) * 2
