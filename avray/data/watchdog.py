"""The last resort behind ``data.decode_timeout_s``: a file that one FFmpeg call holds forever.

:class:`~avray.data.decode.Deadline` bounds everything between FFmpeg calls, but one call that
never returns (a seek, one packet's decode) cannot be interrupted from Python. PyAV releases
the GIL in those calls, so a thread of the decoding process can still act: once the process
has been in one file for the limit plus a grace period, the watchdog records the file in the
job's skip log as a ``timeout`` and as hung, waiting for the actor to have it, then ends the
process. Ray Data runs a task whose worker died again (its tasks retry system failures without
limit); the new attempt asks the skip log which files hung and leaves them out, and a
streaming task's blocks already consumed are not delivered twice. The cost on the normal path
is a lock and a timestamp per file and one thread per worker process, waking every
``POLL_S``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import ray

logger = logging.getLogger("avray.data")

# The in-process deadline fires first; this leaves it time to unwind (closing the file,
# converting the frames already decoded) before a call is judged stuck.
GRACE_S = 5.0
POLL_S = 0.25
# A worker that cannot reach the skip log in this long ends anyway: hanging is worse.
REPORT_TIMEOUT_S = 60.0


def hang_limit(decode_timeout_s: float) -> float:
    """Seconds in one file after which the process is judged stuck in an FFmpeg call."""
    return decode_timeout_s + max(GRACE_S, 0.5 * decode_timeout_s)


@dataclass(frozen=True)
class _Watched:
    uri: str
    since: float
    limit_s: float
    clips: int
    skip_log: ray.actor.ActorHandle


class _Watchdog:
    """One per process: the file the main thread is in, and the thread that watches it."""

    def __init__(self) -> None:
        # Held while the file changes and while a stuck file is reported: a file that ends at
        # the very moment it is judged stuck cannot be both delivered and reported.
        self.lock = threading.Lock()
        self.watched: _Watched | None = None
        threading.Thread(target=self._watch, name="avray-hang-watchdog", daemon=True).start()

    def _watch(self) -> None:
        while True:
            time.sleep(POLL_S)
            with self.lock:
                watched = self.watched
                if watched is not None and time.monotonic() - watched.since > watched.limit_s:
                    _end_process(watched)


def _end_process(watched: _Watched) -> None:
    detail = (
        f"an FFmpeg call did not return in {watched.limit_s:g} s (data.decode_timeout_s plus grace): "
        "its worker was ended, and the file is not tried again in this job"
    )
    logger.error("ending this worker: %s holds it (%s)", watched.uri, detail)
    try:
        ray.get(watched.skip_log.hung.remote(watched.uri, detail, watched.clips), timeout=REPORT_TIMEOUT_S)
    finally:
        os._exit(1)


_watchdog: _Watchdog | None = None
_started = threading.Lock()


@contextlib.contextmanager
def watching(uri: str, decode_timeout_s: float, clips: int, skip_log) -> Iterator[None]:
    """Run the block as the process's work on ``uri``: past :func:`hang_limit`, the file is
    reported to ``skip_log`` as hung (``clips`` of it skipped) and this process ends."""
    global _watchdog
    with _started:
        if _watchdog is None:
            _watchdog = _Watchdog()
    watchdog = _watchdog
    with watchdog.lock:
        watchdog.watched = _Watched(uri, time.monotonic(), hang_limit(decode_timeout_s), clips, skip_log)
    try:
        yield
    finally:
        with watchdog.lock:
            watchdog.watched = None
