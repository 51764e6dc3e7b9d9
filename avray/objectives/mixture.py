"""The loss mixture L = Σ_i λ_i L_i over the enabled objectives, with a guard against NaN/Inf.

Every term is computed in float32 or better with autocast off (bf16 logits, covariances and
eigendecompositions are not precise enough), logged unweighted, and checked for finiteness
before it can reach the optimizer. The λ live outside ``state_dict``: a tuner (PBT) changes
them with :meth:`LossMixture.set_weights` and they come from the trial's config, never from a
checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from avray.config import ConfigError, ObjectivesConfig, register_objective_section
from avray.models.outputs import ModelOutputs
from avray.objectives.base import EpochContext, Objective
from avray.objectives.cluster_contrastive import ClusterContrastive
from avray.objectives.dcca import DCCA
from avray.objectives.fused import FusedContrastive
from avray.objectives.infonce import InfoNCE
from avray.objectives.sdl import SDL
from avray.objectives.simclr import SimCLR
from avray.objectives.xdc import XDC

# Config section name -> objective class (each has from_config(section, dims, gather_distributed)).
# The built-in ones, whose sections are fields of ObjectivesConfig; others come through
# register_objective.
OBJECTIVES: dict[str, type[Objective]] = {
    "infonce": InfoNCE,
    "fused": FusedContrastive,
    "xdc": XDC,
    "cluster_contrastive": ClusterContrastive,
    "simclr": SimCLR,
    "dcca": DCCA,
    "sdl": SDL,
}


def register_objective(name: str, section: type):
    """Class decorator: the objective ``objectives.<name>`` names, configured by ``section``
    (a frozen dataclass whose first field is ``weight``), for objectives defined outside
    avray (a study's own loss, a test's). Register before the config is loaded, in every
    process that loads it (a module that Ray workers import too)."""

    def decorate(cls: type[Objective]) -> type[Objective]:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} is registered already")
        register_objective_section(name, section)
        OBJECTIVES[name] = cls
        return cls

    return decorate


def check_labels_for(cfg: ObjectivesConfig, labelled_clips: int, corpus: str) -> None:
    """A supervised objective (``needs.labels``) on a corpus without labels is a config error,
    raised before training starts; pretraining is label-free by default."""
    supervised = sorted(name for name in cfg.enabled() if OBJECTIVES[name].needs.labels)
    if supervised and labelled_clips == 0:
        raise ConfigError(
            f"objectives.{supervised[0]} is supervised and {corpus!r} has no labels: give it class "
            f"folders or a manifest with a 'label' column, or set objectives.{supervised[0]}.weight=0"
        )


class NonFiniteLossError(FloatingPointError):
    """An objective returned NaN or ±Inf; ``term`` names it and ``value`` is what it returned."""

    def __init__(self, term: str, value: float) -> None:
        super().__init__(f"objective {term!r} is not finite ({value}); objectives.nonfinite='skip' drops such steps")
        self.term, self.value = term, value


@dataclass(frozen=True)
class MixtureResult:
    """``total``: Σ λ_i L_i, or None when the step is skipped (``skipped``) or no term applies
    (e.g. XDC alone before its first clustering). ``terms``: each unweighted L_i, detached, for
    logging."""

    total: Tensor | None
    terms: dict[str, Tensor]
    skipped: bool = False


class LossMixture(nn.Module):
    """``forward(outputs, targets=None) -> MixtureResult``.

    ``outputs``: the model's dict (``video_features``, ``audio_features``, ``video``, ``audio``,
    ``fused``). ``targets``: per objective name, that objective's targets
    (:meth:`batch_targets`). Objectives run in a fixed order, the same on every rank, which
    their collectives require; the lifecycle hooks (:mod:`avray.objectives.base`) are
    forwarded to each."""

    def __init__(
        self, objectives: Mapping[str, Objective], weights: Mapping[str, float], nonfinite: str = "raise"
    ) -> None:
        super().__init__()
        if nonfinite not in ("raise", "skip"):
            raise ValueError(f"nonfinite must be 'raise' or 'skip', got {nonfinite!r}")
        self.objectives = nn.ModuleDict(objectives)
        self.nonfinite = nonfinite
        self._weights = {name: 0.0 for name in self.objectives}
        self.set_weights(weights)
        self.skipped_steps = 0

    @classmethod
    def from_config(cls, cfg: ObjectivesConfig, dims: dict[str, int]) -> LossMixture:
        """The objectives of ``cfg`` with weight > 0; ``dims`` are the model's output widths."""
        sections = cfg.enabled()
        objectives = {
            name: OBJECTIVES[name].from_config(section, dims, cfg.gather_distributed)
            for name, section in sections.items()
        }
        return cls(objectives, {name: section.weight for name, section in sections.items()}, cfg.nonfinite)

    @property
    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    def on_epoch_start(self, context: EpochContext) -> list[nn.Parameter]:
        """Every objective's epoch-start hook, in order (the same on every rank: some are
        collectives); the parameters they re-initialised."""
        return [param for objective in self.objectives.values() for param in objective.on_epoch_start(context)]

    def batch_targets(self, batch: Mapping[str, object], device: torch.device) -> dict[str, object]:
        """Each objective's targets for ``batch`` (the objectives that have any)."""
        targets = {name: objective.batch_targets(batch, device) for name, objective in self.objectives.items()}
        return {name: target for name, target in targets.items() if target is not None}

    def on_step_end(self, step: int) -> None:
        for objective in self.objectives.values():
            objective.on_step_end(step)

    def no_weight_decay(self) -> list[nn.Parameter]:
        return [param for objective in self.objectives.values() for param in objective.no_weight_decay()]

    def config_buffers(self) -> list[Tensor]:
        return [buffer for objective in self.objectives.values() for buffer in objective.config_buffers()]

    @property
    def views(self) -> int:
        """Augmented views per clip the enabled objectives need."""
        return max([objective.needs.views for objective in self.objectives.values()], default=1)

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Change some λ without rebuilding. Raises for negative or non-finite λ, unknown names,
        and λ > 0 for an objective this mixture does not hold (it was built with weight 0)."""
        for name, weight in weights.items():
            weight = float(weight)
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"weight of {name!r} must be finite and >= 0, got {weight}")
            if name not in self._weights:
                if name not in OBJECTIVES:
                    raise KeyError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
                if weight > 0:
                    raise ValueError(
                        f"objective {name!r} was built with weight 0, so this mixture does not "
                        f"hold it; rebuild the mixture with objectives.{name}.weight > 0"
                    )
                continue
            self._weights[name] = weight

    def forward(self, outputs: Mapping[str, Tensor], targets: Mapping[str, object] | None = None) -> MixtureResult:
        device_type = next(iter(outputs.values())).device.type
        with torch.autocast(device_type, enabled=False):
            outputs = _at_least_float32(outputs)
            raw = {}
            for name, objective in self.objectives.items():
                if self._weights[name] == 0:
                    continue
                term = objective(outputs, None if targets is None else targets.get(name))
                if term is not None:
                    raw[name] = term
        terms = {name: term.detach() for name, term in raw.items()}
        if not raw:
            return MixtureResult(None, terms)
        # One host sync for all terms; the culprit is looked up only when something is wrong.
        if not bool(torch.isfinite(torch.stack([t.double() for t in terms.values()])).all()):
            name, value = next((n, t) for n, t in terms.items() if not torch.isfinite(t))
            if self.nonfinite == "raise":
                raise NonFiniteLossError(name, float(value))
            self.skipped_steps += 1
            return MixtureResult(None, terms, skipped=True)
        total = sum(self._weights[name] * term for name, term in raw.items())
        return MixtureResult(total, terms)


def _at_least_float32(outputs: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    def widen(v: Tensor) -> Tensor:
        return v.float() if v.is_floating_point() and v.dtype not in (torch.float32, torch.float64) else v

    return outputs.map(widen) if isinstance(outputs, ModelOutputs) else {k: widen(v) for k, v in outputs.items()}
