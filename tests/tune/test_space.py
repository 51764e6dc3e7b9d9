"""The genome, its bounds under PBT's explore, and how a trial's values become its config."""

import pytest
from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining
from ray.tune.schedulers.pb2 import PB2
from ray.tune.search.hyperopt import HyperOptSearch
from ray.tune.search.optuna import OptunaSearch

from avray.config import ConfigError, load_config
from avray.tune.schedulers import build_scheduler, build_search_alg, fitness_metric
from avray.tune.space import LAMBDA, bounds, clip_to_bounds, search_space, trial_config

# A second term beside the default recipe's infonce, so that the genome holds two λ.
FUSED = "objectives.fused.weight=0.5"


def test_the_genome_holds_a_lambda_per_enabled_objective_only():
    cfg = load_config(None, [FUSED, "objectives.dcca.weight=0.3"])
    assert set(search_space(cfg)[LAMBDA]) == {"infonce", "fused", "dcca"}
    assert all(b == (0.01, 1.0) for b in bounds(cfg)[LAMBDA].values())
    assert "lr" not in search_space(cfg) and "temperature" not in search_space(cfg)
    with_lr = load_config(None, [FUSED, "tune.search_lr=true", "tune.search_temperature=true", "train.lr=0.001"])
    assert bounds(with_lr)["lr"] == pytest.approx((1e-4, 1e-2))
    assert set(search_space(with_lr)) == {LAMBDA, "lr", "temperature"}


def test_explore_keeps_values_inside_their_bounds():
    cfg = load_config(None, [FUSED, "tune.search_lr=true", "train.lr=0.001"])
    explored = {LAMBDA: {"infonce": 1.2, "fused": -0.1}, "lr": 0.5}
    clipped = clip_to_bounds(cfg)(explored)
    assert clipped == {LAMBDA: {"infonce": 1.0, "fused": 0.01}, "lr": pytest.approx(0.01)}


def test_trial_config_applies_lr_and_temperature_and_returns_lambdas_for_the_mixture():
    base = load_config(None, [FUSED, "objectives.dcca.weight=0.3"])
    cfg, weights = trial_config(
        base, {LAMBDA: {"infonce": 0.0, "fused": 0.4, "dcca": 0.9}, "lr": 0.01, "temperature": 0.2}
    )
    assert weights == {"infonce": 0.0, "fused": 0.4, "dcca": 0.9}
    assert cfg.train.lr == 0.01 and cfg.objectives.infonce.temperature == 0.2
    # A λ of 0 must not drop the objective from the model a PBT checkpoint may be copied into.
    assert set(cfg.objectives.enabled()) == {"infonce", "fused", "dcca"}


def test_scheduler_and_search_algorithm_follow_the_config():
    assert isinstance(build_scheduler(load_config(None, [])), PopulationBasedTraining)
    assert isinstance(build_scheduler(load_config(None, ["tune.scheduler=pb2"])), PB2)
    assert isinstance(build_scheduler(load_config(None, ["tune.scheduler=asha"])), ASHAScheduler)
    assert isinstance(
        build_search_alg(load_config(None, ["tune.scheduler=asha", "tune.search_alg=optuna"])), OptunaSearch
    )
    assert isinstance(
        build_search_alg(load_config(None, ["tune.scheduler=fifo", "tune.search_alg=hyperopt"])), HyperOptSearch
    )
    assert fitness_metric(load_config(None, [])) == "val/elo_fitness"
    assert fitness_metric(load_config(None, ["tune.fitness=knn"])) == "val/knn_accuracy"


def test_bad_sweep_configs_fail_before_any_work():
    with pytest.raises(ConfigError, match="tune.search_alg=random"):
        load_config(None, ["tune.scheduler=pbt", "tune.search_alg=optuna"])
    with pytest.raises(ConfigError, match="quantile_fraction"):
        load_config(None, ["tune.quantile_fraction=0.7"])
    with pytest.raises(ConfigError, match="enable objectives.infonce"):
        bounds(load_config(None, [FUSED, "tune.search_temperature=true", "objectives.infonce.weight=0"]))
