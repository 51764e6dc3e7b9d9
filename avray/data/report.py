"""Counting what a data job skipped, and why, across every Ray worker.

Bad input never stops a job: each skipped file or clip is logged with its reason and
counted here; callers get the totals back at the end (and the CLIs print them). Listing
reports here too: manifest rows it drops and folders it cannot enter, each with its reason,
and notes on the corpus (labels that differ only by case).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import ray

logger = logging.getLogger("avray.data")

# Why a file or clip was skipped. Short, stable names: they are metric keys and test targets.
EMPTY = "empty"  # zero-byte file
NOT_FOUND = "not_found"  # listed but gone, no permission, or no regular file (FIFO, dangling/looping symlink)
UNREADABLE = "unreadable"  # not a media container PyAV can open (corrupt, truncated, not a video)
NO_VIDEO_STREAM = "no_video_stream"  # audio-only or data-only container (cover art is no video)
# declared size/rate/duration nobody can decode (0 fps, 100k x 100k ...), too many streams,
# no decoder for the video codec, a file name that is not UTF-8
UNSUPPORTED = "unsupported"
TOO_SHORT = "too_short"  # shorter than one clip
DECODE_ERROR = "decode_error"  # opened, but decoding the clip window failed
TIMEOUT = "timeout"  # decoding exceeded data.decode_timeout_s
NO_PATH = "no_path"  # a manifest row with an empty path
DUPLICATE = "duplicate"  # a manifest row naming a video that an earlier row names
UNLISTABLE = "unlistable"  # a folder under the corpus that cannot be listed (no permission)
REASONS = (
    EMPTY,
    NOT_FOUND,
    UNREADABLE,
    NO_VIDEO_STREAM,
    UNSUPPORTED,
    TOO_SHORT,
    DECODE_ERROR,
    TIMEOUT,
    NO_PATH,
    DUPLICATE,
    UNLISTABLE,
)


class SkipError(Exception):
    """Raised by probing/decoding for input that must be skipped, with one of REASONS."""

    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class SkipReport:
    """What was skipped (per file, manifest row or folder, with reason), which good videos had
    no audio, and notes on the corpus that are no skip but need the user's eye."""

    skipped: dict[str, tuple[str, str]] = field(default_factory=dict)  # uri -> (reason, detail)
    skipped_clips: int = 0
    silent_videos: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    def add(self, uri: str, reason: str, detail: str, clips: int = 1) -> None:
        self.skipped.setdefault(uri, (reason, detail))
        self.skipped_clips += clips

    def merge(self, other: SkipReport) -> SkipReport:
        for uri, (reason, detail) in other.skipped.items():
            self.skipped.setdefault(uri, (reason, detail))
        self.skipped_clips += other.skipped_clips
        self.silent_videos |= other.silent_videos
        self.notes += [note for note in other.notes if note not in self.notes]
        return self

    def counts(self) -> dict[str, int]:
        return dict(Counter(reason for reason, _ in self.skipped.values()))

    def summary(self) -> str:
        if not self.skipped and not self.silent_videos:
            return "\n".join(["skipped: none", *self.notes])
        counts = ", ".join(f"{reason}={n}" for reason, n in sorted(self.counts().items()))
        lines = [f"skipped {len(self.skipped)} file(s), {self.skipped_clips} clip(s): {counts or 'none'}"]
        lines += [f"  {reason:<16} {uri}  ({detail})" for uri, (reason, detail) in sorted(self.skipped.items())]
        if self.silent_videos:
            lines.append(f"{len(self.silent_videos)} video(s) without audio got silence")
        return "\n".join(lines + self.notes)


@ray.remote(num_cpus=0)
class SkipLog:
    """One per data job: Ray Data tasks on any node report skips here, fire-and-forget."""

    def __init__(self) -> None:
        self.report = SkipReport()

    def add(self, uri: str, reason: str, detail: str, clips: int = 1) -> None:
        logger.warning("skipping %s: %s (%s)", uri, reason, detail)
        self.report.add(uri, reason, detail, clips)

    def silent(self, uri: str) -> None:
        self.report.silent_videos.add(uri)

    def get(self) -> SkipReport:
        return self.report
