"""A pretrained model back from its checkpoint (``avray.checkpoint``'s format)."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from avray.checkpoint import find_checkpoint, load_config_of, load_state
from avray.models.model import build_model


def find_model_checkpoint(path: str | Path) -> Path:
    """:func:`avray.checkpoint.find_checkpoint`, or the checkpoint inside a registered MLflow
    Model, ``models:/NAME/VERSION`` (avray.models.mlflow_model), from the store that
    ``MLFLOW_TRACKING_URI`` names."""
    if str(path).startswith("models:/"):
        from avray.models.mlflow_model import fetch_registered

        return fetch_registered(str(path))
    return find_checkpoint(path)


def load_model(path: str | Path, map_location: str | torch.device = "cpu"):
    """The pretrained ``AVModel`` (eval mode) and its config from a checkpoint or run folder."""
    folder = find_model_checkpoint(path)
    cfg = load_config_of(folder)
    model = build_model(cfg.model, cfg.data)
    module_state = load_state(folder, map_location)["module"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in module_state.items() if k.startswith("model.")})
    return model.eval(), cfg


def check_loadable(folder: Path) -> None:
    """Load ``folder``'s weights into its model once, on the driver: a truncated, empty or
    mismatched ``state.pt`` is then one clear error before any work, not a traceback from an
    embedding actor."""
    from avray.data.sources import SourceError

    try:
        load_model(folder)
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, pickle.UnpicklingError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else "no detail"
        raise SourceError(
            f"checkpoint {folder} cannot be loaded ({type(err).__name__}: {reason}): point --checkpoint at "
            "a complete checkpoint of avray's (its state.pt and the config.yaml it was trained with)"
        ) from None
