"""What a person reads while a workflow runs: avray's own lines and progress bars on the
terminal; Ray's, Ray Tune's, MLflow's internals (and native logs) in a log file.

A workflow run by :func:`avray.cli.run` captures its output from the moment it starts Ray
(:func:`capture`): the process's stdout and stderr, at the file-descriptor level too, go to
the log file, and only avray's lines reach the terminal: those the driver writes with
:func:`say`, and those Ray forwards from workers (behind a ``(name pid=N)`` prefix, which is
dropped) that carry :data:`MARK`, such as the training loop's epoch lines. A forwarded
:data:`TICK` line moves a progress bar instead of being shown. ``--verbose`` skips the
capture: everything prints, as Ray prints it.

Workers and tasks tick only where :data:`BARS_ENV` is set, as the driver sets it before it
starts a local cluster, whose processes inherit it. On a cluster the driver joins, nothing
ticks: a job's output is a log there, and its bars move when a step ends.
"""

from __future__ import annotations

import io
import os
import re
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

MARK = "[avray]"
TICK = "[avray:tick]"
BARS_ENV = "AVRAY_BARS"
# In the output folder; "_" because parquet readers skip such names, and an output may be a
# folder of shards (prepare.py, embed.py).
LOG_FOLDER = "_logs"
# Ray's prefix of a forwarded worker line, "(RayTrainWorker pid=81, ip=10.0.0.2) ", maybe coloured,
# and its note on lines it folded together.
RAY_PREFIX = re.compile(
    r"^(?:\x1b\[[0-9;]*m)*\((?:raylet|autoscaler[^)]*|.*?pid=\d+(?:, ip=[^)]*)?)\)(?:\x1b\[[0-9;]*m)* ?"
)
RAY_REPEATS = re.compile(r" \[repeated \d+x across cluster\]$")
# A worker reports progress at most this often: each tick is a line through Ray's log stream.
TICK_INTERVAL_S = 1.0

_active: _Console | None = None
_last_sent: dict[str, float] = {}  # per key, in this process
_unsent: dict[str, int] = {}  # advances not yet printed, per key


def say(message: str) -> None:
    """A line (or lines) for the user: on the terminal above any progress bar, and in the log."""
    if _active is None:
        print(message, flush=True)
    else:
        _active.show(message)


def bar(key: str, description: str, total: int | None, unit: str = "clip", initial: int = 0) -> tqdm:
    """A progress bar that :func:`tick` calls with ``key`` move, from any process; use it as a
    context manager. Without a captured console (``--verbose``, tests) it draws nothing."""
    if _active is None:
        return tqdm(total=total, disable=True)
    return _active.open_bar(key, description, total, unit, initial)


def tick(key: str, done: int | None = None, advance: int = 0) -> None:
    """Report progress on bar ``key``: ``done`` so far, or ``advance`` more. Called by workers
    and tasks; prints a :data:`TICK` line that the driver's console turns into bar movement, at
    most every :data:`TICK_INTERVAL_S` per key and process (advances are summed until then)."""
    if _active is not None:
        _active.move(key, done, advance)
        return
    if not os.environ.get(BARS_ENV):
        return
    _unsent[key] = _unsent.get(key, 0) + advance
    now = time.monotonic()
    if now - _last_sent.get(key, 0.0) < TICK_INTERVAL_S:
        return
    _last_sent[key] = now
    amount = f"{done}" if done is not None else f"+{_unsent.pop(key)}"
    print(f"{TICK} {key} {amount}", flush=True)


def log_path_for(output: str | None, workflow: str) -> Path:
    """Where a run's log goes: ``OUTPUT/_logs/`` for a local output, else the temp folder."""
    from avray.storage import is_remote

    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = (
        Path(output) / LOG_FOLDER if output and not is_remote(output) else Path(tempfile.gettempdir()) / "avray-logs"
    )
    return folder / f"{workflow}-{stamp}-{os.getpid()}.log"


class _Console:
    """The terminal's streams, the log file, the bars, and routing a line to one or the other."""

    def __init__(self, terminal: TextIO, log: TextIO):
        self.terminal = terminal
        self.log = log
        self.lock = threading.RLock()
        self.bars: dict[str, tqdm] = {}
        # A line in a non-terminal (make demo | tee) is redrawn less often: each redraw stays in the file.
        self.bar_interval = 0.5 if terminal.isatty() else 15.0

    def show(self, message: str) -> None:
        with self.lock:
            for active in self.bars.values():
                active.clear()
            self.terminal.write(message.rstrip("\n") + "\n")
            self.terminal.flush()
            for active in self.bars.values():
                active.refresh()
            self.log.write(message.rstrip("\n") + "\n")
            self.log.flush()

    def to_log(self, line: str) -> None:
        with self.lock:
            self.log.write(line)
            self.log.flush()

    def open_bar(self, key: str, description: str, total: int | None, unit: str, initial: int) -> tqdm:
        console = self

        class _Bar(tqdm):
            def __exit__(self, kind, value, traceback):
                # Ticks are sampled: a finished job's last ones may not have been printed.
                if kind is None and self.total is not None:
                    self.update(self.total - self.n)
                return super().__exit__(kind, value, traceback)

            def close(self):
                with console.lock:
                    if console.bars.get(key) is self:
                        del console.bars[key]
                    super().close()

        with self.lock:
            opened = _Bar(
                total=total,
                desc=description,
                unit=unit,
                initial=initial,
                file=self.terminal,
                mininterval=self.bar_interval,
                dynamic_ncols=True,
                leave=True,
            )
            self.bars[key] = opened
        return opened

    def move(self, key: str, done: int | None, advance: int) -> None:
        with self.lock:
            active = self.bars.get(key)
            if active is None:
                return
            active.update(done - active.n if done is not None else advance)

    def route(self, line: str) -> None:
        """One complete line from a stream: avray's to the terminal, a tick to its bar, the rest
        (Ray's, Tune's tables, MLflow's, the driver's own prints of other libraries) to the log."""
        body = RAY_REPEATS.sub("", RAY_PREFIX.sub("", line).rstrip("\n"))
        if body.startswith(TICK):
            key, _, amount = body[len(TICK) :].strip().partition(" ")
            done, advance = (None, int(amount[1:])) if amount.startswith("+") else (int(amount), 0)
            self.move(key, done, advance)
        elif body.startswith(MARK):
            self.show(body)
        else:
            self.to_log(line)


class _Router(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` while captured: whole lines to :meth:`_Console.route`."""

    def __init__(self, console: _Console, underlying: TextIO):
        self.console = console
        self.underlying = underlying
        self.pending = ""
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            self.pending += text
            *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.console.route(line + "\n")
        return len(text)

    def flush(self) -> None:
        with self.lock:
            rest, self.pending = self.pending, ""
        if rest:
            self.console.route(rest + "\n")

    def fileno(self) -> int:
        return self.underlying.fileno()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self):
        return self.underlying.encoding


def _drain(console: _Console, pipe: int) -> None:
    """Everything written to file descriptors 1 and 2 (native logs, handlers bound to the
    original streams): to the log, avray's marked lines to the terminal."""
    with os.fdopen(pipe, "r", errors="replace") as reader:
        for line in reader:
            console.route(line)


@contextmanager
def capture(log_path: Path):
    """Route this process's output as the module docstring says, until the block ends."""
    global _active
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    terminal = os.fdopen(os.dup(1), "w", buffering=1, errors="replace")
    log = open(log_path, "a", buffering=1, errors="replace")
    console = _Console(terminal, log)
    read_end, write_end = os.pipe()
    for fd in (1, 2):
        os.dup2(write_end, fd)
    os.close(write_end)
    drain = threading.Thread(target=_drain, args=(console, read_end), daemon=True, name="avray-console")
    drain.start()
    streams = sys.stdout, sys.stderr
    sys.stdout = _Router(console, streams[0])
    sys.stderr = _Router(console, streams[1])
    previous_env = os.environ.get(BARS_ENV)
    os.environ[BARS_ENV] = "1"
    _active = console
    try:
        yield console
    finally:
        for router in (sys.stdout, sys.stderr):
            router.flush()
        for active in list(console.bars.values()):
            active.close()
        sys.stdout, sys.stderr = streams
        streams[0].flush()
        streams[1].flush()
        for fd, original in saved.items():
            os.dup2(original, fd)
            os.close(original)
        drain.join(timeout=5)
        _active = None
        if previous_env is None:
            os.environ.pop(BARS_ENV, None)
        else:
            os.environ[BARS_ENV] = previous_env
        terminal.close()
        log.close()


def captured() -> bool:
    return _active is not None
