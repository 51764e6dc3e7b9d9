"""MLflow child runs for the trials of a sweep, logged from the Tune driver.

Every trial gets a child run under the sweep's parent run: its first λ as params, every
result (λ, loss terms, fitness) as metrics per training iteration, and ``pbt_history.json``:
each exploit (whose checkpoint it copied) and explore (the λ before and after). λ change
during a PBT trial, so they are metrics: MLflow params cannot change.
"""

from __future__ import annotations

import json
import math

from ray import tune

from avray import console
from avray.storage import join_uri, read_file, write_file
from avray.tracking import Tracker, redact
from avray.tune.space import LAMBDA
from avray.tune.trainable import EXPLOITED_FROM

# What the console's line for a trial's result shows: its loss, and the fitnesses.
TRIAL_LINE = ("loss", "val/elo_fitness", "val/knn_accuracy")
LOGGED_PREFIXES = ("loss", "val/", "lambda/", "lr", "clips_per_s", "epoch", "global_step", "training_iteration")
HISTORY_FILE = "pbt_history.json"


STATE_FILE = "trial_runs.json"
RESULTS_FOLDER = "trial_runs-results"


def _results_uri(output: str, trial_id: str) -> str:
    return join_uri(output, f"{RESULTS_FOLDER}/{trial_id}.jsonl")


def _read_state(output: str) -> dict:
    saved = read_file(join_uri(output, STATE_FILE))
    return json.loads(saved) if saved else {"runs": {}, "lambdas": {}, "events": {}}


def _read_lines(output: str, trial_id: str) -> list[str]:
    saved = read_file(_results_uri(output, trial_id))
    return saved.decode().splitlines() if saved else []


def recorded_results(output: str) -> dict[str, list[dict]]:
    """Each trial's results, in the order they arrived (trial id -> rows), as :class:`TrialRuns`
    recorded them in the sweep's ``output`` (local or s3://).

    Tune's own record of a trial (``result.json``, ``Result.metrics_dataframe``) is written in
    a staging folder and synced to storage every 10 s or so; a retried trial first copies it
    back from storage, so the results between the last sync and the failure are lost from it
    (a trial killed after two epochs reported only epochs 3 and 4). This record is written
    by the driver as each result arrives.
    """
    return {trial: [json.loads(line) for line in _read_lines(output, trial)] for trial in _read_state(output)["runs"]}


def _lambdas(result: dict) -> dict:
    return {k.split("/", 1)[1]: v for k, v in result.items() if k.startswith(f"{LAMBDA}/")}


class TrialRuns(tune.Callback):
    """Keeps, in the sweep's ``output`` (local or s3://), ``trial_runs.json`` (trial -> run id,
    each trial's PBT events and last λ), so that a sweep resumed with ``Tuner.restore``, on
    this machine or another, goes on logging into the same child runs; and, beside it, every
    result of each trial (:func:`recorded_results`), from which the λ history is read. Each
    file is rewritten whole (object stores do not append): one trial's results, not all."""

    def __init__(self, uri: str, experiment: str, parent_run_id: str, output: str):
        self.uri, self.experiment, self.parent_run_id, self.output = uri, experiment, parent_run_id, output
        self._trackers: dict[str, Tracker] = {}
        self._state: dict = {}
        self._lines: dict[str, list[str]] = {}

    def __getstate__(self):
        # Tune pickles its callbacks into the experiment folder: MLflow clients and the
        # tracking URI's password stay behind (Tracker logs in again with the driver's).
        return {**self.__dict__, "uri": redact(self.uri), "_trackers": {}, "_state": {}, "_lines": {}}

    def _load(self) -> dict:
        if not self._state:
            self._state = _read_state(self.output)
        return self._state

    def _trial_lines(self, trial_id: str) -> list[str]:
        if trial_id not in self._lines:
            self._lines[trial_id] = _read_lines(self.output, trial_id)
        return self._lines[trial_id]

    def _save(self) -> None:
        write_file(join_uri(self.output, STATE_FILE), json.dumps(self._state, indent=1).encode())

    def _tracker(self, trial) -> Tracker:
        state = self._load()
        if trial.trial_id not in self._trackers:
            run_id = state["runs"].get(trial.trial_id)
            tracker = Tracker(
                self.uri,
                self.experiment,
                run_id=run_id,
                run_name=str(trial),
                tags={
                    "mlflow.parentRunId": self.parent_run_id,
                    "avray.job": "tune-trial",
                    "avray.trial_id": trial.trial_id,
                },
            )
            if run_id is None:
                tracker.log_params({f"initial.{k}": v for k, v in _flat(trial.config).items()})
                state["runs"][trial.trial_id] = tracker.run_id
                self._save()
            self._trackers[trial.trial_id] = tracker
        return self._trackers[trial.trial_id]

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tracker = self._tracker(trial)
        step = int(result["training_iteration"])
        scores = "  ".join(f"{k.removeprefix('val/')} {result[k]:.4g}" for k in TRIAL_LINE if k in result)
        console.say(f"[avray] trial {trial.trial_id}  epoch {int(result.get('epoch', step))}  {scores}")
        console.tick("sweep", advance=1)
        tracker.log_metrics(
            {
                k: v
                for k, v in result.items()
                if k.startswith(LOGGED_PREFIXES)
                and isinstance(v, (int, float))
                and not isinstance(v, bool)
                and math.isfinite(v)
            },
            step=step,
        )
        # The λ the trial trained with: by the time callbacks see a result, PBT may already
        # have mutated ``trial.config`` for the trial's next round.
        lambdas = _lambdas(result)
        previous = self._state["lambdas"].get(trial.trial_id)
        if previous is not None and (previous != lambdas or result.get(EXPLOITED_FROM)):
            event = {
                "iteration": step,
                "exploited_from": result.get(EXPLOITED_FROM),
                "before": previous,
                "after": lambdas,
            }
            self._state["events"].setdefault(trial.trial_id, []).append(event)
            tracker.log_metrics({"pbt/exploits": len(self._state["events"][trial.trial_id])}, step=step)
        self._state["lambdas"][trial.trial_id] = lambdas
        self._save()
        row = {k: v for k, v in result.items() if v is None or isinstance(v, (int, float, str))}
        lines = self._trial_lines(trial.trial_id)
        lines.append(json.dumps({**row, "trial_id": trial.trial_id}))
        write_file(_results_uri(self.output, trial.trial_id), "\n".join(lines).encode())

    def _end(self, trial, status: str) -> None:
        tracker = self._tracker(trial)
        # This trial's rows only, held since they arrived: ending every trial costs the rows
        # of the sweep once, not once per trial.
        rows = [json.loads(line) for line in self._trial_lines(trial.trial_id)]
        record = {
            "lambdas": [{"iteration": int(r["training_iteration"]), "lambdas": _lambdas(r)} for r in rows],
            "events": self._state["events"].get(trial.trial_id, []),
        }
        tracker.log_text(json.dumps(record, indent=1), HISTORY_FILE)
        tracker.finish(status)
        tracker.flush()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "FAILED")


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out
