"""Where MLflow runs go: config, then $MLFLOW_TRACKING_URI, then a sqlite file beside the output."""

import logging

from avray.config import TrackingConfig
from avray.tracking import tracking_uri


def test_config_wins_then_environment_then_a_file_in_the_output(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(TrackingConfig(tracking_uri="sqlite:///x.db"), str(tmp_path)) == "sqlite:///x.db"
    assert tracking_uri(TrackingConfig(), str(tmp_path)) == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri(TrackingConfig(), str(tmp_path)) == f"sqlite:///{tmp_path}/mlflow.db"


def test_a_remote_output_without_a_tracking_uri_warns(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="avray.tracking"):
        uri = tracking_uri(TrackingConfig(), "s3://bucket/runs/exp1")
    assert uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert "MLFLOW_TRACKING_URI" in caplog.text
