"""Writing real media files with PyAV: the one place avray encodes audio and video.

The demo corpus and the tests both call :func:`write_media`, so every file they use is
a genuine container (mp4/mov/mkv/webm/avi) that FFmpeg-based readers open like any
downloaded video.

Codec defaults follow the container extension (all encoders ship in PyAV's wheel):

=================  =============  ===========  =============================================
extension          video          audio        notes
=================  =============  ===========  =============================================
.mp4 .mov .mkv     libx264        aac          H.264 + AAC, what cameras and phones write
.webm              libvpx-vp9     libopus      Opus only takes 8/12/16/24/48 kHz (see below)
.avi               mpeg4 (Part 2) libmp3lame   MP3 takes 8 to 48 kHz standard rates
=================  =============  ===========  =============================================

Behaviour worth knowing:

* **Odd frame sizes.** H.264 with 4:2:0 chroma (``yuv420p``) refuses odd widths or
  heights. With ``odd_size="keep"`` (default) the file keeps the exact size and the
  encoder switches to 4:4:4 (``yuv444p``, H.264 High 4:4:4 profile; FFmpeg/PyAV decode
  it, some hardware players do not). With ``odd_size="pad"`` frames are padded by
  repeating the last row/column up to even dimensions and stay 4:2:0 (the file is then
  one pixel wider/taller). VP9 and MPEG-4 Part 2 encode odd 4:2:0 sizes as they are.
* **Sample rates.** If the audio codec cannot take ``sample_rate`` (MP3 above 48 kHz),
  the stream is written at the nearest higher rate the codec supports (else its
  highest) and PyAV's encoder resamples. Opus is always written at 48 kHz, the rate
  every Opus decoder outputs. :attr:`WrittenMedia.audio_rate` is the rate in the file.
* **Frame rates** may be fractional (``fractions.Fraction(30000, 1001)``); floats are
  turned into fractions (``29.97`` becomes ``2997/100``).
* **Determinism.** Encoders run on one thread and containers are written with
  ``fflags=+bitexact`` (no random Matroska UIDs, no version strings): the same input
  gives byte-identical files, run after run and process after process, for a given
  PyAV/FFmpeg build.
* **mp4/mov index at the end.** The ``moov`` atom is written after the media data (no
  ``faststart``), so a file cut short loses its index and is unreadable, as real
  interrupted downloads are.
* Encoders are flushed (``encode(None)``) before the trailer is written, so the last
  frames and the AAC tail are in the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

# Extension -> (video codec, audio codec).
CODEC_DEFAULTS: dict[str, tuple[str, str]] = {
    ".mp4": ("libx264", "aac"),
    ".mov": ("libx264", "aac"),
    ".mkv": ("libx264", "aac"),
    ".webm": ("libvpx-vp9", "libopus"),
    ".avi": ("mpeg4", "libmp3lame"),
}

# Encoder settings chosen for small, fast, deterministic files; ``video_options`` overrides.
_VIDEO_OPTIONS: dict[str, dict[str, str]] = {
    # mbtree=0: x264's macroblock-tree rate control (with B-frames) gives run-to-run
    # different bitstreams for the same input at many frame sizes (measured here);
    # without it the output is byte-identical and barely larger.
    "libx264": {"preset": "veryfast", "crf": "26", "threads": "1", "x264-params": "mbtree=0"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "36", "b": "0", "threads": "1", "row-mt": "0"},
}
_AUDIO_BITS_PER_CHANNEL: dict[str, int] = {"aac": 32_000, "libopus": 32_000, "libmp3lame": 48_000, "mp2": 64_000}
_SWS_FLAGS = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.BITEXACT
_CODEC_ALIASES = {"h264": "libx264", "vp9": "libvpx-vp9", "opus": "libopus", "mp3": "libmp3lame"}


class MediaWriteError(ValueError):
    """The arguments cannot be written as asked (bad shapes, unknown extension, ...)."""


@dataclass(frozen=True)
class WrittenMedia:
    """What :func:`write_media` actually wrote (codecs and formats after defaults/fallbacks)."""

    path: str
    video_codec: str | None
    audio_codec: str | None
    width: int | None
    height: int | None
    pixel_format: str | None
    fps: Fraction | None
    frames: int
    audio_rate: int | None  # the rate stored in the file (may differ from the input rate)
    audio_channels: int | None
    audio_seconds: float  # input audio length


def write_media(
    path: str | os.PathLike,
    *,
    frames: np.ndarray | None = None,
    audio: np.ndarray | None = None,
    fps: float | Fraction = 24,
    sample_rate: int = 16_000,
    video_codec: str | None = None,
    audio_codec: str | None = None,
    pixel_format: str = "yuv420p",
    audio_layout: Literal["mono", "stereo"] | None = None,
    odd_size: Literal["keep", "pad"] = "keep",
    video_options: dict[str, str] | None = None,
    audio_options: dict[str, str] | None = None,
    audio_bit_rate: int | None = None,
) -> WrittenMedia:
    """Encode ``frames`` and/or ``audio`` into the container named by ``path``'s extension.

    Args:
        frames: uint8 ``[N, H, W, 3]`` RGB, or None for an audio-only file.
        audio: float32 ``[S]`` or ``[C, S]`` (C = 1 or 2) in [-1, 1], or None for a file
            without an audio stream. Values outside [-1, 1] are clipped.
        fps: frame rate, int/float/``Fraction``. Frame ``i`` is shown at ``i / fps``.
        sample_rate: rate of ``audio``.
        video_codec / audio_codec: override the extension's default (e.g. ``pcm_s16le``
            in ``.mov``/``.mkv``/``.avi`` for lossless audio).
        pixel_format: encoder pixel format (``yuv420p`` plays everywhere).
        audio_layout: ``"mono"`` or ``"stereo"``; None follows ``audio``'s channels.
            Mono input written as stereo is duplicated; stereo written as mono is averaged.
        odd_size: ``"keep"`` or ``"pad"``, see the module docstring.
        video_options: extra video encoder options (strings), merged over the defaults
            (e.g. ``{"crf": "20", "g": "48"}`` for libx264).
        audio_options: audio encoder options (e.g. ``{"aac_coder": "fast"}``).
        audio_bit_rate: bits/s; None picks a small default for the codec.

    Returns:
        :class:`WrittenMedia` describing the streams as written.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if frames is None and audio is None:
        raise MediaWriteError("nothing to write: pass frames, audio or both")
    if ext not in CODEC_DEFAULTS and (
        frames is not None and video_codec is None or audio is not None and audio_codec is None
    ):
        raise MediaWriteError(f"no default codecs for {ext!r}; known: {', '.join(CODEC_DEFAULTS)} (or pass the codecs)")
    default_video, default_audio = CODEC_DEFAULTS.get(ext, (None, None))
    video_codec = _CODEC_ALIASES.get(video_codec or "", video_codec) or default_video
    audio_codec = _CODEC_ALIASES.get(audio_codec or "", audio_codec) or default_audio
    if odd_size not in ("keep", "pad"):
        raise MediaWriteError(f"odd_size must be 'keep' or 'pad', not {odd_size!r}")

    video = _check_frames(frames) if frames is not None else None
    samples = _check_audio(audio, audio_layout) if audio is not None else None
    rate = _fraction(fps)
    if video is not None and rate <= 0:
        raise MediaWriteError(f"fps must be > 0, got {fps!r}")
    sample_rate = int(sample_rate)
    if samples is not None and sample_rate <= 0:
        raise MediaWriteError(f"sample_rate must be > 0, got {sample_rate}")

    width = height = None
    if video is not None:
        height, width = video.shape[1:3]
        if (width % 2 or height % 2) and not _opens(video_codec, width, height, pixel_format, rate):
            if odd_size == "pad":
                video = _pad_even(video)
                height, width = video.shape[1:3]
            else:
                pixel_format = "yuv444p"
                if not _opens(video_codec, width, height, pixel_format, rate):
                    raise MediaWriteError(f"{video_codec} cannot encode {width}x{height}; try odd_size='pad'")

    path.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(str(path), mode="w", options={"fflags": "+bitexact"})
    try:
        vstream = astream = None
        if video is not None:
            options = dict(_VIDEO_OPTIONS.get(video_codec, {"threads": "1"}))
            options.update(video_options or {})
            vstream = container.add_stream(video_codec, rate=rate, options=options)
            vstream.width, vstream.height, vstream.pix_fmt = width, height, pixel_format
            vstream.codec_context.time_base = 1 / rate
            vstream.codec_context.thread_count = 1
            vstream.codec_context.flags |= av.codec.context.Flags.bitexact
            if "crf" not in options and "b" not in options and not options.get("qscale"):
                # Bit-rate codecs (mpeg4): enough for clean small frames, small files.
                vstream.bit_rate = max(100_000, int(width * height * float(rate) * 0.2))
        if samples is not None:
            channels = samples.shape[0]
            out_rate = _supported_rate(audio_codec, sample_rate)
            astream = container.add_stream(audio_codec, rate=out_rate, options=dict(audio_options or {}))
            astream.layout = "stereo" if channels == 2 else "mono"
            astream.codec_context.thread_count = 1
            astream.codec_context.flags |= av.codec.context.Flags.bitexact
            bits = audio_bit_rate or _AUDIO_BITS_PER_CHANNEL.get(audio_codec)
            if bits:
                astream.bit_rate = bits * (channels if audio_bit_rate is None else 1)
        _encode_interleaved(container, vstream, video, rate, astream, samples, sample_rate)
    except BaseException:
        try:
            container.close()
        except Exception:  # the original error is the one worth reporting
            pass
        path.unlink(missing_ok=True)
        raise
    container.close()
    return WrittenMedia(
        path=str(path),
        video_codec=video_codec if video is not None else None,
        audio_codec=audio_codec if samples is not None else None,
        width=width,
        height=height,
        pixel_format=pixel_format if video is not None else None,
        fps=rate if video is not None else None,
        frames=len(video) if video is not None else 0,
        audio_rate=astream.codec_context.sample_rate if astream is not None else None,
        audio_channels=samples.shape[0] if samples is not None else None,
        audio_seconds=samples.shape[1] / sample_rate if samples is not None else 0.0,
    )


def _encode_interleaved(container, vstream, video, rate, astream, samples, sample_rate) -> None:
    """Feed both encoders in presentation order (about one video frame of audio at a time)."""
    n_frames = len(video) if video is not None else 0
    n_samples = samples.shape[1] if samples is not None else 0
    layout = "stereo" if samples is not None and samples.shape[0] == 2 else "mono"
    fed = 0  # audio samples sent so far

    def feed_audio(until: int) -> None:
        nonlocal fed
        while fed < min(until, n_samples):
            stop = min(until, n_samples, fed + 4096)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, fed:stop]), format="fltp", layout=layout)
            frame.sample_rate = sample_rate
            frame.pts = fed
            frame.time_base = Fraction(1, sample_rate)
            container.mux(astream.encode(frame))
            fed = stop

    reformatter = VideoReformatter()
    for i in range(n_frames):
        if astream is not None:
            feed_audio(int(np.ceil((i + 1) / rate * sample_rate)))
        frame = _yuv_frame(reformatter, video[i], vstream.pix_fmt)
        frame.pts = i
        frame.time_base = 1 / rate
        container.mux(vstream.encode(frame))
    if astream is not None:
        feed_audio(n_samples)
        container.mux(astream.encode(None))
    if vstream is not None:
        container.mux(vstream.encode(None))


def _yuv_frame(reformatter: VideoReformatter, rgb: np.ndarray, pixel_format: str) -> av.VideoFrame:
    """RGB -> the encoder's pixel format, with the bytes right of each row zeroed.

    The conversion is libswscale's, single-threaded and bit-exact (the same bytes on any
    CPU). libswscale leaves each row's alignment padding (up to ``line_size``)
    uninitialised and SIMD plane copies in the encoders read into it; zeroing it keeps
    the encoder's input fully defined.
    """
    frame = reformatter.reformat(
        av.VideoFrame.from_ndarray(rgb, format="rgb24"), format=pixel_format, threads=1, interpolation=_SWS_FLAGS
    )
    for i, plane in enumerate(frame.planes):
        width_bytes = _row_bytes(frame, i, plane)
        if plane.line_size > width_bytes:
            rows = np.frombuffer(plane, np.uint8)[: plane.line_size * plane.height]
            rows.reshape(plane.height, plane.line_size)[:, width_bytes:] = 0
    return frame


def _row_bytes(frame: av.VideoFrame, index: int, plane) -> int:
    """Bytes of real pixels in one row of plane ``index``."""
    components = [c for c in frame.format.components if c.plane == index]
    depth_bytes = (max((c.bits for c in components), default=8) + 7) // 8
    return plane.width * max(1, len(components)) * depth_bytes


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise MediaWriteError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    if len(frames) == 0 or frames.shape[1] < 2 or frames.shape[2] < 2:
        raise MediaWriteError(f"frames must hold at least one 2x2 frame, got {list(frames.shape)}")
    return frames


def _check_audio(audio: np.ndarray, layout: str | None) -> np.ndarray:
    """Returns float32 ``[C, S]`` C-contiguous, C in {1, 2}, clipped to [-1, 1]."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2 or audio.shape[0] not in (1, 2) or audio.shape[1] == 0:
        raise MediaWriteError(f"audio must be float [S] or [C, S] with C in (1, 2), got {list(audio.shape)}")
    if layout not in (None, "mono", "stereo"):
        raise MediaWriteError(f"audio_layout must be 'mono' or 'stereo', not {layout!r}")
    if layout == "stereo" and audio.shape[0] == 1:
        audio = np.repeat(audio, 2, axis=0)
    elif layout == "mono" and audio.shape[0] == 2:
        audio = audio.mean(axis=0, keepdims=True)
    return np.ascontiguousarray(np.clip(np.nan_to_num(audio), -1.0, 1.0))


def _fraction(fps: float | Fraction) -> Fraction:
    if isinstance(fps, Fraction):
        return fps
    return Fraction(fps).limit_denominator(1001 * 1000) if isinstance(fps, float) else Fraction(int(fps))


def _opens(codec: str, width: int, height: int, pixel_format: str, rate: Fraction) -> bool:
    """Whether ``codec`` accepts this size and pixel format (opens a throwaway encoder)."""
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, pixel_format
    ctx.time_base = 1 / rate
    ctx.framerate = rate
    ctx.thread_count = 1
    try:
        ctx.open()
    except (av.FFmpegError, ValueError):
        return False
    return True


def _pad_even(video: np.ndarray) -> np.ndarray:
    h, w = video.shape[1:3]
    return np.pad(video, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _supported_rate(codec: str, rate: int) -> int:
    if codec == "libopus":
        return 48_000  # Opus streams always decode at 48 kHz, whatever rate the encoder ran at
    rates = av.codec.Codec(codec, "w").audio_rates
    if not rates or rate in rates:
        return rate
    higher = [r for r in rates if r >= rate]
    return min(higher) if higher else max(rates)
