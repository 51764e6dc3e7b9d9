"""MLflow: the one place that knows tracking URIs, run names and what is logged.

A tracking server that is down, or goes down mid-run, never stops training: calls are
buffered, a warning is printed once, and everything is sent when the server is back.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from avray.config import Config, TrackingConfig

logger = logging.getLogger("avray.tracking")

RUN_ID_FILE = "mlflow_run_id"


def tracking_uri(cfg: TrackingConfig, output: str) -> str:
    """``tracking.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a sqlite file in ``output``."""
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if "://" in output:
        # sqlite cannot live on object storage; on a cluster the working dir is a temporary copy.
        logger.warning("output %s is remote and no MLflow tracking URI is set: logging to ./mlflow.db, "
                       "which a Ray job's temporary working dir loses; set MLFLOW_TRACKING_URI", output)
        return f"sqlite:///{Path('mlflow.db').resolve()}"
    return f"sqlite:///{Path(output).resolve() / 'mlflow.db'}"


def ui_command(uri: str) -> str:
    return f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite") else f"open {uri}"


class Tracker:
    """A resilient handle on one MLflow run (created, or resumed by id)."""

    def __init__(self, uri: str, experiment: str, run_id: str | None = None, run_name: str | None = None,
                 tags: Mapping[str, str] | None = None):
        import mlflow

        self.uri = uri
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        self.pending: list[tuple[str, tuple, dict]] = []
        self.warned = False
        if run_id is None:
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
            run_id = self.client.create_run(exp_id, run_name=run_name, tags=dict(tags or {})).info.run_id
        self.run_id = run_id

    def _call(self, method: str, *args, **kwargs) -> None:
        self.pending.append((method, args, kwargs))
        self.flush()

    def flush(self) -> bool:
        """Send what is buffered; False (and one warning) while the server is unreachable."""
        while self.pending:
            method, args, kwargs = self.pending[0]
            try:
                getattr(self.client, method)(self.run_id, *args, **kwargs)
            except Exception as err:  # noqa: BLE001 - any tracking failure must not stop training
                if not self.warned:
                    logger.warning("MLflow at %s unavailable (%s); buffering %d call(s) and training on",
                                   self.uri, err, len(self.pending))
                    self.warned = True
                return False
            self.pending.pop(0)
        if self.warned:
            logger.warning("MLflow at %s reachable again; buffered calls sent", self.uri)
            self.warned = False
        return True

    def log_params(self, params: Mapping[str, Any]) -> None:
        import mlflow.entities

        items = [mlflow.entities.Param(k, str(v)) for k, v in params.items()]
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
        folder = Path(tempfile.mkdtemp(prefix="avray-mlflow-"))
        (folder / name).write_text(text)
        self.log_artifact(folder / name)

    def set_tag(self, key: str, value: str) -> None:
        self._call("set_tag", key, value)

    def finish(self, status: str = "FINISHED") -> None:
        self._call("set_terminated", status)


def start_job_run(cfg: Config, output: str, job: str = "pretrain") -> Tracker:
    """The MLflow run of a job (``pretrain``, ``tune``) writing to ``output``; re-running the job
    resumes the same run. Logs the resolved config as params and as ``config.yaml``."""
    uri = tracking_uri(cfg.tracking, output)
    id_file = Path(output) / RUN_ID_FILE if "://" not in output else None
    run_id = id_file.read_text().strip() if id_file and id_file.exists() else None
    tracker = Tracker(uri, cfg.tracking.experiment, run_id=run_id,
                      run_name=cfg.tracking.run_name or Path(output).name, tags={"avray.job": job})
    if id_file is not None:
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(tracker.run_id)
    if run_id is None:
        tracker.log_params(cfg.flat())
        tracker.log_text(cfg.to_yaml(), "config.yaml")
    return tracker
