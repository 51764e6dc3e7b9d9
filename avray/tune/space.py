"""The genome a sweep searches, and how a trial's values become its training config.

ELo (Piergiovanni et al., "Evolving Losses for Unsupervised Video Representation Learning",
CVPR 2020) evolves one weight λ_i ∈ [0, 1] per self-supervised loss. Here the genome is the λ of
every objective enabled in the base config (here in [0.01, 1]), under ``config["lambda"][name]``; with
``tune.search_lr`` / ``tune.search_temperature`` also ``config["lr"]`` (log-uniform over a
decade either side of ``train.lr``) and ``config["temperature"]`` (InfoNCE's).
"""

from __future__ import annotations

import functools
from typing import Any

from ray import tune

from avray.config import Config, ConfigError, with_overrides

LAMBDA = "lambda"
# ELo's λ range is [0, 1]; 0.01 rather than 0 at the bottom, because PB2's bandit likes the
# corners of its box and a mixture with every λ at 0 would train nothing (and is no config).
LAMBDA_RANGE = (0.01, 1.0)
TEMPERATURE_RANGE = (0.03, 1.0)


def bounds(cfg: Config) -> dict[str, Any]:
    """``{"lambda": {name: (0.01, 1)}, ["lr": (lo, hi)], ["temperature": (lo, hi)]}``."""
    enabled = cfg.objectives.enabled()
    if not enabled:
        raise ConfigError("tuning needs at least one objective with a weight > 0")
    out: dict[str, Any] = {LAMBDA: {name: LAMBDA_RANGE for name in enabled}}
    if cfg.tune.search_lr:
        out["lr"] = (cfg.train.lr / 10, cfg.train.lr * 10)
    if cfg.tune.search_temperature:
        if "infonce" not in enabled:
            raise ConfigError("tune.search_temperature searches InfoNCE's temperature: enable objectives.infonce")
        low = max(TEMPERATURE_RANGE[0], cfg.objectives.infonce.min_temperature)
        out["temperature"] = (low, max(low, TEMPERATURE_RANGE[1]))
    return out


def search_space(cfg: Config) -> dict[str, Any]:
    """Tune's param space (also PBT's ``hyperparam_mutations``)."""
    space = bounds(cfg)
    out: dict[str, Any] = {LAMBDA: {name: tune.uniform(lo, hi) for name, (lo, hi) in space[LAMBDA].items()}}
    if "lr" in space:
        out["lr"] = tune.loguniform(*space["lr"])
    if "temperature" in space:
        out["temperature"] = tune.uniform(*space["temperature"])
    return out


def _clip(config: dict, space: dict) -> dict:
    out = dict(config)
    for key, limits in space.items():
        if key not in out:
            continue
        if isinstance(limits, dict):
            out[key] = _clip(out[key], limits)
        else:
            out[key] = min(max(float(out[key]), limits[0]), limits[1])
    return out


def clip_to_bounds(cfg: Config):
    """PBT's explore multiplies values by 0.8 or 1.2 without bounds; this keeps λ in [0.01, 1]
    (and lr, temperature in their ranges). A picklable callable for ``custom_explore_fn``."""
    return functools.partial(_clip, space=bounds(cfg))


def trial_config(base: Config, values: dict[str, Any]) -> tuple[Config, dict[str, float]]:
    """(the config a trial trains with, its λ by objective name).

    The λ are applied to the loss mixture rather than written into ``objectives``: a λ of 0
    must not remove an objective (and its parameters) that a checkpoint PBT copies still holds.
    """
    changes = {}
    if "lr" in values:
        changes["train.lr"] = float(values["lr"])
    if "temperature" in values:
        changes["objectives.infonce.temperature"] = float(values["temperature"])
    cfg = with_overrides(base, changes) if changes else base
    return cfg, {name: float(v) for name, v in values[LAMBDA].items()}
