"""Media files for tests (helpers, not a test module): good videos, hostile inputs, odd-but-good ones.

Everything is written with :func:`avray.data.media.write_media`, i.e. real containers
that PyAV/FFmpeg read like any downloaded file.

Skip-reason categories (what the decoder reports for a file it must skip; the same
strings as ``avray.data.report``):

* ``EMPTY`` = ``"empty"``: zero-byte file.
* ``UNREADABLE`` = ``"unreadable"``: not a container PyAV can open (truncated mp4 whose
  index is gone, random bytes, a text file with a video extension).
* ``NO_VIDEO_STREAM`` = ``"no_video_stream"``: opens, but has no video stream (audio-only).
* ``TOO_SHORT`` = ``"too_short"``: a real video shorter than one 2-s clip.
"""

from __future__ import annotations

import math
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

from avray.data.media import write_media

EMPTY = "empty"
UNREADABLE = "unreadable"
NO_VIDEO_STREAM = "no_video_stream"
TOO_SHORT = "too_short"
SKIP_REASONS = (EMPTY, UNREADABLE, NO_VIDEO_STREAM, TOO_SHORT)


def moving_disc(seconds: float, fps: float | Fraction, width: int, height: int, seed: int) -> np.ndarray:
    """uint8 ``[N, height, width, 3]``: a bright disc circling over a colour gradient (seeded)."""
    rng = np.random.default_rng([seed, 11])
    n = max(1, int(round(seconds * float(fps))))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, 3).astype(np.float32)
    gradient = base + 40 * (x / width)[..., None] - 30 * (y / height)[..., None]
    radius = max(2.0, 0.15 * min(width, height))
    phase, turns = rng.uniform(0, 2 * math.pi), rng.uniform(0.2, 0.6)
    colour = rng.uniform(0, 255, 3).astype(np.float32)
    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        angle = phase + 2 * math.pi * turns * i / float(fps)
        cx = width / 2 + 0.3 * width * math.cos(angle)
        cy = height / 2 + 0.3 * height * math.sin(angle)
        inside = ((x - cx) ** 2 + (y - cy) ** 2 <= radius**2)[..., None]
        frames[i] = np.clip(np.where(inside, colour, gradient), 0, 255).astype(np.uint8)
    return frames


def tone(seconds: float, sample_rate: int, seed: int, channels: int = 1) -> np.ndarray:
    """float32 ``[S]`` (or ``[C, S]``): a seeded tone (300-1500 Hz) with a slow tremolo and light noise."""
    rng = np.random.default_rng([seed, 12])
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    f = rng.uniform(300, 1500)
    wave = 0.4 * np.sin(2 * math.pi * f * t) * (0.75 + 0.25 * np.sin(2 * math.pi * 1.5 * t))
    out = [wave + 0.02 * rng.standard_normal(len(t)) for _ in range(channels)]
    audio = np.stack(out).astype(np.float32)
    return audio[0] if channels == 1 else audio


def make_good_video(
    path: str | Path,
    *,
    seconds: float,
    fps: float | Fraction,
    size: int | tuple[int, int],
    sample_rate: int,
    audio: bool = True,
    seed: int,
    channels: int = 1,
    **write_kwargs,
):
    """A real video (codecs from the extension) with a moving disc and, if ``audio``, a tone.

    ``size`` is a side (square) or ``(width, height)``. Returns ``write_media``'s
    :class:`~avray.data.media.WrittenMedia`.
    """
    width, height = (size, size) if isinstance(size, int) else size
    return write_media(
        path,
        frames=moving_disc(seconds, fps, width, height, seed),
        audio=tone(seconds, sample_rate, seed, channels) if audio else None,
        fps=fps,
        sample_rate=sample_rate,
        **write_kwargs,
    )


def make_bad_inputs(directory: str | Path) -> dict[str, str]:
    """One hostile file per case in ``directory``; returns ``{file name: skip reason}``.

    Every name has a video extension, so a folder listing picks each of them up.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cases: dict[str, str] = {}

    with tempfile.TemporaryDirectory() as scratch:
        good = Path(scratch) / "good.mp4"
        make_good_video(good, seconds=3.0, fps=24, size=64, sample_rate=16000, seed=99)
        data = good.read_bytes()
    # The mp4 index (moov) is written last: the first half holds media data but no index.
    (directory / "truncated.mp4").write_bytes(data[: len(data) // 2])
    cases["truncated.mp4"] = UNREADABLE

    (directory / "random_bytes.mp4").write_bytes(np.random.default_rng(0).bytes(20_000))
    cases["random_bytes.mp4"] = UNREADABLE

    (directory / "empty.mp4").write_bytes(b"")
    cases["empty.mp4"] = EMPTY

    (directory / "notes.mkv").write_text(
        "These are my notes about the holiday, not a video.\n" * 40, encoding="utf-8"
    )
    cases["notes.mkv"] = UNREADABLE

    write_media(directory / "audio_only.mp4", audio=tone(3.0, 16000, seed=5), sample_rate=16000)
    cases["audio_only.mp4"] = NO_VIDEO_STREAM

    make_good_video(directory / "short.mp4", seconds=0.5, fps=24, size=64, sample_rate=16000, seed=6)
    cases["short.mp4"] = TOO_SHORT
    return cases


def make_odd_good_inputs(directory: str | Path, seconds: float = 3.0) -> dict[str, dict]:
    """Unusual files that must NOT be skipped; returns ``{file name: what is odd about it}``.

    Each value holds the facts a reader should find: ``width``, ``height``, ``fps``
    (Fraction), ``has_audio``, ``sample_rate`` and ``channels`` (None without audio),
    ``video_codec``/``audio_codec`` (encoder names), ``seconds``.
    """
    directory = Path(directory)
    cases = {
        # name: (fps, (width, height), sample_rate, channels, has audio)
        "no_audio.mp4": (24, (64, 64), 16000, 1, False),
        "ntsc_29_97fps.mp4": (Fraction(30000, 1001), (64, 64), 16000, 1, True),
        "slow_7fps.mp4": (7, (64, 64), 16000, 1, True),
        "odd_97x61.mp4": (24, (97, 61), 16000, 1, True),  # H.264 4:4:4 (4:2:0 needs even sizes)
        "portrait_48x160.mp4": (24, (48, 160), 16000, 1, True),
        "stereo_44k.mp4": (25, (64, 64), 44100, 2, True),
        "matroska.mkv": (24, (64, 64), 22050, 1, True),
        "vp9_opus.webm": (24, (64, 64), 48000, 1, True),
        "quicktime.mov": (30, (64, 48), 22050, 2, True),
        "mpeg4_mp3.avi": (25, (64, 64), 44100, 1, True),
    }
    out = {}
    for i, (name, (fps, size, rate, channels, has_audio)) in enumerate(cases.items()):
        written = make_good_video(directory / name, seconds=seconds, fps=fps, size=size, sample_rate=rate,
                                  audio=has_audio, seed=100 + i, channels=channels)
        out[name] = {
            "width": written.width,
            "height": written.height,
            "fps": written.fps,
            "has_audio": has_audio,
            "sample_rate": written.audio_rate,
            "channels": written.audio_channels,
            "video_codec": written.video_codec,
            "audio_codec": written.audio_codec,
            "pixel_format": written.pixel_format,
            "seconds": seconds,
        }
    return out
