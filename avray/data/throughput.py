"""Consuming a clip stream while measuring it: clips/s, progress, and peak memory."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

import psutil


class PeakMemory:
    """Samples the proportional set size (PSS) of this process and all its descendants.

    PSS splits shared pages (Ray's object store) between the processes mapping them, so the
    sum is the memory the whole local pipeline really holds, Ray workers included.
    """

    def __init__(self, interval_s: float = 0.25):
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20

    def sample(self) -> int:
        total = 0
        root = psutil.Process(os.getpid())
        for proc in [root, *root.children(recursive=True)]:
            try:
                total += proc.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self.sample())
            self._stop.wait(self.interval_s)


@dataclass
class StreamStats:
    clips: int
    seconds: float
    labels: dict[str, int]

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else 0.0


def consume(dataset, batch_size: int = 32, progress: Callable[[str], None] | None = None,
            every_s: float = 5.0) -> StreamStats:
    """Iterate ``dataset`` to the end (as a trainer would), counting clips per label."""
    start = last = time.perf_counter()
    clips, labels = 0, {}
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
        clips += len(batch["clip_id"])
        for label in batch["label"]:
            key = "(none)" if label is None else str(label)
            labels[key] = labels.get(key, 0) + 1
        now = time.perf_counter()
        if progress is not None and now - last >= every_s:
            progress(f"  {clips} clips, {clips / (now - start):.1f} clips/s")
            last = now
    return StreamStats(clips, time.perf_counter() - start, labels)
