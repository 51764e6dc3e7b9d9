"""How many trials PBT exploits each round, for the populations avray's validation allows."""

import pytest
from ray.tune.schedulers.pbt import _PBTTrialState

from avray.config import ConfigError, load_config
from avray.tune.schedulers import build_scheduler


class _RunningTrial:
    experiment_tag = "trial"

    def is_finished(self) -> bool:
        return False


@pytest.mark.parametrize(("trials", "fraction", "exploited"), [(2, 0.25, 1), (2, 0.5, 1), (4, 0.25, 1), (5, 0.25, 2)])
def test_pbt_exploits_ceil_of_the_fraction_of_its_trials(trials, fraction, exploited):
    # Ray rounds up: two trials at the default 0.25 do exploit (a 2-trial sweep at 0.25 logged
    # one exploit per trial in 3 epochs), so only a lone trial never does.
    scheduler = build_scheduler(load_config(None, [f"tune.num_samples={trials}", f"tune.quantile_fraction={fraction}"]))
    for score in range(trials):
        state = _PBTTrialState(_RunningTrial())
        state.last_score = float(score)
        scheduler._trial_state[_RunningTrial()] = state
    bottom, top = scheduler._quantiles()
    assert (len(bottom), len(top)) == (exploited, exploited)


@pytest.mark.parametrize("scheduler", ["pbt", "pb2"])
def test_a_population_of_one_is_refused_as_never_exploiting(scheduler):
    with pytest.raises(ConfigError, match=rf"^tune.scheduler={scheduler} with tune.num_samples=1 never exploits"):
        load_config(None, [f"tune.scheduler={scheduler}", "tune.num_samples=1"])
    load_config(None, ["tune.scheduler=fifo", "tune.num_samples=1"])
