"""What a prepared folder is: clip (or feature) shards beside a marker file that says so.

``workflows/prepare.py`` writes clip shards; ``workflows/extract_features.py`` writes feature
shards, whose marker adds the kind ``features`` and the per-clip feature shapes. A model
reads one or the other, and these functions tell which a location holds.
"""

from __future__ import annotations

import json

import pyarrow.fs as pafs

from avray.config import Config, ConfigError, with_overrides
from avray.storage import filesystem_for

# A prepared-clip folder (workflows/prepare.py) carries this marker next to its shards;
# the leading underscore keeps pyarrow and Ray from taking it for a data file.
PREPARED_MARKER = "_avray_clips.json"
FEATURES_KIND = "features"


def is_prepared(uri: str, endpoint_override: str | None = None) -> bool:
    """True when ``uri`` is a folder of clip shards written by ``workflows/prepare.py``."""
    fs, path = filesystem_for(uri, endpoint_override)
    return fs.get_file_info(f"{path}/{PREPARED_MARKER}").type == pafs.FileType.File


def feature_shards_shapes(uri: str, endpoint_override: str | None = None) -> dict[str, list[int]] | None:
    """The per-clip feature shapes of feature shards at ``uri``; None for anything else."""
    if not is_prepared(uri, endpoint_override):
        return None
    fs, path = filesystem_for(uri, endpoint_override)
    with fs.open_input_stream(f"{path}/{PREPARED_MARKER}") as handle:
        meta = json.loads(handle.read())
    return meta.get("shapes") if meta.get("kind") == FEATURES_KIND else None


def check_inputs(cfg: Config, uri: str) -> None:
    """A trained model reads what it was trained on: clips, or features of the same shapes."""
    shapes = feature_shards_shapes(uri, cfg.data.endpoint_override)
    if cfg.model.inputs == "clips" and shapes is not None:
        raise ConfigError(f"{uri!r} holds frozen-encoder features, but this model reads clips: give it videos "
                          "or prepared clips")
    if cfg.model.inputs == "features" and shapes != cfg.model.feature_shapes():
        raise ConfigError(f"this model reads frozen features shaped {cfg.model.feature_shapes()} and {uri!r} holds "
                          f"{'none' if shapes is None else shapes}: extract them with workflows/extract_features.py "
                          "and the same frozen encoders and frozen.tokens")


def for_inputs(cfg: Config, uri: str) -> Config:
    """``cfg`` fitted to what ``uri`` holds: on feature shards, heads + fusion over features of
    the shards' shapes; on clips, unchanged. A model built for one cannot read the other."""
    shapes = feature_shards_shapes(uri, cfg.data.endpoint_override)
    if shapes is None:
        check_inputs(cfg, uri)
        return cfg
    return with_overrides(cfg, {
        "model.inputs": "features",
        **{f"model.{name}_feature_dim": shape[-1] for name, shape in shapes.items()},
        **{f"model.{name}_feature_tokens": shape[0] if len(shape) == 2 else 0 for name, shape in shapes.items()},
    })
