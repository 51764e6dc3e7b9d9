"""The stage functions of the data pipeline; ``avray.data.pipeline`` wires them together.

Each stage takes and returns a Ray Data batch (``dict`` of numpy arrays) and never raises
for bad input: it reports the file to the job's :class:`~avray.data.report.SkipLog`
and leaves it out, so one bad video cannot stop a job over ten thousand.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from avray.config import DataConfig
from avray.data.decode import decode_clip, probe
from avray.data.report import SkipError

PROBE_COLUMNS = ("source", "label", "duration", "has_audio", "width", "height", "fps", "reason", "detail")


# INPUT:  {uri: str, label: str|None}                       one row per listed video
# OUTPUT: {source, label, duration, has_audio, width, height, fps, reason, detail}
#         one row per video; reason/detail are "" for usable videos, else why it is skipped
def probe_videos(batch: dict[str, np.ndarray], cfg: DataConfig) -> dict[str, np.ndarray]:
    rows: dict[str, list] = {name: [] for name in PROBE_COLUMNS}
    for uri, label in zip(batch["uri"], batch["label"]):
        try:
            info = probe(str(uri), cfg)
            values = (info.duration, info.has_audio, info.width, info.height, info.fps, "", "")
        except SkipError as err:
            values = (0.0, False, 0, 0, 0.0, err.reason, err.detail)
        for name, value in zip(PROBE_COLUMNS, (str(uri), label, *values)):
            rows[name].append(value)
    return {name: np.asarray(values, dtype=object if name in ("source", "label", "reason", "detail") else None)
            for name, values in rows.items()}


def clip_starts(video_duration: float, cfg: DataConfig) -> np.ndarray:
    """``clips_per_video`` evenly spaced window starts covering the whole video."""
    last = max(0.0, video_duration - cfg.clip_seconds)
    # Keep away from the very end: container durations overshoot the last decodable frame.
    last = max(0.0, last - 1.0 / cfg.fps)
    return np.linspace(0.0, last, cfg.clips_per_video) if cfg.clips_per_video > 1 else np.array([last / 2])


def clip_id(source: str, start: float) -> str:
    return f"{source}@{start:.3f}"


def random_starts(clips: pa.Table, cfg: DataConfig, epoch: int) -> pa.Array:
    """Fresh, reproducible window starts for ``epoch``: seeded by (data.seed, epoch, clip)."""
    starts = []
    for source, slot, video_duration in zip(
        clips.column("source").to_pylist(), clips.column("slot").to_pylist(), clips.column("video_duration").to_pylist()
    ):
        digest = hashlib.blake2b(f"{cfg.seed}/{epoch}/{source}/{slot}".encode(), digest_size=8).digest()
        unit = int.from_bytes(digest, "little") / 2**64
        last = max(0.0, video_duration - cfg.clip_seconds - 1.0 / cfg.fps)
        starts.append(round(unit * last, 3))
    return pa.array(starts, pa.float64())


# INPUT:  {source, start, label, clip_id}                   one row per clip to decode
# OUTPUT: {video: uint8[T,S,S,3], audio: float32[N], source, start, clip_id, label}
#         the clip-row contract; clips that cannot be decoded are reported, not returned
def decode_clips(batch: dict[str, np.ndarray], cfg: DataConfig, skip_log=None) -> dict[str, np.ndarray]:
    videos, audios, keep = [], [], []
    for i, (source, start) in enumerate(zip(batch["source"], batch["start"])):
        try:
            clip = decode_clip(str(source), float(start), cfg)
        except SkipError as err:
            if skip_log is not None:
                skip_log.add.remote(str(source), err.reason, err.detail)
            continue
        if not clip.has_audio and skip_log is not None:
            skip_log.silent.remote(str(source))
        videos.append(clip.video)
        audios.append(clip.audio)
        keep.append(i)
    shape_v = (0, cfg.num_frames, cfg.frame_size, cfg.frame_size, 3)
    return {
        "video": np.stack(videos) if videos else np.zeros(shape_v, np.uint8),
        "audio": np.stack(audios) if audios else np.zeros((0, cfg.num_samples), np.float32),
        "source": np.asarray([batch["source"][i] for i in keep], dtype=object),
        "start": np.asarray([batch["start"][i] for i in keep], dtype=np.float64),
        "clip_id": np.asarray([batch["clip_id"][i] for i in keep], dtype=object),
        "label": np.asarray([batch["label"][i] for i in keep], dtype=object),
    }
