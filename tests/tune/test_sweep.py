"""Loss-mixture sweeps on real Ray Tune trials: PBT exploits, ASHA with Optuna, MLflow parent
and child runs with the λ history, a resumed sweep, and a killed trial."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import mlflow
import pytest

from avray.config import ConfigError, load_config
from avray.tune import tune_losses
from avray.tune.callback import HISTORY_FILE
from tests.conftest import own_cluster
from tests.tiny import make_tiny_corpus, own_ray_processes, tiny_config

pytestmark = pytest.mark.slow

# Three objectives, so the genome has three λ; two trials, the worse copying the better each epoch.
PBT = (
    "train.epochs=3",
    "objectives.dcca.weight=0.5",
    "tune.num_samples=2",
    "tune.quantile_fraction=0.5",
    "tune.cpus_per_trial=0.5",
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_tiny_corpus(tmp_path_factory.mktemp("tune-corpus"))


def _children(client, parent_id: str):
    return client.search_runs(
        [client.get_run(parent_id).info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )


def test_pbt_sweep_exploits_and_logs_every_trial_with_its_lambda_history(ray_local, corpus, tmp_path):
    output = tmp_path / "sweep"
    result = tune_losses(tiny_config(tmp_path, *PBT), corpus, str(output))
    assert len(result.trials) == 2 and all(t["status"] == "ok" and t["epochs"] == 3 for t in result.trials)
    exploited = [t for t in result.trials if t["exploits"] > 0]
    assert exploited, "PBT never copied a trial: nothing was exploited"

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["avray.job"] == "tune" and parent.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)} | {
        a.path for a in client.list_artifacts(parent.info.run_id, "plots")
    }
    assert {"trials.csv", "best_mixture.yaml", "plots/lambda_trajectories.png", "plots/fitness.png"} <= artifacts

    children = _children(client, parent.info.run_id)
    assert len(children) == 2
    by_trial = {run.data.tags["avray.trial_id"]: run for run in children}
    assert set(by_trial) == {t["trial"] for t in result.trials}
    for trial in result.trials:
        run = by_trial[trial["trial"]]
        for name in ("infonce", "fused", "dcca"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, f"lambda/{name}")]
            assert steps == [1, 2, 3], (trial["trial"], name, steps)
        assert client.get_metric_history(run.info.run_id, "val/elo_fitness")

    # The exploited trial's history names the trial it copied, and its logged λ change there.
    trial = exploited[0]
    run = by_trial[trial["trial"]]
    record = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path=HISTORY_FILE, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"
            )
        ).read_text()
    )
    event = record["events"][0]
    assert event["exploited_from"] in set(by_trial) - {trial["trial"]}
    assert event["before"] != event["after"]
    logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "lambda/dcca")}
    assert logged[event["iteration"]] == pytest.approx(event["after"]["dcca"])
    assert all(0.0 <= v <= 1.0 for v in logged.values())

    # The best mixture is a config pretrain.py can take: its weights are the best trial's λ.
    for name in ("infonce", "fused", "dcca"):
        assert getattr(result.best_config.objectives, name).weight == pytest.approx(result.best[f"final_lambda/{name}"])
    assert load_config(output / "best_mixture.yaml") == result.best_config
    assert (output / "trials.csv").read_text().count("\n") == 3  # header + 2 trials

    # The same command again finds the finished sweep and resumes it (Tuner.restore): no new trials.
    again = tune_losses(tiny_config(tmp_path, *PBT), corpus, str(output))
    assert again.parent_run_id == result.parent_run_id
    assert {t["trial"] for t in again.trials} == {t["trial"] for t in result.trials}
    assert len(_children(client, parent.info.run_id)) == 2

    # Tune would restore the old search and trial count under the new config: refused, naming the key.
    with pytest.raises(ConfigError, match=r"holds a sweep begun with another config \(tune.num_samples: 2 -> 3\)"):
        tune_losses(tiny_config(tmp_path, *PBT, "tune.num_samples=3"), corpus, str(output))


def test_a_sweep_on_s3_resumes_into_the_same_mlflow_runs(corpus, s3_env, tmp_path):
    s3_env.client().create_bucket(Bucket="sweeps")
    output = "s3://sweeps/mix"
    cfg = tiny_config(
        tmp_path, "train.epochs=1", "tune.scheduler=fifo", "tune.num_samples=1", "tune.cpus_per_trial=0.5"
    )
    # A cluster started now: its workers inherit the S3 credentials, as a user's would.
    with own_cluster(2):
        first = tune_losses(cfg, corpus, output)
        again = tune_losses(cfg, corpus, output)
    assert again.parent_run_id == first.parent_run_id
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    (child,) = _children(client, first.parent_run_id)
    assert child.data.tags["avray.trial_id"] == first.trials[0]["trial"]
    # The driver's record lies in the bucket, and the resumed sweep's table is read from it
    # (Tune's own record, the fallback, would carry the trial's config/ columns).
    keys = {item["Key"] for item in s3_env.client().list_objects_v2(Bucket="sweeps", Prefix="mix/")["Contents"]}
    assert {
        "mix/mlflow_run_id",
        "mix/trial_runs.json",
        f"mix/trial_runs-results/{child.data.tags['avray.trial_id']}.jsonl",
    } <= keys
    (row,) = again.trials[0]["history"]
    assert row["epoch"] == 1 and not any(key.startswith("config/") for key in row)


def test_asha_sweep_with_optuna_runs_to_completion(ray_local, corpus, tmp_path):
    cfg = tiny_config(
        tmp_path,
        "train.epochs=2",
        "tune.scheduler=asha",
        "tune.search_alg=optuna",
        "tune.num_samples=2",
        "tune.cpus_per_trial=0.5",
        "tune.fitness=knn",
        "data.val_fraction=0.5",  # two held-out videos of each label: what kNN needs
    )
    result = tune_losses(cfg, corpus, str(tmp_path / "asha"))
    assert result.metric == "val/knn_accuracy"
    assert len(result.trials) == 2 and all(t["status"] == "ok" for t in result.trials)
    assert max(t["epochs"] for t in result.trials) == 2
    # Both fitness measures are reported for every trial, whichever one the sweep ranks by.
    assert all("val/elo_fitness" in row for t in result.trials for row in t["history"])
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert len(_children(client, result.parent_run_id)) == 2


def test_a_killed_trial_is_retried_from_its_checkpoint(ray_local, corpus, tmp_path):
    output = tmp_path / "faulty"
    killed = []
    epochs_to_train = 4

    def kill_after_a_registered_checkpoint():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            # A function trainable's second report starts only after Tune took the first (and
            # registered its checkpoint): from the second checkpoint folder on, a kill must
            # resume from a checkpoint. Killed earlier, the trial rightly starts from scratch.
            if list(output.glob("tune_losses/*/checkpoint_000001")) and own_ray_processes("ImplicitFunc"):
                victim = own_ray_processes("ImplicitFunc")[0]
                os.kill(victim.pid, signal.SIGKILL)
                killed.append(victim.pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_a_registered_checkpoint, daemon=True)
    killer.start()
    cfg = tiny_config(
        tmp_path, f"train.epochs={epochs_to_train}", "tune.scheduler=fifo", "tune.num_samples=1", "train.max_failures=2"
    )
    result = tune_losses(cfg, corpus, str(output))
    killer.join()
    assert killed, "no trial process was killed: the fault was never injected"
    (trial,) = result.trials
    assert trial["status"] == "ok" and trial["epochs"] == epochs_to_train
    history = trial["history"]
    steps_per_epoch = history[0]["global_step"]
    # Resumed from a checkpoint, not started again: epoch 1 ran once (the epoch in flight when
    # the process died may run again), and the last ends on exactly all epochs' worth of steps.
    epochs = [row["epoch"] for row in history]
    assert epochs.count(1) == 1 and epochs[-1] == epochs_to_train, epochs
    assert history[-1]["global_step"] == epochs_to_train * steps_per_epoch


def test_a_trial_that_would_fail_the_same_way_again_ends_at_once(ray_local, corpus, tmp_path):
    from avray.train.faults import TrainingError
    from tests.train.test_faults import FAILS_IN_THE_WORKER

    cfg = tiny_config(
        tmp_path, *FAILS_IN_THE_WORKER, "tune.num_samples=2", "tune.cpus_per_trial=0.5", "train.max_failures=3"
    )
    with pytest.raises(
        TrainingError,
        match=r"^every trial of the sweep failed; the first: training failed on trial "
        r"\w+ with \w+: model.n_fft .*; not retried",
    ):
        tune_losses(cfg, corpus, str(tmp_path / "sweep"))
