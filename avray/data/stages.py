"""The stage functions of the data pipeline; ``avray.data.pipeline`` wires them together.

Each stage takes and returns a Ray Data batch (``dict`` of numpy arrays) and never raises
for bad input: it reports the file to the job's :class:`~avray.data.report.SkipLog`
and leaves it out, so one bad video cannot stop a job over ten thousand.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import ray

from avray import console
from avray.config import DataConfig
from avray.data.decode import decode_clips_of_video, probe
from avray.data.labels import label_column, label_or_none
from avray.data.report import DECODE_ERROR, UNREADABLE, SkipError, logger

PROBE_COLUMNS = ("source", "label", "duration", "has_audio", "width", "height", "fps", "reason", "detail")


# INPUT:  {uri: str, label: str|None}                       one row per listed video
# OUTPUT: {source, label, duration, has_audio, width, height, fps, reason, detail}
#         one row per video; reason/detail are "" for usable videos, else why it is skipped
def probe_videos(batch: dict[str, np.ndarray], cfg: DataConfig) -> dict[str, np.ndarray]:
    rows: dict[str, list] = {name: [] for name in PROBE_COLUMNS}
    for uri, label in zip(batch["uri"], batch["label"]):
        label = label_or_none(label)
        try:
            info = probe(str(uri), cfg)
            values = (info.duration, info.has_audio, info.width, info.height, info.fps, "", "")
        except Exception as err:  # noqa: BLE001 - see skip_reason()
            values = (0.0, False, 0, 0, 0.0, *skip_reason(err, UNREADABLE))
        for name, value in zip(PROBE_COLUMNS, (str(uri), label, *values)):
            rows[name].append(value)
    columns = {
        name: np.asarray(values, dtype=object if name in ("source", "reason", "detail") else None)
        for name, values in rows.items()
        if name != "label"
    }
    return {**columns, "label": label_column(rows["label"])}


def skip_reason(err: Exception, unforeseen: str) -> tuple[str, str]:
    """(reason, detail) for a file that raised ``err``: its SkipError's, else ``unforeseen``.

    Hostile files reach corners of PyAV that raise more than ``FFmpegError`` (a stream
    without a codec gave AttributeError, a failed seek PermissionError). Raised from a
    Ray task, any of them would fail the whole job after retries; skipping the one file,
    with the exception's type and message (and the traceback in the log), keeps the
    promise that a bad file never does.
    """
    if isinstance(err, SkipError):
        return err.reason, err.detail
    logger.warning("unforeseen error on a file that is skipped", exc_info=err)
    return unforeseen, f"unexpected {type(err).__name__}: {err}"


def clip_starts(video_duration: float, cfg: DataConfig) -> np.ndarray:
    """Up to ``clips_per_video`` evenly spaced window starts covering the whole video, in ms.

    A video too short for that many distinct windows gets fewer: a window repeated would be
    the same clip twice, sharing its ``clip_id`` and counted as a negative of itself.
    """
    last = max(0.0, video_duration - cfg.clip_seconds)
    # Keep away from the very end: container durations overshoot the last decodable frame.
    last = max(0.0, last - 1.0 / cfg.fps)
    starts = np.linspace(0.0, last, cfg.clips_per_video) if cfg.clips_per_video > 1 else np.array([last / 2])
    return np.unique(np.round(starts, 3))


def clip_id(source: str, start: float) -> str:
    return f"{source}@{start:.3f}"


def video_unit(*key) -> float:
    """A number in [0, 1) fixed by ``key``: reproducible randomness without shared RNG state."""
    digest = hashlib.blake2b("/".join(map(str, key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def random_start(source: str, slot: int, video_duration: float, cfg: DataConfig, epoch: int) -> float:
    """A fresh, reproducible window start for ``epoch``: seeded by (data.seed, epoch, video, slot)."""
    unit = video_unit(cfg.seed, epoch, source, slot)
    last = max(0.0, video_duration - cfg.clip_seconds - 1.0 / cfg.fps)
    return round(unit * last, 3)


# INPUT:  {source, slot, start, video_duration, label, clip_id}   one row per clip to decode
# OUTPUT: {video: uint8[T,S,S,3], audio: float32[N], source, start, clip_id, label}
#         the clip-row contract (label: an Arrow string column, null where missing); clips
#         that cannot be decoded are reported, not returned.
#         With an epoch clock and random sampling, starts are re-drawn for the clock's epoch.
def decode_clips(
    batch: dict[str, np.ndarray], cfg: DataConfig, skip_log=None, epoch_clock=None
) -> dict[str, np.ndarray]:
    starts = [float(t) for t in batch["start"]]
    ids = list(batch["clip_id"])
    if epoch_clock is not None and cfg.sampling == "random":
        epoch = ray.get(epoch_clock.get.remote())
        starts = [
            random_start(str(s), int(slot), float(d), cfg, epoch)
            for s, slot, d in zip(batch["source"], batch["slot"], batch["video_duration"])
        ]
        ids = [clip_id(str(s), t) for s, t in zip(batch["source"], starts)]
    by_video: dict[str, list[int]] = {}
    for i, source in enumerate(batch["source"]):
        by_video.setdefault(str(source), []).append(i)
    decoded = {}
    for source, rows in by_video.items():
        # One pass per video: overlapping windows share their frames (decode_clips_of_video).
        try:
            clips = decode_clips_of_video(source, [starts[i] for i in rows], cfg)
        except Exception as err:  # noqa: BLE001 - see skip_reason()
            if skip_log is not None:
                skip_log.add.remote(source, *skip_reason(err, DECODE_ERROR), clips=len(rows))
            continue
        for i, clip in zip(rows, clips):
            if isinstance(clip, SkipError):
                if skip_log is not None:
                    skip_log.add.remote(source, clip.reason, clip.detail)
            else:
                decoded[i] = clip
        if skip_log is not None and any(i in decoded and not decoded[i].has_audio for i in rows):
            skip_log.silent.remote(source)
    keep = sorted(decoded)
    videos = [decoded[i].video for i in keep]
    audios = [decoded[i].audio for i in keep]
    shape_v = (0, cfg.num_frames, cfg.frame_size, cfg.frame_size, 3)
    return {
        "video": np.stack(videos) if videos else np.zeros(shape_v, np.uint8),
        "audio": np.stack(audios) if audios else np.zeros((0, cfg.num_samples), np.float32),
        "source": np.asarray([batch["source"][i] for i in keep], dtype=object),
        "start": np.asarray([starts[i] for i in keep], dtype=np.float64),
        "clip_id": np.asarray([ids[i] for i in keep], dtype=object),
        "label": label_column(batch["label"][i] for i in keep),
    }


def video_batches(sources: list[str], size: int) -> list[tuple[int, int]]:
    """(offset, length) of consecutive rows holding about ``size`` clips each, never parting a
    video's adjacent clips, which one decode pass serves together."""
    batches, start = [], 0
    for end in range(1, len(sources) + 1):
        if end == len(sources) or (end - start >= size and sources[end] != sources[end - 1]):
            batches.append((start, end - start))
            start = end
    return batches


# INPUT:  the rows decode_clips takes, for many videos (a long decode task)
# OUTPUT: decode_clips' clip rows, yielded every data.decode_batch_size clips as they are
#         decoded, so that memory stays flat and the consumer gets them without waiting
def decode_clip_stream(
    batch: dict[str, np.ndarray], cfg: DataConfig, skip_log=None, epoch_clock=None
) -> Iterator[dict[str, np.ndarray]]:
    for start, length in video_batches([str(s) for s in batch["source"]], cfg.decode_batch_size):
        yield decode_clips({k: v[start : start + length] for k, v in batch.items()}, cfg, skip_log, epoch_clock)
        console.tick("decode", advance=length)
