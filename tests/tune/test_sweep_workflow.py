"""``workflows/tune_losses.py`` as users run it, stopped by a signal mid-sweep and run again."""

import signal

import mlflow
import pytest

from tests.tiny import TINY, make_tiny_corpus, run_workflow_process

pytestmark = pytest.mark.slow
SWEEP = (*TINY, "train.epochs=3", "tune.num_samples=2", "tune.scheduler=fifo", "tune.cpus_per_trial=0.5")


def test_a_stopped_sweep_marks_its_run_killed_and_rerunning_resumes_it(tmp_path):
    """Before, Tune took SIGINT itself and fit() returned as if done: the sweep summarised the
    trials it had, called the best of them best, and marked the run FINISHED; SIGTERM aborted."""
    corpus = make_tiny_corpus(tmp_path / "corpus")
    output = tmp_path / "sweep"
    args = ["--data", str(corpus), "--output", str(output)]
    first_checkpoint = lambda: bool(list(output.glob("tune_losses/*/checkpoint_*")))  # noqa: E731
    stopped = run_workflow_process("tune_losses.py", args, SWEEP, signal.SIGTERM, first_checkpoint)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1].startswith("stopped by SIGTERM"), stopped.stderr
    assert not (output / "best_mixture.yaml").exists()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{output}/mlflow.db")
    run_id = (output / "mlflow_run_id").read_text()
    assert client.get_run(run_id).info.status == "KILLED"

    resumed = run_workflow_process("tune_losses.py", args, SWEEP)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming the sweep" in resumed.stdout
    assert (output / "mlflow_run_id").read_text() == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    assert (output / "best_mixture.yaml").is_file()
