"""PyAV: probing containers and decoding one clip window into fixed-shape arrays.

Decoding is the expensive part of the whole data plane, so it does only what the clip
needs: seek to the keyframe before the window, decode up to its end, convert only the
frames that are kept, scale in libswscale (PyAV's ``reformat``) and resample audio with
``av.AudioResampler``. Each call decodes on one thread: parallelism comes from Ray,
and one thread per process keeps a 2-core machine from oversubscribing.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import dataclass
from typing import Iterator

import av
import numpy as np
import pyarrow.fs as pafs

from avray.config import DataConfig
from avray.data.report import (
    DECODE_ERROR,
    EMPTY,
    NO_VIDEO_STREAM,
    NOT_FOUND,
    TIMEOUT,
    TOO_SHORT,
    UNREADABLE,
    UNSUPPORTED,
    SkipError,
)
from avray.data.sources import filesystem_for

# Beyond these, a header is lying or the file is hostile; decoding would exhaust memory.
MAX_PIXELS = 8192 * 8192
MAX_DURATION_S = 7 * 24 * 3600.0
MAX_STREAMS = 64
# A clip missing more than this fraction of its frames is a decode failure, not a clip.
MAX_MISSING_FRAME_FRACTION = 0.25


@dataclass(frozen=True)
class MediaInfo:
    """Container metadata, read without decoding frames."""

    duration: float
    has_audio: bool
    width: int
    height: int
    fps: float


@functools.lru_cache(maxsize=8)
def _cached_filesystem(scheme_netloc: str, endpoint_override: str | None) -> pafs.FileSystem:
    return filesystem_for(scheme_netloc, endpoint_override)[0]


@contextlib.contextmanager
def open_media(uri: str, endpoint_override: str | None = None, timeout_s: float = 60.0) -> Iterator[av.container.InputContainer]:
    """Open a local or s3:// media file with PyAV; raises SkipError for unusable input."""
    if uri.startswith("s3://"):
        fs = _cached_filesystem("s3://" + uri[5:].split("/", 1)[0], endpoint_override)
        path = uri[5:]
    else:
        fs, path = pafs.LocalFileSystem(), uri
    try:
        info = fs.get_file_info(path)
    except OSError as err:
        raise SkipError(NOT_FOUND, str(err)) from None
    if info.type != pafs.FileType.File:
        raise SkipError(NOT_FOUND, "no such file")
    if info.size == 0:
        raise SkipError(EMPTY, "zero bytes")
    try:
        handle = path if isinstance(fs, pafs.LocalFileSystem) else fs.open_input_file(path)
    except OSError as err:
        raise SkipError(NOT_FOUND, str(err)) from None
    try:
        try:
            container = av.open(handle, mode="r", timeout=timeout_s)
        except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as err:
            raise SkipError(UNREADABLE, f"PyAV cannot open it: {err}") from None
        try:
            yield container
        finally:
            container.close()
    finally:
        if not isinstance(handle, str):
            handle.close()


def probe(uri: str, cfg: DataConfig) -> MediaInfo:
    """Duration, streams and size from the container header (no frame is decoded)."""
    with open_media(uri, cfg.endpoint_override, cfg.decode_timeout_s) as container:
        video = _video_stream(container)
        width, height = video.codec_context.width, video.codec_context.height
        if width <= 0 or height <= 0 or width * height > MAX_PIXELS:
            raise SkipError(UNSUPPORTED, f"frame size {width}x{height}")
        duration = _duration(container, video)
        if not math.isfinite(duration) or duration <= 0 or duration > MAX_DURATION_S:
            raise SkipError(UNSUPPORTED, f"duration {duration:.3g} s")
        if duration < cfg.clip_seconds:
            raise SkipError(TOO_SHORT, f"{duration:.2f} s < one {cfg.clip_seconds:g} s clip")
        rate = video.average_rate or video.guessed_rate or video.base_rate
        return MediaInfo(
            duration=duration,
            has_audio=bool(container.streams.audio),
            width=width,
            height=height,
            fps=float(rate) if rate else 0.0,
        )


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    if len(container.streams) > MAX_STREAMS:
        raise SkipError(UNSUPPORTED, f"{len(container.streams)} streams")
    if not container.streams.video:
        raise SkipError(NO_VIDEO_STREAM, "the container has no video stream")
    return container.streams.video[0]


def _duration(container: av.container.InputContainer, video: av.video.stream.VideoStream) -> float:
    if video.duration and video.time_base:
        return float(video.duration * video.time_base)
    if container.duration:
        return container.duration / av.time_base
    # Some containers (streamed webm/mkv) declare no duration: read packet timestamps,
    # which demuxes but decodes nothing.
    last = 0.0
    for packet in container.demux(video):
        if packet.pts is not None and packet.time_base:
            last = max(last, float((packet.pts + (packet.duration or 0)) * packet.time_base))
    return last - _start_time(video)


def _start_time(stream: av.stream.Stream) -> float:
    return float(stream.start_time * stream.time_base) if stream.start_time is not None and stream.time_base else 0.0


@dataclass
class DecodedClip:
    video: np.ndarray  # uint8 [T, S, S, 3]
    audio: np.ndarray  # float32 [N], mono, cfg.sample_rate
    has_audio: bool


def decode_clip(uri: str, start: float, cfg: DataConfig) -> DecodedClip:
    """Decode ``[start, start + clip_seconds)`` of ``uri`` into the clip-row arrays.

    Frames are sampled at ``cfg.fps`` (the last source frame at or before each sample
    time), scaled so the short side is ``frame_size`` and centre-cropped square. Audio is
    resampled to mono ``cfg.sample_rate``, then trimmed or zero-padded to exactly
    ``clip_seconds`` (AAC pads its output). A video without audio gets silence.
    """
    deadline = time.monotonic() + cfg.decode_timeout_s
    with open_media(uri, cfg.endpoint_override, cfg.decode_timeout_s) as container:
        video_stream = _video_stream(container)
        video_stream.codec_context.thread_count = 1
        audio_stream = container.streams.audio[0] if container.streams.audio else None
        frames = _FrameSampler(start, cfg)
        audio = _AudioWindow(start, cfg) if audio_stream is not None else None
        video_t0 = _start_time(video_stream)
        audio_t0 = _start_time(audio_stream) if audio_stream is not None else 0.0
        try:
            container.seek(max(0, int((start + video_t0) / video_stream.time_base)), stream=video_stream, backward=True)
        except av.FFmpegError:
            container.seek(0)
        streams = [video_stream] + ([audio_stream] if audio_stream is not None else [])
        try:
            for packet in container.demux(*streams):
                if time.monotonic() > deadline:
                    raise SkipError(TIMEOUT, f"clip at {start:.2f} s took over {cfg.decode_timeout_s:g} s")
                try:
                    decoded = packet.decode()
                except av.FFmpegError:
                    # One corrupt packet loses a frame, not the clip; missing frames are checked below.
                    continue
                for frame in decoded:
                    if packet.stream is video_stream:
                        frames.offer(frame, frame.time - video_t0 if frame.time is not None else None)
                    elif audio is not None and frame.time is not None:
                        audio.offer(frame, frame.time - audio_t0)
                if frames.done and (audio is None or audio.done):
                    break
        except av.FFmpegError as err:
            if not frames.enough:
                raise SkipError(DECODE_ERROR, f"clip at {start:.2f} s: {err}") from None
        if not frames.enough:
            raise SkipError(DECODE_ERROR, f"clip at {start:.2f} s: only {frames.count}/{cfg.num_frames} frames decoded")
        return DecodedClip(
            video=frames.result(),
            audio=audio.result() if audio is not None else np.zeros(cfg.num_samples, np.float32),
            has_audio=audio is not None,
        )


class _FrameSampler:
    """Keeps, for each output time start + i/fps, the last source frame at or before it."""

    def __init__(self, start: float, cfg: DataConfig):
        self.targets = start + np.arange(cfg.num_frames) / cfg.fps
        self.size = cfg.frame_size
        self.out = np.zeros((cfg.num_frames, cfg.frame_size, cfg.frame_size, 3), np.uint8)
        self.count = 0
        self.previous: av.VideoFrame | None = None

    @property
    def done(self) -> bool:
        return self.count == len(self.targets)

    @property
    def enough(self) -> bool:
        return self.count > 0 and self.count >= len(self.targets) * (1 - MAX_MISSING_FRAME_FRACTION)

    def offer(self, frame: av.VideoFrame, t: float | None) -> None:
        if self.done or t is None:
            return
        # A frame later than the next target time closes that target with the previous frame.
        while not self.done and t > self.targets[self.count] + 1e-6:
            if self.previous is None:
                # The first frame after the seek is already late: use it rather than nothing.
                self.previous = frame
            self._emit(self.previous)
        self.previous = frame

    def result(self) -> np.ndarray:
        # Stream ended inside the window: hold the last frame (within the missing-frame budget).
        while not self.done and self.previous is not None:
            self._emit(self.previous)
        return self.out

    def _emit(self, frame: av.VideoFrame) -> None:
        self.out[self.count] = _square(frame, self.size)
        self.count += 1


def _square(frame: av.VideoFrame, size: int) -> np.ndarray:
    """Scale (in libswscale) so the short side is ``size``, then centre-crop to size x size."""
    w, h = frame.width, frame.height
    scale = size / min(w, h)
    sw, sh = max(size, round(w * scale)), max(size, round(h * scale))
    rgb = frame.reformat(width=sw, height=sh, format="rgb24").to_ndarray()
    top, left = (sh - size) // 2, (sw - size) // 2
    return rgb[top : top + size, left : left + size]


class _AudioWindow:
    """Collects resampled mono audio covering [start, start + clip_seconds)."""

    def __init__(self, start: float, cfg: DataConfig):
        self.start = start
        self.rate = cfg.sample_rate
        self.length = cfg.num_samples
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=cfg.sample_rate)
        self.chunks: list[np.ndarray] = []
        self.first_time: float | None = None
        self.samples = 0

    @property
    def done(self) -> bool:
        return self.first_time is not None and self.first_time + self.samples / self.rate >= self.start + self.length / self.rate

    def offer(self, frame: av.AudioFrame, t: float) -> None:
        if self.done:
            return
        if self.first_time is None:
            if t + frame.samples / frame.sample_rate <= self.start:
                return  # wholly before the window; the resampler never needs it
            self.first_time = t
        for out in self.resampler.resample(frame):
            chunk = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            self.chunks.append(chunk)
            self.samples += len(chunk)

    def result(self) -> np.ndarray:
        out = np.zeros(self.length, np.float32)
        if self.first_time is None:
            return out
        samples = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)
        offset = round((self.start - self.first_time) * self.rate)
        if offset >= 0:
            piece = samples[offset : offset + self.length]
            out[: len(piece)] = piece
        else:
            # Audio starts after the window opens (stream offset): leading silence.
            piece = samples[: self.length + offset]
            out[-offset : -offset + len(piece)] = piece
        np.clip(out, -1.0, 1.0, out=out)
        return out
