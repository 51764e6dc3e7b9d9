"""What a prepared folder is: clip (or feature) shards beside a marker file that says so.

``workflows/prepare.py`` writes clip shards; ``workflows/extract_features.py`` writes feature
shards, whose marker adds the kind ``features`` and the per-clip feature shapes. A model
reads one or the other, and these functions tell which a location holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import pyarrow.fs as pafs

from avray.config import Config, ConfigError, with_overrides
from avray.storage import filesystem_for

# A prepared-clip folder (workflows/prepare.py) carries this marker next to its shards;
# the leading underscore keeps pyarrow and Ray from taking it for a data file.
PREPARED_MARKER = "_avray_clips.json"
FEATURES_KIND = "features"


@dataclass(frozen=True)
class DataSource:
    """A ``--data`` argument resolved once, at the workflow's entry, and handed down.

    ``kind``: ``videos`` (a folder, manifest or prefix to list), ``clips`` (prepared clip
    shards) or ``features`` (frozen-encoder feature shards); ``filesystem`` and ``path`` read
    it; ``marker``: a prepared folder's marker (None for videos).
    """

    uri: str
    kind: Literal["videos", "clips", "features"]
    filesystem: pafs.FileSystem
    path: str
    marker: dict | None = None

    @property
    def prepared(self) -> bool:
        return self.marker is not None

    @property
    def feature_shapes(self) -> dict[str, list[int]] | None:
        """Per-clip feature shapes of feature shards; None for anything else."""
        return self.marker.get("shapes") if self.kind == "features" else None


def resolve_source(source: str | DataSource, endpoint_override: str | None = None) -> DataSource:
    """What ``source`` holds, read once (its marker, if any); a DataSource is returned as it is."""
    if isinstance(source, DataSource):
        return source
    fs, path = filesystem_for(source, endpoint_override)
    marker_path = f"{path}/{PREPARED_MARKER}"
    if fs.get_file_info(marker_path).type != pafs.FileType.File:
        return DataSource(source, "videos", fs, path)
    with fs.open_input_stream(marker_path) as handle:
        marker = json.loads(handle.read())
    return DataSource(source, "features" if marker.get("kind") == FEATURES_KIND else "clips", fs, path, marker)


def check_inputs(cfg: Config, source: DataSource) -> None:
    """A trained model reads what it was trained on: clips, or features of the same shapes."""
    shapes = source.feature_shapes
    if cfg.model.inputs == "clips" and shapes is not None:
        raise ConfigError(f"{source.uri!r} holds frozen-encoder features, but this model reads clips: give it "
                          "videos or prepared clips")
    if cfg.model.inputs == "features" and shapes != cfg.model.feature_shapes():
        raise ConfigError(f"this model reads frozen features shaped {cfg.model.feature_shapes()} and {source.uri!r} "
                          f"holds {'none' if shapes is None else shapes}: extract them with "
                          "workflows/extract_features.py and the same frozen encoders and frozen.tokens")


def for_inputs(cfg: Config, source: DataSource) -> Config:
    """``cfg`` fitted to what ``source`` holds: on feature shards, heads + fusion over features
    of the shards' shapes; on clips, unchanged. A model built for one cannot read the other."""
    shapes = source.feature_shapes
    if shapes is None:
        check_inputs(cfg, source)
        return cfg
    return with_overrides(cfg, {
        "model.inputs": "features",
        **{f"model.{name}_feature_dim": shape[-1] for name, shape in shapes.items()},
        **{f"model.{name}_feature_tokens": shape[0] if len(shape) == 2 else 0 for name, shape in shapes.items()},
    })
