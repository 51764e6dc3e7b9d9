"""PyAV: probing containers and decoding clip windows into fixed-shape arrays.

Decoding is the expensive part of the whole data plane, so it does only what the clips
need: seek to the keyframe before a window, decode up to its end, convert only the
frames that are kept, scale in libswscale (PyAV's ``reformat``) and resample audio with
``av.AudioResampler``; a video's overlapping windows share one pass. Each call decodes on one
thread: parallelism comes from Ray, and one thread per process keeps a 2-core machine from
oversubscribing.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

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
from avray.data.sources import unprintable_original
from avray.storage import filesystem_for

# Beyond these, a header is lying or the file is hostile; decoding would exhaust memory.
MAX_PIXELS = 8192 * 8192
MAX_DURATION_S = 7 * 24 * 3600.0
MAX_STREAMS = 64
# A declared frame rate below this (one frame in ten seconds) is a broken time base, not a video.
MIN_FPS = 0.1
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


class Deadline:
    """The wall-clock limit (``data.decode_timeout_s``) on probing a file or on decoding the
    clips asked of it, all of them together.

    Checked before every packet and handed to PyAV for its open and reads, so neither a
    file that is slow to decode nor one that never ends (a demux loop over millions of
    packets, a stalled read) holds a worker longer than that. One FFmpeg call that
    never returns cannot be interrupted from Python: :func:`abandoned_if_stuck` gives up on it.
    """

    def __init__(self, seconds: float, task: str):
        self.seconds = seconds
        self.task = task
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left; raises the TIMEOUT skip when none are."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise self.expired()
        return left

    def expired(self) -> SkipError:
        return SkipError(TIMEOUT, f"{self.task} took over {self.seconds:g} s (data.decode_timeout_s)")


@contextlib.contextmanager
def open_media(
    uri: str, deadline: Deadline, endpoint_override: str | None = None
) -> Iterator[av.container.InputContainer]:
    """Open a local or s3:// media file with PyAV; raises SkipError for unusable input."""
    if uri.startswith("s3://"):
        fs = _cached_filesystem("s3://" + uri[5:].split("/", 1)[0], endpoint_override)
        path = uri[5:]
        _check_s3_object(fs, path)
        handle = _open_s3_object(fs, path)
    else:
        path = handle = uri
        _check_local_file(path)
    try:
        container = _open_container(handle, deadline)
        try:
            yield container
        finally:
            container.close()
    finally:
        if not isinstance(handle, str):
            handle.close()


def _check_s3_object(fs: pafs.FileSystem, path: str) -> None:
    try:
        info = fs.get_file_info(path)
    except OSError as err:
        raise SkipError(NOT_FOUND, str(err)) from None
    if info.type != pafs.FileType.File:
        raise SkipError(NOT_FOUND, "no such object")
    if info.size == 0:
        raise SkipError(EMPTY, "zero bytes")


def _open_s3_object(fs: pafs.FileSystem, path: str):
    try:
        return fs.open_input_file(path)
    except OSError as err:
        raise SkipError(NOT_FOUND, str(err)) from None


def _check_local_file(path: str) -> None:
    """Only a non-empty regular file may reach FFmpeg: opening a FIFO blocks forever."""
    try:
        info = os.stat(path)
    except OSError as err:
        raise SkipError(*_missing_file(path, err)) from None
    if not stat.S_ISREG(info.st_mode):
        raise SkipError(NOT_FOUND, f"not a regular file but a {_file_kind(info.st_mode)}")
    if info.st_size == 0:
        raise SkipError(EMPTY, "zero bytes")


def _missing_file(path: str, err: OSError) -> tuple[str, str]:
    if unprintable_original(path) is not None:
        return UNSUPPORTED, "its name is not valid UTF-8 (shown with \\xNN escapes): rename it"
    if err.errno == errno.ELOOP:
        return NOT_FOUND, "symlink loop"
    if err.errno == errno.ENOENT and os.path.islink(path):
        return NOT_FOUND, f"dangling symlink to {os.readlink(path)!r}"
    return NOT_FOUND, err.strerror or str(err)


_FILE_KINDS = (
    (stat.S_ISDIR, "directory"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def _file_kind(mode: int) -> str:
    return next((name for is_kind, name in _FILE_KINDS if is_kind(mode)), "special file")


def _open_container(handle, deadline: Deadline) -> av.container.InputContainer:
    try:
        # PyAV interrupts its open (which reads and decodes a little) and every read that
        # runs past this, inside FFmpeg; it raises ExitError then.
        return av.open(handle, mode="r", timeout=deadline.left())
    except av.ExitError:
        raise deadline.expired() from None
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as err:
        raise SkipError(UNREADABLE, f"PyAV cannot open it: {err}") from None


# The in-process deadline fires first; the grace leaves it time to unwind (closing the file,
# converting the frames already decoded) before a call is judged stuck.
HANG_GRACE_S = 5.0

Result = TypeVar("Result")


def hang_limit(decode_timeout_s: float) -> float:
    """Seconds in one file after which its work is judged stuck in an FFmpeg call."""
    return decode_timeout_s + max(HANG_GRACE_S, 0.5 * decode_timeout_s)


def abandoned_if_stuck(work: Callable[[], Result], cfg: DataConfig, task: str) -> Result:
    """``work()``, run on a thread of its own and waited for at most :func:`hang_limit`.

    One FFmpeg call that never returns (a seek, one packet's decode) cannot be interrupted,
    and :class:`Deadline` is checked only between calls. PyAV releases the GIL inside them,
    so the caller can stop waiting: the file is a TIMEOUT skip and the worker goes on with
    the next one. The stuck thread is left where it is, a daemon that keeps no process
    alive, with the one file it holds open. Ending the worker instead would hand the task
    to Ray's retries, and a retried streaming task to a fresh process that imports torch.
    A thread per file costs about 0.1 ms.
    """
    limit = hang_limit(cfg.decode_timeout_s)
    outcome: list = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as err:  # noqa: BLE001 - handed to the caller as it is
            outcome.append((False, err))
        finally:
            done.set()

    threading.Thread(target=run, name="avray-decode", daemon=True).start()
    if not done.wait(limit):
        raise SkipError(
            TIMEOUT,
            f"{task}: an FFmpeg call did not return in {limit:g} s (data.decode_timeout_s plus grace); "
            "the worker gave up on it",
        )
    returned, value = outcome[0]
    if not returned:
        raise value
    return value


def probe(uri: str, cfg: DataConfig) -> MediaInfo:
    """Duration, streams and size from the container header (no frame is decoded)."""
    return abandoned_if_stuck(lambda: _probe(uri, cfg), cfg, "probing")


def _probe(uri: str, cfg: DataConfig) -> MediaInfo:
    deadline = Deadline(cfg.decode_timeout_s, "probing")
    with open_media(uri, deadline, cfg.endpoint_override) as container:
        video = _video_stream(container)
        width, height = video.codec_context.width, video.codec_context.height
        if width <= 0 or height <= 0 or width * height > MAX_PIXELS:
            # FFmpeg zeroes a declared size it refuses outright (65535 x 65535).
            refused = " (refused by FFmpeg)" if width * height == 0 else ""
            raise SkipError(UNSUPPORTED, f"frame size {width}x{height}{refused}")
        rate = video.average_rate or video.guessed_rate or video.base_rate
        if rate is not None and 0 < rate < MIN_FPS:
            raise SkipError(UNSUPPORTED, f"frame rate {float(rate):.3g} fps (time base {video.time_base})")
        duration = _duration(container, video, deadline)
        if not math.isfinite(duration) or duration <= 0 or duration > MAX_DURATION_S:
            raise SkipError(UNSUPPORTED, f"duration {duration:.3g} s")
        if duration < cfg.clip_seconds:
            raise SkipError(TOO_SHORT, f"{duration:.2f} s < one {cfg.clip_seconds:g} s clip")
        return MediaInfo(
            duration=duration,
            has_audio=bool(container.streams.audio),
            width=width,
            height=height,
            fps=float(rate) if rate else 0.0,
        )


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first real video stream: cover art in an audio file is a one-frame "video" stream."""
    if len(container.streams) > MAX_STREAMS:
        raise SkipError(UNSUPPORTED, f"{len(container.streams)} streams")
    videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not videos:
        cover_art = " (only cover art)" if container.streams.video else ""
        raise SkipError(NO_VIDEO_STREAM, f"the container has no video stream{cover_art}")
    if videos[0].codec_context is None:
        raise SkipError(UNSUPPORTED, "no decoder for its video stream (codec unknown or header cut short)")
    return videos[0]


def _duration(container: av.container.InputContainer, video: av.video.stream.VideoStream, deadline: Deadline) -> float:
    """Seconds of video from its first frame: the span clips are laid out over (another
    stream may start sooner or end later)."""
    if video.duration and video.time_base:
        return float(video.duration * video.time_base)
    return _video_end(container, video, deadline) - _start_time(video)


def _video_end(container: av.container.InputContainer, video: av.video.stream.VideoStream, deadline: Deadline) -> float:
    """Where the video ends on the container's timeline, for containers that declare no
    per-stream duration."""
    tagged = _matroska_track_end(video)
    if tagged is not None:
        return tagged
    if container.duration:
        # The container's span ends with its longest stream: taken as the video's end.
        return ((container.start_time or 0) + container.duration) / av.time_base
    # Some containers (streamed webm/mkv) declare no duration: read packet timestamps,
    # which demuxes but decodes nothing; a file of endless packets meets the deadline.
    last = 0.0
    for packet in _packets(container, deadline, video):
        if packet.pts is not None and packet.time_base:
            last = max(last, float((packet.pts + (packet.duration or 0)) * packet.time_base))
    return last


def _matroska_track_end(stream: av.stream.Stream) -> float | None:
    """The ``DURATION`` tag ("HH:MM:SS.nnnnnnnnn") FFmpeg's Matroska muxer writes per track:
    where that track ends, whereas the container's duration is its longest stream's."""
    hours, _, rest = stream.metadata.get("DURATION", "").partition(":")
    minutes, _, seconds = rest.partition(":")
    try:
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def _packets(container: av.container.InputContainer, deadline: Deadline, *streams) -> Iterator[av.Packet]:
    """``container.demux(*streams)`` that stops at ``deadline`` (also inside a stalled read)."""
    try:
        for packet in container.demux(*streams):
            deadline.left()
            yield packet
    except av.ExitError:
        raise deadline.expired() from None


def _start_time(stream: av.stream.Stream) -> float:
    return float(stream.start_time * stream.time_base) if stream.start_time is not None and stream.time_base else 0.0


@dataclass
class DecodedClip:
    video: np.ndarray  # uint8 [T, S, S, 3]
    audio: np.ndarray  # float32 [N], mono, cfg.sample_rate
    has_audio: bool


def decode_clip(uri: str, start: float, cfg: DataConfig) -> DecodedClip:
    """Decode ``[start, start + clip_seconds)`` of ``uri`` into the clip-row arrays
    (:func:`decode_clips_of_video` with one window); raises SkipError when it cannot."""
    (clip,) = decode_clips_of_video(uri, [start], cfg)
    if isinstance(clip, SkipError):
        raise clip
    return clip


def decode_clips_of_video(uri: str, starts: Sequence[float], cfg: DataConfig) -> list[DecodedClip | SkipError]:
    """Decode the windows ``[start, start + clip_seconds)`` of one video into clip-row arrays,
    in the order of ``starts``; a window that cannot be decoded gives its SkipError instead.

    Frames are sampled at ``cfg.fps`` (the last source frame at or before each sample
    time), scaled so the short side is ``frame_size``, centre-cropped square and turned
    upright. Audio is downmixed and resampled to mono ``cfg.sample_rate``, then trimmed or
    zero-padded to exactly ``clip_seconds`` (AAC pads its output). Starts count from the
    video's first frame, on the container's timeline that the audio is placed on too. A
    video without audio gets silence.

    The file is opened once. Windows that overlap or nearly touch (K uniform clips of a
    short video always do) are decoded in one pass from one seek: every source frame is
    decoded once, converted once however many windows keep it, and the audio is resampled
    once; a gap longer than a clip is sought over instead. ``decode_timeout_s`` bounds the
    whole call: the windows decoded by then are kept, the rest are TIMEOUT skips. Raises
    SkipError when the file itself is unusable, and a TIMEOUT one when an FFmpeg call in it
    never returns (:func:`abandoned_if_stuck`: then no window of it is kept).
    """
    task = f"opening and decoding {len(starts)} clip(s)"
    return abandoned_if_stuck(lambda: _decode_clips_of_video(uri, starts, cfg, task), cfg, task)


def _decode_clips_of_video(
    uri: str, starts: Sequence[float], cfg: DataConfig, task: str
) -> list[DecodedClip | SkipError]:
    results: list[DecodedClip | SkipError | None] = [None] * len(starts)
    order = sorted(range(len(starts)), key=lambda i: starts[i])
    deadline = Deadline(cfg.decode_timeout_s, task)
    with open_media(uri, deadline, cfg.endpoint_override) as container:
        video_stream = _video_stream(container)
        video_stream.codec_context.thread_count = 1
        # The header was checked when probing; this holds the decoder to it when the
        # bitstream itself declares a bigger picture than the header did.
        video_stream.codec_context.options = {"max_pixels": str(MAX_PIXELS)}
        audio_stream = container.streams.audio[0] if container.streams.audio else None
        for run in _passes([starts[i] for i in order], cfg.clip_seconds):
            indices = order[: len(run)]
            order = order[len(run) :]
            for i, clip in zip(indices, _decode_pass(container, video_stream, audio_stream, run, cfg, deadline)):
                results[i] = clip
    return results


def _passes(sorted_starts: list[float], clip_seconds: float) -> list[list[float]]:
    """``sorted_starts`` cut where the gap to the next window exceeds one clip: decoding
    through a shorter gap costs less than seeking back to a keyframe before the next window."""
    runs: list[list[float]] = []
    for start in sorted_starts:
        if runs and start <= runs[-1][-1] + 2 * clip_seconds:
            runs[-1].append(start)
        else:
            runs.append([start])
    return runs


def _decode_pass(
    container, video_stream, audio_stream, starts: list[float], cfg: DataConfig, deadline: Deadline
) -> list[DecodedClip | SkipError]:
    """The windows at ``starts`` (sorted) decoded from one seek, in one pass over the packets."""
    converted = _Converter(cfg.frame_size)
    windows = [_FrameSampler(start, cfg, converted) for start in starts]
    end = starts[-1] + cfg.clip_seconds
    audio = _AudioTrack(starts[0], end, cfg.sample_rate) if audio_stream is not None else None
    # Clip times count from the video's first frame on the container's timeline, for both
    # streams: audio that starts later or ends sooner than the video is silence there.
    video_t0 = _start_time(video_stream)
    failure: SkipError | None = None
    try:
        _seek(container, video_stream, starts[0] + video_t0)
        streams = [video_stream] + ([audio_stream] if audio_stream is not None else [])
        for packet in _packets(container, deadline, *streams):
            try:
                decoded = packet.decode()
            except av.FFmpegError:
                # One corrupt packet loses a frame, not the clip; missing frames are checked below.
                continue
            for frame in decoded:
                if packet.stream is video_stream:
                    if frame.time is not None:
                        for window in windows:
                            window.offer(frame, frame.time - video_t0)
                elif audio is not None and frame.time is not None:
                    audio.offer(frame, frame.time - video_t0)
            if windows[-1].done and (audio is None or audio.done):
                break
    except av.FFmpegError as err:
        failure = SkipError(DECODE_ERROR, str(err))
    except SkipError as err:  # the deadline, or a seek that failed
        failure = err
    clips: list[DecodedClip | SkipError] = []
    for start, window in zip(starts, windows):
        if window.done or (window.enough and (failure is None or failure.reason != TIMEOUT)):
            clips.append(
                DecodedClip(
                    video=window.result(),
                    audio=audio.window(start, cfg.num_samples)
                    if audio is not None
                    else np.zeros(cfg.num_samples, np.float32),
                    has_audio=audio is not None,
                )
            )
        elif failure is not None:
            clips.append(SkipError(failure.reason, f"clip at {start:.2f} s: {failure.detail}"))
        else:
            clips.append(
                SkipError(DECODE_ERROR, f"clip at {start:.2f} s: only {window.count}/{cfg.num_frames} frames decoded")
            )
    return clips


def _seek(container: av.container.InputContainer, stream: av.video.stream.VideoStream, seconds: float) -> None:
    """To the keyframe at or before ``seconds``; failing that, to the start of the file.

    A container just opened already stands at the start: a clip there needs no seek, and
    a file too broken to seek in still gets its first frames decoded (or counted missing).
    """
    if seconds <= _start_time(stream):
        return
    for target in (int(seconds / stream.time_base), 0):
        try:
            container.seek(target, stream=stream, backward=True)
            return
        except av.FFmpegError:
            continue
    raise SkipError(DECODE_ERROR, f"cannot seek to {seconds:.2f} s, nor to the start")


class _FrameSampler:
    """Keeps, for each output time start + i/fps, the last source frame at or before it."""

    def __init__(self, start: float, cfg: DataConfig, convert: _Converter):
        self.targets = start + np.arange(cfg.num_frames) / cfg.fps
        self.convert = convert
        self.out = np.zeros((cfg.num_frames, cfg.frame_size, cfg.frame_size, 3), np.uint8)
        self.count = 0
        self.previous: av.VideoFrame | None = None

    @property
    def done(self) -> bool:
        return self.count == len(self.targets)

    @property
    def enough(self) -> bool:
        return self.count > 0 and self.count >= len(self.targets) * (1 - MAX_MISSING_FRAME_FRACTION)

    def offer(self, frame: av.VideoFrame, t: float) -> None:
        if self.done:
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
        self.out[self.count] = self.convert(frame)
        self.count += 1


class _Converter:
    """Source frames as ``size`` x ``size`` RGB, upright, each converted once however many
    overlapping windows keep it (frames are told apart by their timestamp)."""

    def __init__(self, size: int):
        self.size = size
        self.converted: dict[int, np.ndarray] = {}

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if frame.pts is None:
            return _square(frame, self.size)
        if frame.pts not in self.converted:
            self.converted[frame.pts] = _square(frame, self.size)
        return self.converted[frame.pts]


def _square(frame: av.VideoFrame, size: int) -> np.ndarray:
    """Scale (in libswscale) so the short side is ``size``, centre-crop to size x size, and
    turn upright."""
    w, h = frame.width, frame.height
    scale = size / min(w, h)
    sw, sh = max(size, round(w * scale)), max(size, round(h * scale))
    rgb = frame.reformat(width=sw, height=sh, format="rgb24").to_ndarray()
    top, left = (sh - size) // 2, (sw - size) // 2
    return _upright(rgb[top : top + size, left : left + size], frame.rotation)


def _upright(square: np.ndarray, rotation: float) -> np.ndarray:
    """``square`` turned as the display matrix says (phone footage is stored sideways).

    PyAV's ``rotation`` is counterclockwise degrees, as ``np.rot90`` turns; the centre
    crop was taken first, which a quarter turn commutes with. Other angles go to the
    nearest quarter turn; a mirroring in the matrix is not applied.
    """
    return np.rot90(square, k=round(rotation / 90) % 4)


class _AudioTrack:
    """Resampled mono audio covering [start, end), from which each window takes its part."""

    def __init__(self, start: float, end: float, rate: int):
        self.start, self.end, self.rate = start, end, rate
        # libswresample weights the channels (centre 1, front 0.71, surround 0.5, LFE 0) and
        # scales the weights to sum to 1 only when told a ceiling: for float output it has
        # none, and a loud 5.1 or stereo mix summed past full scale.
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=rate, options={"rematrix_maxval": "1"})
        self.chunks: list[np.ndarray] = []
        self.first_time: float | None = None
        self.samples = 0

    @property
    def done(self) -> bool:
        return self.first_time is not None and self.first_time + self.samples / self.rate >= self.end

    def offer(self, frame: av.AudioFrame, t: float) -> None:
        if self.done:
            return
        if self.first_time is None:
            if t + frame.samples / frame.sample_rate <= self.start:
                return  # wholly before the first window; the resampler never needs it
            self.first_time = t
        for out in self.resampler.resample(frame):
            chunk = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            self.chunks.append(chunk)
            self.samples += len(chunk)

    def window(self, start: float, length: int) -> np.ndarray:
        """``length`` samples from ``start``: silence where the stream has none."""
        out = np.zeros(length, np.float32)
        if self.first_time is None:
            return out
        if len(self.chunks) > 1:
            self.chunks = [np.concatenate(self.chunks)]
        samples = self.chunks[0] if self.chunks else np.zeros(0, np.float32)
        offset = round((start - self.first_time) * self.rate)
        if offset >= 0:
            piece = samples[offset : offset + length]
            out[: len(piece)] = piece
        else:
            # Audio starts after the window opens (stream offset): leading silence.
            piece = samples[: length + offset]
            out[-offset : -offset + len(piece)] = piece
        np.clip(out, -1.0, 1.0, out=out)
        return out
