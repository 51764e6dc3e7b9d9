"""Checkpoints: one folder per epoch holding the full training state and the config.

Everything is saved as tensors, numbers, strings and containers, so loading uses
``torch.load(weights_only=True)``: a checkpoint cannot execute code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from avray.config import Config, config_from_dict

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"


def save_state(folder: Path, cfg: Config, state: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / STATE_FILE)
    (folder / CONFIG_FILE).write_text(cfg.to_yaml())


def load_state(folder: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(folder / STATE_FILE, map_location=map_location, weights_only=True)


def load_config_of(folder: Path) -> Config:
    return config_from_dict(yaml.safe_load((folder / CONFIG_FILE).read_text()))


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, or the newest one under a run's output folder."""
    path = Path(path)
    if (path / STATE_FILE).exists():
        return path
    candidates = sorted(path.rglob(STATE_FILE), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"no avray checkpoint ({STATE_FILE}) under {path}")
    return candidates[-1].parent


def load_model(path: str | Path, map_location: str | torch.device = "cpu"):
    """The pretrained ``AVModel`` (eval mode) and its config from a checkpoint or run folder."""
    from avray.models import build_model

    folder = find_checkpoint(path)
    cfg = load_config_of(folder)
    model = build_model(cfg.model, cfg.data)
    module_state = load_state(folder, map_location)["module"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in module_state.items() if k.startswith("model.")})
    return model.eval(), cfg
