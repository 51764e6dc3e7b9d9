"""Tune's schedulers and search algorithms for a loss-mixture sweep, from ``TuneConfig``.

PBT (default) and PB2 replace ELo's evolutionary search: trials train side by side and, every
``perturbation_interval`` epochs, the worst copy the best's checkpoint and perturb its λ
(PB2 picks the new λ with a Gaussian-process bandit instead of random perturbation). ASHA stops
weak mixtures early; Optuna (TPE) and HyperOpt propose new mixtures from finished ones.
"""

from __future__ import annotations

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from ray.tune.schedulers.pb2 import PB2

from avray.config import Config
from avray.tune.space import bounds, clip_to_bounds, search_space

# Each trial reports once per epoch; PBT, PB2 and ASHA count in those reports.
TIME_ATTR = "training_iteration"


def fitness_metric(cfg: Config) -> str:
    return "val/elo_fitness" if cfg.tune.fitness == "zipf" else "val/knn_accuracy"


def build_scheduler(cfg: Config):
    t = cfg.tune
    if t.scheduler == "pbt":
        return PopulationBasedTraining(
            time_attr=TIME_ATTR,
            perturbation_interval=t.perturbation_interval,
            hyperparam_mutations=search_space(cfg),
            quantile_fraction=t.quantile_fraction,
            custom_explore_fn=clip_to_bounds(cfg),
            synch=t.synchronous,
        )
    if t.scheduler == "pb2":
        return PB2(
            time_attr=TIME_ATTR,
            perturbation_interval=t.perturbation_interval,
            hyperparam_bounds=bounds(cfg),
            quantile_fraction=t.quantile_fraction,
            synch=t.synchronous,
        )
    if t.scheduler == "asha":
        return ASHAScheduler(
            time_attr=TIME_ATTR,
            max_t=cfg.train.epochs,
            grace_period=min(t.grace_period, cfg.train.epochs),
            reduction_factor=t.reduction_factor,
        )
    return FIFOScheduler()


def build_search_alg(cfg: Config):
    """None means Tune's random sampling of the search space."""
    metric, seed = fitness_metric(cfg), cfg.train.seed
    if cfg.tune.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(metric=metric, mode="max", seed=seed)
    if cfg.tune.search_alg == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch(metric=metric, mode="max", random_state_seed=seed)
    return tune.search.BasicVariantGenerator(random_state=seed)
