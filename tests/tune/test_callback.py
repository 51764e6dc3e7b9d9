"""The sweep's driver-side record of trial results, which Tune's own may lose on a retry."""

import json
import math
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import mlflow

from avray.tune.callback import HISTORY_FILE, RESULTS_FOLDER, TrialRuns, recorded_results


def _result(epoch: int, fitness: float) -> dict:
    return {
        "epoch": epoch,
        "training_iteration": epoch,
        "global_step": 3 * epoch,
        "lambda/infonce": 0.5,
        "val/elo_fitness": fitness,
        "config": {"lambda/infonce": 0.5},
        "exploited_from": None,
    }


def _sweep(tmp_path, trials: int):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    parent = client.create_run(client.create_experiment("sweep")).info.run_id
    output = str(tmp_path / "out")
    population = [SimpleNamespace(trial_id=f"t{i}", config={"lambda/infonce": 0.5}) for i in range(trials)]
    return client, TrialRuns(uri, "sweep", parent, output), output, population


def test_every_result_is_recorded_in_arrival_order_also_by_a_restored_callback(tmp_path):
    client, callback, output, trials = _sweep(tmp_path, 2)
    callback.on_trial_result(1, trials, trials[0], _result(1, -0.3))
    callback.on_trial_result(1, trials, trials[1], _result(1, -0.4))
    callback.on_trial_result(2, trials, trials[0], _result(2, math.nan))
    # Tune pickles its callbacks with the experiment; a resumed sweep appends to the same record.
    restored = pickle.loads(pickle.dumps(callback))
    restored.on_trial_result(3, trials, trials[0], _result(2, -0.2))  # the epoch in flight, run again
    restored.on_trial_result(3, trials, trials[0], _result(3, -0.1))

    rows = recorded_results(output)
    assert [r["epoch"] for r in rows["t0"]] == [1, 2, 2, 3]
    assert [r["epoch"] for r in rows["t1"]] == [1]
    assert math.isnan(rows["t0"][1]["val/elo_fitness"]) and rows["t0"][3]["val/elo_fitness"] == -0.1
    assert "config" not in rows["t0"][0] and rows["t0"][0]["exploited_from"] is None
    # The same results went to the trial's MLflow child run.
    run_id = restored._load()["runs"]["t0"]
    assert sorted(m.step for m in client.get_metric_history(run_id, "epoch")) == [1, 2, 2, 3]


def test_ending_a_trial_uses_its_own_results_not_a_reread_of_every_trials(tmp_path):
    _, callback, output, trials = _sweep(tmp_path, 3)
    for epoch in (1, 2):
        for trial in trials:
            callback.on_trial_result(epoch, trials, trial, _result(epoch, -0.5))
    # What the callback saw is what a trial's history holds: the stored record is written for
    # a resumed sweep, not read back (once per trial ended, for every trial's rows) here.
    shutil.rmtree(f"{output}/{RESULTS_FOLDER}")
    for trial in trials:
        callback.on_trial_complete(3, trials, trial)
        run_id = callback._load()["runs"][trial.trial_id]
        saved = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=HISTORY_FILE, tracking_uri=callback.uri
        )
        history = json.loads(Path(saved).read_text())
        assert [entry["iteration"] for entry in history["lambdas"]] == [1, 2]
