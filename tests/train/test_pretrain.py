"""Pretraining on real Ray Train workers: MLflow, checkpoints, resume, a killed worker.

Training across nodes, and losing one, is in tests/cluster/test_node_loss.py; checkpoints on
S3, named by URI and loaded back, in tests/test_security.py (with the credentials it needs)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pytest
import torch

from avray.checkpoint import load_state
from avray.config import ConfigError
from avray.models import load_model
from avray.models.mlflow_model import example_inputs
from avray.train.trainer import METRICS_FILE, pretrain
from tests.tiny import FAULT_RUN, own_ray_processes, tiny_config

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_pretrain_logs_to_mlflow_and_resumes(ray_local, corpus, tmp_path):
    cfg = tiny_config(
        tmp_path,
        "train.epochs=2",
        "train.num_workers=1",
        "tracking.system_metrics_interval_s=0.5",
        "data.val_fraction=0.5",  # two held-out videos of each label: what val/knn_accuracy needs
    )
    result = pretrain(cfg, corpus, str(tmp_path / "run"))
    assert [h["epoch"] for h in result.history] == [1, 2]
    steps_per_epoch = result.history[0]["global_step"]
    assert steps_per_epoch > 0 and result.history[1]["global_step"] == 2 * steps_per_epoch
    assert "val/elo_fitness" in result.metrics and "val/knn_accuracy" in result.metrics

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(result.tracker.run_id)
    assert run.data.params["train.epochs"] == "2" and run.data.params["objectives.infonce.weight"] == "1.0"
    for key in ("loss", "loss/infonce", "clips_per_s", "val/elo_fitness"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "plots", "checkpoint"} <= artifacts
    assert run.info.status == "FINISHED"
    # The machine of each training worker, from MLflow's own monitor.
    assert any(key.startswith("system/rank0/cpu_utilization") for key in run.data.metrics), sorted(run.data.metrics)
    # Each epoch's metrics for readers without MLflow, as MLflow has them.
    records = [json.loads(line) for line in (tmp_path / "run" / METRICS_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[1]["loss"] == pytest.approx(client.get_metric_history(run.info.run_id, "loss")[-1].value)
    # The trained model as an MLflow Model that embeds clips exactly as the checkpoint does.
    logged = mlflow.artifacts.download_artifacts(
        artifact_uri=run.data.tags["avray.model_uri"], tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"
    )
    embedder = mlflow.pyfunc.load_model(logged)
    clips = example_inputs(cfg)
    clips["video"][:] = np.random.default_rng(0).integers(0, 255, clips["video"].shape, dtype=np.uint8)
    embedded = embedder.predict(clips)

    model, saved_cfg = load_model(result.checkpoint)
    assert saved_cfg.model == cfg.model and sum(p.numel() for p in model.parameters()) > 0
    with torch.inference_mode():
        direct = model(torch.as_tensor(clips["video"]), torch.as_tensor(clips["audio"]))
    for name in ("audio", "video", "fused"):
        np.testing.assert_allclose(embedded[name], direct[name].numpy(), rtol=1e-5, atol=1e-6)

    # The same command with more epochs picks up where the first stopped: same run, one more
    # epoch; also from a checkpoint that Ray's record does not list (a stop signal between a
    # worker's save and the controller's note of it), which is what removing the record leaves.
    (tmp_path / "run" / "pretrain" / "checkpoint_manager_snapshot.json").unlink()
    longer = tiny_config(tmp_path, "train.epochs=3", "train.num_workers=1", "data.val_fraction=0.5")
    resumed = pretrain(longer, corpus, str(tmp_path / "run"))
    assert resumed.tracker.run_id == result.tracker.run_id
    assert [(h["epoch"], h["global_step"]) for h in resumed.history] == [(3, 3 * steps_per_epoch)]
    records = [json.loads(line) for line in (tmp_path / "run" / METRICS_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]


def test_a_killed_worker_resumes_from_checkpoint_with_the_same_step_count(
    uninterrupted_run, ray_local, fault_corpus, tmp_path
):
    assert {"loss/infonce", "loss/fused", "loss/xdc", "loss/cluster_contrastive", "loss/dcca", "loss/sdl"} <= set(
        uninterrupted_run.metrics
    )
    expected_steps = uninterrupted_run.history[-1]["global_step"]

    output = tmp_path / "faulty"
    killed = []

    def kill_after_second_checkpoint():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            if len(list(output.glob("pretrain/checkpoint_*/state.pt"))) >= 2:
                workers = own_ray_processes("RayTrainWorker")
                if len(workers) == 2:
                    time.sleep(0.5)  # into the next epoch
                    os.kill(workers[-1].pid, signal.SIGKILL)
                    killed.append(workers[-1].pid)
                    return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_after_second_checkpoint, daemon=True)
    killer.start()
    result = pretrain(tiny_config(tmp_path, *FAULT_RUN), fault_corpus, str(output), track=False)
    killer.join()
    assert killed, "no training worker was killed: the fault was never injected"
    # The last attempt's history opens with the checkpoint it restored (epoch 2 or later);
    # started over, it would open with epoch 1.
    assert result.history[0]["epoch"] >= 2 and result.history[-1]["epoch"] == 6
    assert result.history[-1]["global_step"] == expected_steps
    assert load_state(Path(result.checkpoint))["global_step"] == expected_steps


def test_a_batch_the_clips_cannot_fill_is_refused_before_the_mlflow_run(ray_local, corpus, tmp_path):
    cfg = tiny_config(tmp_path, "train.batch_size=512", "train.num_workers=1")
    with pytest.raises(ConfigError, match="training clips cannot fill one batch of 512 .*lower train.batch_size"):
        pretrain(cfg, corpus, str(tmp_path / "run"))
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "run").exists()


def test_pretrain_cli_bad_config_fails_before_work(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "workflows/pretrain.py",
            "--data",
            str(tmp_path),
            "--output",
            str(tmp_path / "o"),
            "--set",
            "train.epochz=1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: unknown config key train.epochz")
    assert not (tmp_path / "o").exists()
