"""The sweep's driver-side record of trial results, which Tune's own may lose on a retry."""

import math
import pickle
from types import SimpleNamespace

import mlflow

from avray.tune.callback import TrialRuns, recorded_results


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


def test_every_result_is_recorded_in_arrival_order_also_by_a_restored_callback(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    parent = client.create_run(client.create_experiment("sweep")).info.run_id
    state_file = str(tmp_path / "out" / "trial_runs.json")
    trials = [SimpleNamespace(trial_id=f"t{i}", config={"lambda/infonce": 0.5}) for i in range(2)]
    callback = TrialRuns(uri, "sweep", parent, state_file)
    callback.on_trial_result(1, trials, trials[0], _result(1, -0.3))
    callback.on_trial_result(1, trials, trials[1], _result(1, -0.4))
    callback.on_trial_result(2, trials, trials[0], _result(2, math.nan))
    # Tune pickles its callbacks with the experiment; a resumed sweep appends to the same record.
    restored = pickle.loads(pickle.dumps(callback))
    restored.on_trial_result(3, trials, trials[0], _result(2, -0.2))  # the epoch in flight, run again
    restored.on_trial_result(3, trials, trials[0], _result(3, -0.1))

    rows = recorded_results(state_file)
    assert [r["epoch"] for r in rows["t0"]] == [1, 2, 2, 3]
    assert [r["epoch"] for r in rows["t1"]] == [1]
    assert math.isnan(rows["t0"][1]["val/elo_fitness"]) and rows["t0"][3]["val/elo_fitness"] == -0.1
    assert "config" not in rows["t0"][0] and rows["t0"][0]["exploited_from"] is None
    # The same results went to the trial's MLflow child run.
    run_id = restored._load()["runs"]["t0"]
    assert sorted(m.step for m in client.get_metric_history(run_id, "epoch")) == [1, 2, 2, 3]
