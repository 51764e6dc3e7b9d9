"""Consuming a clip stream while measuring it: clips/s, progress, peak memory and CPU use."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from avray.data.labels import batch_labels


class ResourceMonitor:
    """Samples this process and all its descendants while a benchmark runs: where the CPU time
    went and, with ``memory``, the peak memory.

    CPU time is summed per kind of process (this one, Ray's workers, the rest: Ray's daemons
    or a DataLoader's workers), and the machine's idle time is read system-wide: together they
    tell decoding from the pipeline's own cost and from cores left waiting. A process that
    exits mid-run loses the CPU time since its last sample.

    Memory is the proportional set size (PSS), which splits shared pages (Ray's object store)
    between the processes mapping them, so the sum is the memory the whole local pipeline
    really holds, Ray workers included. Reading it is not free: the kernel walks every mapping,
    the object store's included, about 60 ms of CPU per sample of a local Ray cluster's 21
    processes, a quarter of a core at the default interval. Measure speed with ``memory=False``.
    """

    def __init__(self, interval_s: float = 0.25, memory: bool = True):
        self.interval_s = interval_s
        self.memory = memory
        self.peak_bytes = 0
        self.idle_fraction = 0.0
        self._baseline: dict[int, float] = {}
        self._latest: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ResourceMonitor:
        self._machine = psutil.cpu_times()
        self.sample()
        self._baseline = {pid: cpu for pid, (_, cpu) in self._latest.items()}
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        start, end = self._machine, psutil.cpu_times()
        total = sum(end) - sum(start)
        idle = (end.idle - start.idle) + (getattr(end, "iowait", 0.0) - getattr(start, "iowait", 0.0))
        self.idle_fraction = idle / total if total > 0 else 0.0

    @property
    def peak_mb(self) -> float:
        if not self.memory:
            raise ValueError("memory was not sampled: ResourceMonitor(memory=False)")
        return self.peak_bytes / 2**20

    @property
    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used during the run by: "this process", "Ray workers", "other processes"."""
        used: dict[str, float] = {}
        for pid, (kind, cpu) in self._latest.items():
            used[kind] = used.get(kind, 0.0) + cpu - self._baseline.get(pid, 0.0)
        return used

    def sample(self) -> int:
        total = 0
        root = psutil.Process(os.getpid())
        for proc in [root, *root.children(recursive=True)]:
            try:
                with proc.oneshot():
                    if self.memory:
                        total += proc.memory_full_info().pss
                    times = proc.cpu_times()
                    kind = (
                        "this process"
                        if proc.pid == root.pid
                        else "Ray workers"
                        if proc.name().startswith("ray::")
                        else "other processes"
                    )
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            self._latest[proc.pid] = (kind, times.user + times.system)
        self.peak_bytes = max(self.peak_bytes, total)
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()


@dataclass
class StreamStats:
    clips: int
    seconds: float
    labels: dict[str, int]

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else 0.0


def consume(
    dataset, batch_size: int = 32, progress: Callable[[str], None] | None = None, every_s: float = 5.0
) -> StreamStats:
    """Iterate ``dataset`` to the end (as a trainer would), counting clips per label."""
    start = last = time.perf_counter()
    clips, labels = 0, {}
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
        clips += len(batch["clip_id"])
        for label in batch_labels(batch):
            key = "(none)" if label is None else str(label)
            labels[key] = labels.get(key, 0) + 1
        now = time.perf_counter()
        if progress is not None and now - last >= every_s:
            progress(f"  {clips} clips, {clips / (now - start):.1f} clips/s")
            last = now
    return StreamStats(clips, time.perf_counter() - start, labels)
