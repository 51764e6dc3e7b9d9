"""Where MLflow runs go: config, then $MLFLOW_TRACKING_URI, then a sqlite file beside the output."""

import logging

import pytest

from avray.checkpoint import load_config_of, save_state
from avray.config import TrackingConfig, load_config
from avray.tracking import (
    Tracker,
    TrackingError,
    redact,
    redact_params,
    start_job_run,
    stdout_redacted,
    tracking_uri,
    ui_command,
)


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


# Credentials: URI passwords and secret-named settings never reach MLflow, logs or prints.

PASSWORD = "canary-pw"


def test_redact_masks_uri_passwords_only():
    assert redact(f"http://user:{PASSWORD}@mlflow:5000/x") == "http://user:***@mlflow:5000/x"
    assert (
        redact(f"a postgresql://u:p@ss{PASSWORD}@db/m and s3://k:{PASSWORD}@b/p")
        == "a postgresql://u:***@db/m and s3://k:***@b/p"
    )
    for kept in ("http://mlflow:5000/x", "http://user@mlflow", "sqlite:////tmp/m.db", "s3://bucket/a@b.mp4"):
        assert redact(kept) == kept


def test_params_of_secret_named_keys_are_masked_whole():
    params = redact_params(
        {
            "a.password": PASSWORD,
            "b.api_key": PASSWORD,
            "c.auth_token": PASSWORD,
            "d.secret_access_key": PASSWORD,
            "e.token": None,
            "frozen.tokens": True,
            "model.video_feature_tokens": 4,
            "frozen.video.output_key": "x",
            "tracking.tracking_uri": f"http://u:{PASSWORD}@h",
        }
    )
    assert params == {
        "a.password": "***",
        "b.api_key": "***",
        "c.auth_token": "***",
        "d.secret_access_key": "***",
        "e.token": "None",
        "frozen.tokens": "True",
        "model.video_feature_tokens": "4",
        "frozen.video.output_key": "x",
        "tracking.tracking_uri": "http://u:***@h",
    }


def test_a_run_stores_params_tags_and_config_masked(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)  # a sqlite store keeps artifacts in ./mlruns: search them too
    cfg = load_config(
        None,
        [
            f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            f"data.endpoint_override=http://key:{PASSWORD}@127.0.0.1:9000",
        ],
    )
    tracker = start_job_run(cfg, str(tmp_path / "out"))
    tracker.set_tag("avray.source", f"s3://key:{PASSWORD}@bucket/videos")
    tracker.finish()
    run = mlflow.MlflowClient(tracker.uri).get_run(tracker.run_id)
    assert run.data.params["data.endpoint_override"] == "http://key:***@127.0.0.1:9000"
    assert run.data.tags["avray.source"] == "s3://key:***@bucket/videos"
    assert "http://key:***@127.0.0.1:9000" in next(tmp_path.rglob("artifacts/config.yaml")).read_text()
    assert not any(PASSWORD.encode() in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


def test_a_text_artifact_waits_in_memory_while_the_store_is_unreachable(tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # every temporary file of this process
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "x")
    blocker = tmp_path / "mlartifacts"  # where the store keeps artifacts: a file, so no folder fits
    blocker.write_text("")
    tracker.log_text(f"s3://key:{PASSWORD}@bucket/videos", "note.txt")
    assert len(tracker.pending) == 1
    blocker.unlink()
    assert tracker.flush() and not tracker.pending
    assert next(tmp_path.rglob("artifacts/note.txt")).read_text() == "s3://key:***@bucket/videos"
    assert not list(scratch.iterdir())


def test_errors_warnings_and_prints_mask_the_uri_password(monkeypatch, caplog, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://user:{PASSWORD}@127.0.0.1:9"  # nothing listens on port 9
    with pytest.raises(TrackingError) as refused:
        Tracker(uri, "x")
    assert "http://user:***@127.0.0.1:9" in str(refused.value) and PASSWORD not in str(refused.value)

    with caplog.at_level(logging.WARNING, logger="avray.tracking"):
        Tracker(uri, "x", run_id="0" * 32).log_metrics({"loss": 1.0}, step=1)  # buffered, warned
    assert "user:***@127.0.0.1:9" in caplog.text and PASSWORD not in caplog.text

    with stdout_redacted():
        print(f"View run at: {uri}/#/runs/1")  # what MLflow prints when a run ends
    print(ui_command(uri))
    printed = capsys.readouterr().out
    assert printed.count("http://user:***@127.0.0.1:9") == 2 and PASSWORD not in printed


def test_a_masked_config_uri_yields_to_the_environment(monkeypatch, caplog):
    masked = TrackingConfig(tracking_uri="http://user:***@mlflow:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:{PASSWORD}@mlflow:5000")
    assert tracking_uri(masked, "out") == f"http://user:{PASSWORD}@mlflow:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with caplog.at_level(logging.WARNING, logger="avray.tracking"):
        assert tracking_uri(masked, "out") == "http://user:***@mlflow:5000"
    assert "masked" in caplog.text


def test_checkpoints_keep_the_config_but_not_its_passwords(tmp_path):
    cfg = load_config(None, [f"tracking.tracking_uri=http://user:{PASSWORD}@mlflow:5000"])
    save_state(tmp_path, cfg, {"epoch": 0})
    assert PASSWORD not in (tmp_path / "config.yaml").read_text()
    assert load_config_of(tmp_path).tracking.tracking_uri == "http://user:***@mlflow:5000"


def test_a_job_rerun_into_an_s3_output_resumes_its_mlflow_run(s3_env, tmp_path):
    """The run id lies beside the checkpoints on S3 too: before, each re-run of a pretraining
    on an s3:// output resumed its checkpoints but logged into a new MLflow run."""
    s3_env.client().create_bucket(Bucket="tracked")
    cfg = load_config(None, [f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db"])
    first = start_job_run(cfg, "s3://tracked/runs/exp1")
    first.finish()
    again = start_job_run(cfg, "s3://tracked/runs/exp1")
    assert again.run_id == first.run_id
    stored = s3_env.client().get_object(Bucket="tracked", Key="runs/exp1/mlflow_run_id")["Body"].read()
    assert stored.decode() == first.run_id


def test_a_resumed_job_run_is_running_again_after_it_was_killed(tmp_path):
    import mlflow

    cfg = load_config(None, [f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db"])
    stopped = start_job_run(cfg, str(tmp_path / "out"))
    stopped.finish("KILLED")
    resumed = start_job_run(cfg, str(tmp_path / "out"))
    assert resumed.run_id == stopped.run_id
    assert mlflow.MlflowClient(resumed.uri).get_run(resumed.run_id).info.status == "RUNNING"


def test_a_store_stopped_while_mlflow_makes_its_tables_leaves_no_half_made_file(tmp_path, monkeypatch):
    """Ctrl-C during MLflow's migrations left a file every later open failed on."""
    import mlflow.store.db.utils as db_utils

    made_tables = db_utils._initialize_tables

    def stopped_midway(engine):
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE experiments (experiment_id INTEGER)")
        raise KeyboardInterrupt

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setattr(db_utils, "_initialize_tables", stopped_midway)
    with pytest.raises(KeyboardInterrupt):
        Tracker(uri, "exp")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(db_utils, "_initialize_tables", made_tables)
    run_id = Tracker(uri, "exp").run_id
    assert Tracker(uri, "exp").run_id != run_id  # the file is whole: opened again, it holds both runs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]
