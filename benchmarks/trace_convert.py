"""Where one ``kernelscale convert`` spends its time: when the output's writes start and end, how
many are in flight, and the CPU time of each thread.

Runs the command line in this process (so the sink's writes can be timed) with a sampler thread
reading every thread's CPU time from ``/proc/self/task`` every 50 ms (Linux only)::

    python benchmarks/trace_convert.py IN OUT --scale 2 [--drop-cache] [other convert options]

``--drop-cache`` drops IN from the page cache first (posix_fadvise DONTNEED), as bench_convert.py
does. OUT must not exist. Prints: the wall time, the first and last write of the output (seconds
from the start), the time spent with 0, 1, 2… writes in flight, and user/system CPU per thread.
"""

from __future__ import annotations

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str]) -> int:
    if "--drop-cache" in argv:
        argv = [a for a in argv if a != "--drop-cache"]
        fd = os.open(argv[0], os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    started = time.perf_counter()
    from kernelscale.cli import main as cli_main
    from kernelscale.io import sink

    writes: list[tuple[float, float, int]] = []
    original = sink.DirectFileSink._write_block

    def timed_write(self, buffer, length, offset):  # type: ignore[no-untyped-def]
        begin = time.perf_counter()
        original(self, buffer, length, offset)
        writes.append((begin - started, time.perf_counter() - started, length))

    sink.DirectFileSink._write_block = timed_write  # type: ignore[method-assign]
    cpu: dict[str, tuple[float, float]] = {}
    stop = threading.Event()
    ticks = os.sysconf("SC_CLK_TCK")

    def sample() -> None:
        while not stop.is_set():
            names = {str(t.native_id): t.name for t in threading.enumerate()}
            for tid in os.listdir("/proc/self/task"):
                try:
                    with open(f"/proc/self/task/{tid}/stat") as fh:
                        fields = fh.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                name = names.get(tid, f"thread {tid}")
                cpu[f"{name} ({tid})"] = (int(fields[11]) / ticks, int(fields[12]) / ticks)
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = cli_main(["convert", *argv])
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    print(f"exit {code}; wall {wall:.2f} s")
    if writes:
        first, last = min(w[0] for w in writes), max(w[1] for w in writes)
        points = sorted([(b, 1) for b, _, _ in writes] + [(e, -1) for _, e, _ in writes])
        depth, previous, at_depth = 0, points[0][0], {}
        for moment, step in points:
            at_depth[depth] = at_depth.get(depth, 0.0) + moment - previous
            depth, previous = depth + step, moment
        total = sum(n for _, _, n in writes)
        print(f"writes: {len(writes)}, {total / 1e9:.2f} GB, first at {first:.2f} s, last done at {last:.2f} s "
              f"({last - first:.2f} s, {total / 1e6 / max(last - first, 1e-9):.0f} MB/s), mean {1000 * sum(e - b for b, e, _ in writes) / len(writes):.1f} ms")
        print("seconds with N writes in flight: " + ", ".join(f"{n}: {s:.2f}" for n, s in sorted(at_depth.items())))
    for name, (user, system) in sorted(cpu.items(), key=lambda kv: -sum(kv[1])):
        print(f"{name:40s} user {user:5.2f} s  system {system:5.2f} s")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
