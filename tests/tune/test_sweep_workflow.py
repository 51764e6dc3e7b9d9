"""``workflows/tune_losses.py`` as users run it, stopped by a signal mid-sweep and run again."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from tests.tiny import TINY, make_tiny_corpus

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
SWEEP = (*TINY, "train.epochs=3", "tune.num_samples=2", "tune.scheduler=fifo", "tune.cpus_per_trial=0.5")


def _sweep(corpus: Path, output: Path, stop: signal.Signals | None = None) -> subprocess.CompletedProcess:
    """The workflow on the tiny corpus (MLflow in the output's sqlite file), sent ``stop`` once
    a trial has its first checkpoint."""
    overrides = [arg for setting in SWEEP for arg in ("--set", setting)]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    process = subprocess.Popen(
        [sys.executable, "workflows/tune_losses.py", "--data", str(corpus), "--output", str(output), *overrides],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while stop is not None and process.poll() is None and not list(output.glob("tune_losses/*/checkpoint_*")):
            time.sleep(0.05)
        if stop is not None and process.poll() is None:
            process.send_signal(stop)
        stdout, stderr = process.communicate(timeout=300)
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    finally:
        process.kill()


def test_a_stopped_sweep_marks_its_run_killed_and_rerunning_resumes_it(tmp_path):
    """Before, Tune took SIGINT itself and fit() returned as if done: the sweep summarised the
    trials it had, called the best of them best, and marked the run FINISHED; SIGTERM aborted."""
    corpus = make_tiny_corpus(tmp_path / "corpus")
    output = tmp_path / "sweep"
    stopped = _sweep(corpus, output, signal.SIGTERM)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1].startswith("stopped by SIGTERM"), stopped.stderr
    assert not (output / "best_mixture.yaml").exists()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{output}/mlflow.db")
    run_id = (output / "mlflow_run_id").read_text()
    assert client.get_run(run_id).info.status == "KILLED"

    resumed = _sweep(corpus, output)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming the sweep" in resumed.stdout
    assert (output / "mlflow_run_id").read_text() == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    assert (output / "best_mixture.yaml").is_file()
