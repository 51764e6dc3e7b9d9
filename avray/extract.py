"""Frozen-encoder features with Ray Data: extract once, then train only the fusion.

    clips (videos | prepared shards) ─► map_batches(ExtractFeatures, actor pool; 1 GPU per actor
                                        when the cluster has GPUs)
                                     ─► {clip_id, source, start, label, video, audio} ─► parquet shards

Feature shards are prepared shards whose ``video``/``audio`` columns hold float32 features
([D] pooled, or [N, D] tokens with ``frozen.tokens``) instead of frames and waveforms, with
a marker saying so (kind ``features`` and the widths). ``pretrain.py`` and ``evaluate.py``
read them like clips: the model becomes heads + fusion (:class:`avray.models.FeatureModel`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from avray import console
from avray.cluster import inference_pool
from avray.config import Config, config_from_dict
from avray.data.labels import label_column
from avray.data.pipeline import load_clips
from avray.data.report import SkipReport
from avray.data.shards import FEATURES_KIND, Clips, DataSource, count_prepared, write_prepared
from avray.models.frozen import build_frozen_encoders


class ExtractFeatures:
    """Ray Data callable class: holds both frozen encoders, turns clip rows into feature rows."""

    def __init__(self, config: dict):
        cfg = config_from_dict(config)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.video, self.audio = (m.to(self.device) for m in build_frozen_encoders(cfg))
        self.tokens = cfg.frozen.tokens

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        video = torch.as_tensor(batch["video"]).to(self.device, non_blocking=True)
        audio = torch.as_tensor(batch["audio"]).to(self.device, non_blocking=True)
        out = {key: batch[key] for key in ("clip_id", "source", "start")}
        out["label"] = label_column(batch["label"])
        for name, encoded in (("video", self.video(video)), ("audio", self.audio(audio))):
            chosen = encoded.tokens if self.tokens else encoded.pooled
            out[name] = chosen.float().cpu().numpy()
        return out


def feature_shapes(cfg: Config) -> dict[str, list[int]]:
    """Per-clip shape of each modality's features, from one silent black clip through the
    encoders on this machine: it also proves the weights load before any cluster work."""
    video, audio = build_frozen_encoders(cfg)
    frames = torch.zeros(1, cfg.data.num_frames, cfg.data.frame_size, cfg.data.frame_size, 3, dtype=torch.uint8)
    waveform = torch.zeros(1, cfg.data.num_samples)
    shapes = {}
    for name, encoded in (("video", video(frames)), ("audio", audio(waveform))):
        shapes[name] = list((encoded.tokens if cfg.frozen.tokens else encoded.pooled).shape[1:])
    return shapes


def extract_features(
    data: str | DataSource,
    output: str,
    cfg: Config,
    progress: Callable[[str], None] = console.say,
    actors: int | None = None,
) -> SkipReport:
    """Write the frozen encoders' features of every clip of ``data`` as feature shards in ``output``."""
    start = time.perf_counter()
    shapes = feature_shapes(cfg)
    progress(f"frozen encoders load; features per clip: video {shapes['video']}, audio {shapes['audio']}")
    clips = load_clips(data, cfg.data)
    features = clips.dataset.map_batches(
        ExtractFeatures,
        fn_constructor_kwargs={"config": cfg.to_dict()},
        batch_size=cfg.frozen.batch_size,
        batch_format="numpy",
        zero_copy_batch=False,
        **inference_pool(actors),
    )
    report = write_prepared(
        Clips(features, clips.index, clips.skip_log), output, cfg.data, extra={"kind": FEATURES_KIND, "shapes": shapes}
    )
    written, seconds = count_prepared(output, cfg.data), time.perf_counter() - start
    progress(f"wrote features of {written} clips to {output} in {seconds:.1f} s ({written / seconds:.1f} clips/s)")
    progress(report.summary())
    return report
