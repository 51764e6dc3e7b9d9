"""A two-rank gloo group on 127.0.0.1, started once per test session, that runs test jobs.

Process start and ``import torch`` cost seconds, so the two workers stay up and execute one
job after another: ``two_ranks.run(fn, *args)`` calls ``fn(*args)`` on both ranks (``fn`` must
be a module-level function) and returns ``[result_rank0, result_rank1]``. A failing job
restarts the group, since the other rank may be stuck in a collective.
"""

from __future__ import annotations

import io
import socket
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(rank: int, port: int, jobs, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    while (job := jobs.get()) is not None:
        fn, args = job
        try:
            value, ok = fn(*args), True
        except BaseException:  # noqa: BLE001 - the traceback goes back to the test
            value, ok = traceback.format_exc(), False
        buffer = io.BytesIO()
        torch.save(value, buffer)
        results.put((rank, ok, buffer.getvalue()))
    dist.destroy_process_group()


class TwoRanks:
    def __init__(self) -> None:
        self._procs: list = []

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        port = _free_port()
        self._jobs = [ctx.Queue() for _ in range(WORLD)]
        self._results = ctx.Queue()
        self._procs = [
            ctx.Process(target=_serve, args=(r, port, self._jobs[r], self._results), daemon=True) for r in range(WORLD)
        ]
        for proc in self._procs:
            proc.start()

    def run(self, fn, *args, timeout: float = 120.0) -> list:
        if not self._procs:
            self._start()
        for queue in self._jobs:
            queue.put((fn, args))
        values: dict[int, object] = {}
        try:
            for _ in range(WORLD):
                rank, ok, payload = self._results.get(timeout=timeout)
                value = torch.load(io.BytesIO(payload), weights_only=False)
                if not ok:
                    raise RuntimeError(f"rank {rank} failed:\n{value}")
                values[rank] = value
        except BaseException:
            self.close()
            raise
        return [values[r] for r in range(WORLD)]

    def close(self) -> None:
        # The workers hold nothing worth a clean shutdown, and torch's exit takes seconds.
        for proc in self._procs:
            proc.terminate()
            proc.join()
        self._procs = []
