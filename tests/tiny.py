"""A tiny model and corpus for the end-to-end tests: a few seconds of CPU per epoch."""

from pathlib import Path

from avray.config import load_config
from tests.media import make_good_video

TINY = [
    "model.video_width=8", "model.video_depth=2", "model.audio_width=8", "model.audio_depth=2",
    "model.embed_dim=16", "model.fused_dim=16", "model.n_mels=32", "model.n_fft=256",
    "data.clips_per_video=2", "data.val_fraction=0.25", "data.decode_batch_size=4",
    "data.cpus_per_decode_task=0.5", "train.cpus_per_worker=0.5",
    "train.batch_size=4", "train.warmup_epochs=0", "tune.zipf_clusters=2",
]


def tiny_config(tmp: Path, *extra: str):
    """TINY, logging to MLflow in ``tmp``, plus ``extra`` overrides."""
    return load_config(None, [*TINY, f"tracking.tracking_uri=sqlite:///{tmp}/mlflow.db", *extra])


def make_tiny_corpus(root: Path, videos: int = 8) -> str:
    """``videos`` 2.5 s clips in two class folders (a/, b/)."""
    for i in range(videos):
        make_good_video(root / "ab"[i % 2] / f"v{i}.mp4", seconds=2.5, fps=12, size=48, sample_rate=16000, seed=i)
    return str(root)
