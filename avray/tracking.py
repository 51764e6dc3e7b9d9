"""MLflow: the one place that knows tracking URIs, run names and what is logged.

A tracking server that is down, or goes down mid-run, never stops training: calls are
buffered, a warning is printed once, and everything is sent when the server is back.

Credentials never leave through here: a password in a URI (``http://user:pass@host``) is
masked in every param, tag, text artifact, warning and printed command, and so is the value
of any param whose name says it is a secret (``*password*``, ``*_token``, ``*secret*``, ...).
The unmasked URI stays in memory, where the MLflow client needs it to log in.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from avray.config import Config, TrackingConfig
from avray.storage import is_remote, join_uri, read_file, write_file

logger = logging.getLogger("avray.tracking")

RUN_ID_FILE = "mlflow_run_id"
MASK = "***"

# scheme://user:password@ -- the password is group 2, up to the last "@" before the host.
_URI_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):([^/\s]*)@")
# Names of settings that hold secrets, as whole words of a dotted/underscored name: "token"
# and "api_key" are secrets, "tokens" (a count) and "output_key" (a dict key) are not.
_SECRET_NAME = re.compile(
    r"(?:^|[._-])(?:password|passwd|secret|token|credentials?|(?:api|access|secret|private)_?key)"
    r"(?:$|[._-])",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with the password of every URI in it masked (``http://user:***@host``)."""
    return _URI_PASSWORD.sub(rf"\1:{MASK}@", text)


def safe_value(name: str, value: Any) -> str:
    """``value`` as MLflow stores a param or tag (a string), safe to log under ``name``: masked
    whole when the name says it is a secret, else with URI passwords masked."""
    if value is not None and _SECRET_NAME.search(name):
        return MASK
    return redact(str(value))


def redact_params(params: Mapping[str, Any]) -> dict[str, str]:
    return {name: safe_value(name, value) for name, value in params.items()}


def has_masked_password(uri: str) -> bool:
    return any(match.group(2) == MASK for match in _URI_PASSWORD.finditer(uri))


@contextlib.contextmanager
def stdout_redacted() -> Iterator[None]:
    """Whatever is printed inside goes out with URI passwords masked (MLflow prints a run's
    URL, login included, "View run ... at: http://user:pass@host/...", when the run ends)."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        sys.stdout.write(redact(printed.getvalue()))


def tracking_uri(cfg: TrackingConfig, output: str) -> str:
    """``tracking.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a sqlite file in ``output``.

    A config read back from a checkpoint has its URI's password masked (checkpoints never
    store it): such a URI cannot log in, so ``$MLFLOW_TRACKING_URI`` is preferred to it."""
    if cfg.tracking_uri and not has_masked_password(cfg.tracking_uri):
        return cfg.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if cfg.tracking_uri:
        logger.warning(
            "tracking.tracking_uri %s has its password masked (a checkpoint's config never holds it): "
            "set MLFLOW_TRACKING_URI or --set tracking.tracking_uri=... with the password",
            cfg.tracking_uri,
        )
        return cfg.tracking_uri
    if is_remote(output):
        # sqlite cannot live on object storage; on a cluster the working dir is a temporary copy.
        logger.warning(
            "output %s is remote and no MLflow tracking URI is set: logging to ./mlflow.db, "
            "which a Ray job's temporary working dir loses; set MLFLOW_TRACKING_URI",
            output,
        )
        return f"sqlite:///{Path('mlflow.db').resolve()}"
    return f"sqlite:///{Path(output).resolve() / 'mlflow.db'}"


def ui_command(uri: str) -> str:
    """What to run to see the runs; printed, so the URI's password is masked."""
    return f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite") else f"open {redact(uri)}"


# Masked URI -> the URI with its login, for this process only: objects that Ray pickles to
# disk (Tune's callbacks, in tuner.pkl) hold the masked URI and log in through here.
_LOGINS: dict[str, str] = {}


def with_login(uri: str) -> str:
    """The URI behind a masked ``uri``, when this process has opened a run with it."""
    return _LOGINS.get(uri, uri)


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a sqlite store's file (MLflow's
    default, ./mlruns in whatever folder the job started in, scatters them), else the
    server's choice."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).resolve().parent / "mlartifacts").as_uri()
    return None


def create_sqlite_store_whole(uri: str) -> None:
    """Create a ``sqlite:///`` store's file with all its tables, or leave it as it is.

    MLflow creates its tables by migrations, one ALTER TABLE at a time: a run stopped in the
    middle (Ctrl-C in its first seconds) left a half-made file, and every later open of it
    failed ("duplicate column name: step"). The tables are made in a file of this process's
    own and linked into place whole; a file that another process linked first is kept."""
    if not uri.startswith("sqlite:///"):
        return
    # SQLAlchemy's options (``?timeout=30``) follow the path; they name no file.
    final = Path(uri[len("sqlite:///") :].split("?", 1)[0])
    if final.exists() or not final.parent.is_dir():
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    # A name of its own per attempt: MLflow keeps an engine per URI for the process's life.
    partial = final.with_name(f".{final.name}.{os.getpid()}-{time.monotonic_ns()}.partial")
    try:
        SqlAlchemyStore(f"sqlite:///{partial}", artifact_location(uri)).engine.dispose()
        with contextlib.suppress(FileExistsError):
            os.link(partial, final)
    finally:
        partial.unlink(missing_ok=True)


class TrackingError(RuntimeError):
    """MLflow could not create a run; the message is MLflow's with URI passwords masked."""


class Tracker:
    """A resilient handle on one MLflow run (created, or resumed by id)."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_id: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
    ):
        import mlflow

        uri = with_login(uri)
        _LOGINS[redact(uri)] = uri
        self.uri = uri
        create_sqlite_store_whole(uri)
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        self.pending: list[tuple[str, tuple, dict]] = []
        self.warned = False
        if run_id is None:
            try:
                exp = self.client.get_experiment_by_name(experiment)
                exp_id = (
                    exp.experiment_id
                    if exp
                    else self.client.create_experiment(experiment, artifact_location=artifact_location(uri))
                )
                run_id = self.client.create_run(exp_id, run_name=run_name, tags=redact_params(tags or {})).info.run_id
            except Exception as err:  # noqa: BLE001 - MLflow's errors quote the request URL, password included
                raise TrackingError(redact(str(err))) from None
        self.run_id = run_id

    def _call(self, method: str, *args, **kwargs) -> None:
        self.pending.append((method, args, kwargs))
        self.flush()

    def _send(self, method: str, *args, **kwargs) -> None:
        # Ending a run prints its URL, login included. Only then is stdout swapped: the swap
        # is process-wide, and this is the one MLflow call that prints.
        prints_login = method == "set_terminated" and redact(self.uri) != self.uri
        with stdout_redacted() if prints_login else contextlib.nullcontext():
            getattr(self.client, method)(self.run_id, *args, **kwargs)

    def flush(self) -> bool:
        """Send what is buffered; False (and one warning) while the server is unreachable."""
        while self.pending:
            method, args, kwargs = self.pending[0]
            try:
                self._send(method, *args, **kwargs)
            except Exception as err:  # noqa: BLE001 - any tracking failure must not stop training
                if not self.warned:
                    # MLflow's errors quote the request URL, password included.
                    logger.warning(
                        "MLflow at %s unavailable (%s); buffering %d call(s) and training on",
                        redact(self.uri),
                        redact(str(err)),
                        len(self.pending),
                    )
                    self.warned = True
                return False
            self.pending.pop(0)
        if self.warned:
            logger.warning("MLflow at %s reachable again; buffered calls sent", redact(self.uri))
            self.warned = False
        return True

    def log_params(self, params: Mapping[str, Any]) -> None:
        import mlflow.entities

        items = [mlflow.entities.Param(k, v) for k, v in redact_params(params).items()]
        for i in range(0, len(items), 100):
            self._call("log_batch", params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import mlflow.entities

        now = int(time.time() * 1000)
        items = [mlflow.entities.Metric(k.replace("@", "_at_"), float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self._call("log_batch", metrics=items[i : i + 500])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("log_artifact", str(path), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        """``text`` (URI passwords masked) as the artifact ``name``; held in memory while the
        server is unreachable, so no file outlives the call."""
        self._call("log_text", redact(text), name)

    def set_tag(self, key: str, value: str) -> None:
        self._call("set_tag", key, safe_value(key, value))

    def finish(self, status: str = "FINISHED") -> None:
        self._call("set_terminated", status)

    def reopen(self) -> None:
        """The run is RUNNING again (resumed after it was KILLED or FAILED), with no end time."""
        self._call("update_run", status="RUNNING")


def start_job_run(cfg: Config, output: str, job: str = "pretrain") -> Tracker:
    """The MLflow run of a job (``pretrain``, ``tune``) writing to ``output``; re-running the job
    resumes the same run. Logs the resolved config as params and as ``config.yaml``."""
    uri = tracking_uri(cfg.tracking, output)
    # Beside the checkpoints, on S3 too: a re-run that resumes them logs into their run.
    id_file = join_uri(output, RUN_ID_FILE)
    run_id = (read_file(id_file, cfg.data.endpoint_override) or b"").decode().strip() or None
    tracker = Tracker(
        uri,
        cfg.tracking.experiment,
        run_id=run_id,
        run_name=cfg.tracking.run_name or Path(output).name,
        tags={"avray.job": job},
    )
    if tracker.run_id != run_id:
        write_file(id_file, tracker.run_id.encode(), cfg.data.endpoint_override)
    if run_id is None:
        tracker.log_params(cfg.flat())
        tracker.log_text(cfg.to_yaml(), "config.yaml")
    else:
        tracker.reopen()
    return tracker


@contextlib.contextmanager
def system_metrics(uri: str, run_id: str, interval_s: float, node: str) -> Iterator[None]:
    """MLflow's system metrics (CPU, memory, disk, network; GPU where nvidia-ml-py finds one)
    of this process's machine, every ``interval_s``, as ``system/`` metrics of the run, tagged
    with ``node`` (a training worker's rank); a monitor that fails to start costs nothing."""
    if interval_s <= 0:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=interval_s, resume_logging=True, node_id=node, tracking_uri=with_login(uri)
    )
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


class MetricsFile:
    """Each epoch's metrics as a JSON line in ``metrics.jsonl`` of a run's output (local or
    ``s3://``), for reading runs without MLflow. Rewritten whole after each epoch (object stores
    do not append); a resumed run keeps the lines of the epochs before ``first_epoch``."""

    def __init__(self, uri: str, first_epoch: int):
        from avray.storage import filesystem_for

        self.fs, self.path = filesystem_for(uri)
        self.lines: list[str] = []
        if first_epoch > 0 and self.fs.get_file_info(self.path).type.name == "File":
            with self.fs.open_input_stream(self.path) as handle:
                old = handle.read().decode().splitlines()
            self.lines = [line for line in old if line and json.loads(line).get("epoch", 0) <= first_epoch]

    def append(self, metrics: Mapping[str, Any]) -> None:
        values = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        self.lines.append(json.dumps(values, sort_keys=True))
        with self.fs.open_output_stream(self.path) as handle:
            handle.write(("\n".join(self.lines) + "\n").encode())
