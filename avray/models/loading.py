"""A pretrained model back from its checkpoint (``avray.checkpoint``'s format)."""

from __future__ import annotations

from pathlib import Path

import torch

from avray.checkpoint import find_checkpoint, load_config_of, load_state
from avray.models.model import build_model


def load_model(path: str | Path, map_location: str | torch.device = "cpu"):
    """The pretrained ``AVModel`` (eval mode) and its config from a checkpoint or run folder."""
    folder = find_checkpoint(path)
    cfg = load_config_of(folder)
    model = build_model(cfg.model, cfg.data)
    module_state = load_state(folder, map_location)["module"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in module_state.items() if k.startswith("model.")})
    return model.eval(), cfg
