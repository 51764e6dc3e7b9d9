"""``workflows/pretrain.py`` as users run it, meeting what a shared machine brings: another run
that owns the output, a stop signal at any point, and resources that no node has.

Apart from tests/train/test_pretrain.py, which shares its pytest-xdist worker with
tests/cluster (``SHARING_UNINTERRUPTED_RUN``): these tests run in another worker meanwhile."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from avray.checkpoint import load_state
from avray.lock import OutputLock
from avray.tracking import RUN_ID_FILE
from avray.train.trainer import METRICS_FILE, RUN_NAME
from tests.eval.test_evaluate import run_workflow
from tests.tiny import TINY, run_workflow_process

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def checkpoint_folders(output: Path) -> list[Path]:
    """The checkpoints Ray Train kept under ``output``, oldest first."""
    return sorted(p for p in (output / RUN_NAME).glob("checkpoint_*") if p.is_dir())


def test_a_second_pretrain_into_a_running_ones_output_is_refused_and_a_rerun_resumes_its_lineage(
    ray_local, corpus, tmp_path, monkeypatch, capsys
):
    """Two runs into one output mixed their checkpoints, and ``mlflow_run_id`` named the second
    while the checkpoints were the first's. The second is refused; run again once the first has
    ended, it resumes the first's checkpoints into the first's MLflow run."""
    output = tmp_path / "run"
    settings = [arg for setting in (*TINY, "train.num_workers=1") for arg in ("--set", setting)]
    mlflow_uri = f"sqlite:///{tmp_path}/mlflow.db"
    command = ["--data", corpus, "--output", str(output), *settings, "--set", f"tracking.tracking_uri={mlflow_uri}"]
    assert run_workflow("pretrain.py", monkeypatch, *command, "--set", "train.epochs=2") == 0
    run_id = (output / RUN_ID_FILE).read_text()
    checkpoints = checkpoint_folders(output)
    steps_per_epoch = load_state(checkpoints[-1])["global_step"] // 2
    capsys.readouterr()

    with OutputLock(str(output), "pretrain") as first:  # the first run, still running
        assert run_workflow("pretrain.py", monkeypatch, *command, "--set", "train.epochs=3") == 2
        refused = capsys.readouterr().err.strip()
        assert refused.startswith(f"error: output {output} is in use by pretrain (pid {first.owner.pid} on host ")
        assert (output / RUN_ID_FILE).read_text() == run_id
        assert checkpoint_folders(output) == checkpoints

    assert run_workflow("pretrain.py", monkeypatch, *command, "--set", "train.epochs=3") == 0
    assert (output / RUN_ID_FILE).read_text() == run_id
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    assert [run.info.run_id for run in client.search_runs([client.get_run(run_id).info.experiment_id])] == [run_id]
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3]
    newest = checkpoint_folders(output)[-1]
    assert newest not in checkpoints and load_state(newest)["global_step"] == 3 * steps_per_epoch
    records = [json.loads(line) for line in (output / METRICS_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]


# Ray Train's record of the checkpoints it has: what a re-run resumes from.
CHECKPOINTS = "pretrain/checkpoint_manager_snapshot.json"


def _stopped_pretrain(corpus: str, output: Path, signum: int, when: str | None) -> tuple[int, str]:
    """``workflows/pretrain.py`` on the tiny corpus, sent ``signum`` once a path matching
    ``output / when`` exists (None: never); its exit code and stderr."""
    done = run_workflow_process(
        "pretrain.py",
        ["--data", corpus, "--output", str(output)],
        (*TINY, "train.epochs=2", "train.num_workers=1"),
        signum if when is not None else None,
        lambda: any(output.glob(when)),
    )
    return done.returncode, done.stderr


def _run_statuses(output: Path) -> list[str]:
    if not (output / "mlflow.db").exists():
        return []
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{output}/mlflow.db")
    return [run.info.status for run in client.search_runs(client.search_experiments()[0].experiment_id)]


@pytest.mark.parametrize(
    "signum, when",
    [
        (signal.SIGINT, ".mlflow.db.*.partial"),  # while MLflow creates its tables
        (signal.SIGINT, "pretrain"),  # while Ray Train's controller starts (its storage folder appears)
        (signal.SIGTERM, CHECKPOINTS),  # mid-training: the first epoch's checkpoint registered
    ],
    ids=["sigint-mlflow-tables", "sigint-controller-start", "sigterm-mid-training"],
)
def test_a_stop_signal_ends_the_run_cleanly_and_rerunning_resumes(corpus, tmp_path, signum, when):
    output = tmp_path / "run"
    code, stderr = _stopped_pretrain(corpus, output, signum, when)
    assert code == 128 + signum, stderr
    assert stderr.strip().splitlines()[-1].startswith(f"stopped by {signal.Signals(signum).name}"), stderr
    # Ray's native crash dump went to the run's log file (avray.console), not to stderr.
    logs = stderr + "".join(log.read_text(errors="replace") for log in (output / "_logs").glob("*.log"))
    assert "Stack trace" not in logs and "*** SIG" not in logs and "Traceback" not in stderr, stderr
    # Before the run exists (MLflow still creating its tables) there is none to mark.
    assert set(_run_statuses(output)) <= {"KILLED"} and (when.endswith(".partial") or _run_statuses(output))
    assert not list(output.glob(".mlflow.db.*")), "a half-made MLflow store was left behind"
    if when != CHECKPOINTS:
        return
    code, stderr = _stopped_pretrain(corpus, output, signum, None)
    assert code == 0, stderr
    assert _run_statuses(output) == ["FINISHED"]
    # Resumed from a checkpoint: epoch 1 was logged once. Epoch 2 may be logged twice: the
    # stopped run can finish it before the signal lands.
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{output}/mlflow.db")
    steps = [m.step for m in client.get_metric_history((output / "mlflow_run_id").read_text(), "loss")]
    assert steps.count(1) == 1 and steps[-1] == 2, steps


def test_resources_no_node_has_are_refused_before_the_mlflow_run(corpus, tmp_path):
    """On the 2-CPU local cluster the workflow starts; Ray Train would retry its worker group forever."""
    out = subprocess.run(
        [
            sys.executable,
            "workflows/pretrain.py",
            "--data",
            corpus,
            "--output",
            str(tmp_path / "run"),
            "--set",
            "train.cpus_per_worker=64",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("error: 1 pretraining worker of (CPU 64) each (train.num_workers=auto"), line
    assert "nothing autoscales it" in line
    assert not (tmp_path / "run" / "mlflow.db").exists() and not (tmp_path / "run" / "mlflow_run_id").exists()
