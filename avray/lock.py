"""One run per output folder: a lock file that names its owner, kept fresh by a heartbeat.

Two runs writing one folder lose work silently: a second ``prepare`` deletes the first's
shards, a second ``pretrain`` mixes its checkpoints with the first's and points
``mlflow_run_id`` at its own run. So a workflow owns its output for as long as it runs
(``avray.cli.start_ray`` takes the lock, ``avray.cli.run`` drops it, on error and Ctrl-C too),
and another run is refused in one line naming the owner.

A lock is left behind when its run dies without unwinding (SIGKILL, a lost node, a closed
laptop). It is stale, and the next run takes it over, when its owner is certainly gone: on the
owner's own host, when that process no longer exists; seen from another host (or when the
owner ran on another host, as the driver of ``ray job submit`` does on the head node), when its
heartbeat, rewritten every :data:`HEARTBEAT_S`, is older than :data:`STALE_AFTER_S`. The
heartbeat is the owner's clock read by another machine: clocks kept by NTP differ by far less.

Taking, refreshing, taking over and dropping the lock are conditional writes
(``avray.storage``): on S3 (If-None-Match / If-Match) two runs cannot both win.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

import psutil

from avray import console
from avray.storage import create_new, delete_if, join_uri, read_versioned, replace_if

# "_": parquet readers skip it, and an output may be a folder of shards (prepare.py, embed.py).
LOCK_FILE = "_avray.lock"
HEARTBEAT_S = 30.0
# Ten missed heartbeats: a driver busy for a minute (a slow S3 write, a paused VM) keeps its
# lock, and a dead run's output is free again within minutes.
STALE_AFTER_S = 300.0
# Two readings of one process's start time differ by rounding only.
START_TIME_TOLERANCE_S = 1.0


class OutputInUse(ValueError):
    """Another run owns the output folder; the message names it and says what to do."""


@dataclass(frozen=True)
class Owner:
    """The run that holds a lock: where it runs, what it is, and when it last said it was alive."""

    host: str
    pid: int
    pid_started: float  # the process's start time: a pid reused by another process is not the owner
    workflow: str
    started: float
    heartbeat: float
    token: str  # this run's, among all runs: which lock is whose

    @classmethod
    def this_process(cls, workflow: str) -> Owner:
        now = time.time()
        pid = os.getpid()
        return cls(socket.gethostname(), pid, psutil.Process(pid).create_time(), workflow, now, now, uuid.uuid4().hex)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def from_bytes(cls, body: bytes) -> Owner | None:
        """The owner a lock file names, or None for one that is not a lock of avray's."""
        try:
            return cls(**json.loads(body))
        except (ValueError, TypeError):
            return None

    def describe(self, now: float) -> str:
        started = datetime.fromtimestamp(self.started, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (
            f"{self.workflow} (pid {self.pid} on host {self.host}, started {started}, "
            f"last heartbeat {max(0.0, now - self.heartbeat):.0f} s ago)"
        )


def is_gone(owner: Owner, now: float, host: str, stale_after_s: float = STALE_AFTER_S) -> bool:
    """Whether ``owner`` has certainly stopped, as seen from ``host`` at ``now``."""
    if owner.host == host:
        return not _is_running(owner.pid, owner.pid_started)
    return now - owner.heartbeat > stale_after_s


def _is_running(pid: int, started: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - started) < START_TIME_TOLERANCE_S
    except psutil.NoSuchProcess:
        return False


class OutputLock:
    """The lock on ``output`` (local or s3://), as a context manager: entered, this run owns
    the folder and a thread keeps its heartbeat fresh; left, the lock is gone."""

    def __init__(
        self,
        output: str,
        workflow: str,
        endpoint_override: str | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        stale_after_s: float = STALE_AFTER_S,
    ):
        self.output, self.uri = output, join_uri(output, LOCK_FILE)
        self.endpoint_override = endpoint_override
        self.owner = Owner.this_process(workflow)
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self._version: str | None = None
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, or take over a stale one; :class:`OutputInUse` while another run holds it."""
        body = self.owner.to_bytes()
        # Each pass either wins or finds the lock changed by another run since it was read.
        while True:
            self._version = create_new(self.uri, body, self.endpoint_override)
            if self._version is not None:
                break
            held = read_versioned(self.uri, self.endpoint_override)
            if held is None:  # dropped between the two requests
                continue
            owner, now = Owner.from_bytes(held.body), time.time()
            if owner is None:
                raise OutputInUse(
                    f"output {self.output} holds a {LOCK_FILE} that is not avray's lock: delete it if no run "
                    "writes there, or give another --output"
                )
            if not is_gone(owner, now, self.owner.host, self.stale_after_s):
                raise OutputInUse(
                    f"output {self.output} is in use by {owner.describe(now)}: wait for it to end or give another "
                    f"--output (a lock whose run is gone clears itself: on its host at once, elsewhere after "
                    f"{self.stale_after_s:.0f} s without a heartbeat)"
                )
            self._version = replace_if(self.uri, body, held.version, self.endpoint_override)
            if self._version is not None:
                console.say(
                    f"[avray] took over the lock on {self.output} from a run that is gone: {owner.describe(now)}"
                )
                break
        self._beating = threading.Thread(target=self._beat, name="avray-lock-heartbeat", daemon=True)
        self._beating.start()

    def release(self) -> None:
        """Stop the heartbeat and drop the lock, if it is still this run's."""
        self._stop.set()
        if self._beating is not None:
            self._beating.join()
        if self._version is None:
            return
        try:
            delete_if(self.uri, self._version, self.endpoint_override)
        except Exception as err:  # the run's own error, or Ctrl-C, is what the user must see
            console.say(f"[avray] could not remove the lock on {self.output} ({err}); the next run there takes it over")
        self._version = None

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            fresh = replace(self.owner, heartbeat=time.time())
            try:
                version = replace_if(self.uri, fresh.to_bytes(), self._version, self.endpoint_override)
            # Whatever the storage answers (OSError, botocore's errors), the next beat tries again:
            # a heartbeat thread that died would let the lock go stale under a live run.
            except Exception as err:
                console.say(f"[avray] could not refresh the lock on {self.output} ({err}); trying again")
                continue
            if version is None:
                console.say(
                    f"[avray] warning: another run took over the lock on {self.output} (it judged this run "
                    "gone): two runs may now write there"
                )
                self._version = None
                return
            self._version = version
