"""What every workflow script shares: flags, config loading, clear errors, Ray start-up."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

from avray import console
from avray.config import Config, ConfigError, load_config
from avray.data.sources import SourceError
from avray.lock import OutputInUse, OutputLock
from avray.preflight import PreflightError
from avray.tracking import redact
from avray.train.faults import TrainingError

EXIT_USAGE = 2
EXIT_FAILED = 1
# SIGINT (Ctrl-C) and SIGTERM (a batch scheduler, Kubernetes, `ray job stop`) stop a workflow
# at any point; it exits with 128 + the signal's number, as a shell reports a process it ended.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# What the user must fix (a config value, a data path, a server that does not answer, an
# output another run owns): one line and EXIT_USAGE. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ConfigError, SourceError, PreflightError, OutputInUse)
# The workflow run() is running: what start_ray takes and starts (the output's lock, the
# console capture, Ray) ends with it.
_session: ExitStack | None = None
# The stop signal that arrived, if one did.
_stopped_by: int | None = None


def _stop(signum: int, frame) -> None:
    global _stopped_by
    _stopped_by = signum
    for other in STOP_SIGNALS:  # what is left to do is shutting down: let it finish
        signal.signal(other, signal.SIG_IGN)
    # A KeyboardInterrupt: no ``except Exception`` swallows it, and the library meets it with
    # its own clean-up (a pretraining run's MLflow run is KILLED). Ray's blocking calls raise
    # a KeyboardInterrupt of their own in its place, hence _stopped_by.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def handle_stop_signals() -> None:
    """Turn SIGINT and SIGTERM into a KeyboardInterrupt in the main thread. Again once Ray is up:
    its core worker takes SIGTERM with a crash handler that dumps a native stack trace and
    aborts (exit code 134)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop)


def parser(description: str, *, data: bool = True, output: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    if data:
        p.add_argument(
            "--data", required=True, help="video folder, manifest (.csv/.parquet), s3:// prefix, or prepared clips"
        )
    if output:
        p.add_argument("--output", required=True, help="output folder (local or s3://)")
    p.add_argument("--config", help="YAML config (see workflows/configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=5 (repeatable)",
    )
    p.add_argument(
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster to join (default: $RAY_ADDRESS, else a local cluster sized to this machine)",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="print Ray's, Ray Train's and MLflow's logs here too, not only in the run's log file",
    )
    return p


def load(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def init_ray(address: str | None = None, *, output: str | None = None, verbose: bool = False, **kwargs) -> None:
    """Join ``address`` (``ray job submit`` sets RAY_ADDRESS) or start a local cluster.

    Under :func:`run`, unless ``verbose``, the output of Ray and everything after it goes to a
    log file (in ``output``'s ``_logs/`` when local) and only avray's lines and bars are
    shown (:mod:`avray.console`); Ray shuts down when the workflow ends.
    """
    import ray

    from avray.cluster import local_dashboard_port

    if ray.is_initialized():
        return
    if _session is not None and not verbose and not console.captured():
        log = console.log_path_for(output, workflow_name())
        _session.enter_context(console.capture(log))
        console.say(f"[avray] Ray's and MLflow's own logs go to {log} (--verbose shows them here)")
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # "local" starts a fresh cluster sized to this machine instead of joining one found on disk.
    # With the dashboard: it serves Ray's State API, which Ray Train's placement-group cleaner
    # polls every second; without it, each training run logged a warning a second.
    if not address or address == "local":
        kwargs.setdefault("dashboard_port", local_dashboard_port())
    ray.init(address=address or "local", include_dashboard=True, **kwargs)
    if _session is not None:
        handle_stop_signals()
        _session.callback(ray.shutdown)  # before the capture ends: shutting down logs too
    # avray draws its own bars (avray.console); Ray Data's would land in the log file.
    ray.data.DataContext.get_current().enable_progress_bars = verbose and sys.stderr.isatty()


def start_ray(args: argparse.Namespace, cfg: Config, **kwargs) -> None:
    """:func:`init_ray` for a workflow's parsed :func:`parser` flags, once the workflow owns its
    output (:class:`avray.lock.OutputLock`, held until :func:`run` ends): called after the
    checks, so a refused run has started nothing."""
    output = getattr(args, "output", None) or getattr(args, "workdir", None)
    if output is not None and _session is not None:
        _session.enter_context(OutputLock(str(output), workflow_name(), cfg.data.endpoint_override))
    init_ray(args.ray_address, output=output, verbose=args.verbose, **kwargs)


def workflow_name() -> str:
    """The running workflow script's name (``pretrain``, ``prepare``, ...)."""
    return Path(sys.argv[0]).stem or "avray"


def finish_benchmark(figures: dict, json_path: str | None) -> int:
    """A benchmark's last step: its figures to ``json_path`` (when given), Ray shut down."""
    import json

    import ray

    if json_path:
        Path(json_path).write_text(json.dumps(figures, indent=2))
    ray.shutdown()
    return 0


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> None:
    """Run a workflow's ``main``; a user error (:data:`USER_ERRORS`) is one line and exit code 2,
    training stopped by an error that a retry would repeat (:class:`TrainingError`) one line and 1,
    a stop signal (:data:`STOP_SIGNALS`) one line and 128 + its number."""
    global _session, _stopped_by
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    handle_stop_signals()
    try:
        with ExitStack() as _session:
            code = main(argv)
    except KeyboardInterrupt as stop:
        # A library that stopped gracefully on a signal of its own handling names it (avray.tune).
        named = stop.args[0] if stop.args and stop.args[0] in signal.Signals.__members__ else None
        signum = _stopped_by or (signal.Signals[named] if named else signal.SIGINT)
        print(f"stopped by {signal.Signals(signum).name}: run the same command again to resume", file=sys.stderr)
        code = 128 + signum
    except USER_ERRORS as err:
        print(f"error: {redact(str(err))}", file=sys.stderr)
        code = EXIT_USAGE
    except TrainingError as err:
        print(f"error: {redact(str(err))}", file=sys.stderr)
        code = EXIT_FAILED
    finally:
        _session, _stopped_by = None, None
        for signum, handler in before.items():
            signal.signal(signum, handler)
    sys.exit(code)
