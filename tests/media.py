"""Media files for tests (helpers, not a test module): good videos, hostile inputs, odd-but-good ones.

Everything is written with :func:`avray.demo.media.write_media`, i.e. real containers
that PyAV/FFmpeg read like any downloaded file.

Skip-reason categories (what the decoder reports for a file it must skip; the same
strings as ``avray.data.report``):

* ``EMPTY`` = ``"empty"``: zero-byte file.
* ``UNREADABLE`` = ``"unreadable"``: not a container PyAV can open (truncated mp4 whose
  index is gone, random bytes, a text file with a video extension).
* ``NO_VIDEO_STREAM`` = ``"no_video_stream"``: opens, but has no video stream (audio-only).
* ``TOO_SHORT`` = ``"too_short"``: a real video shorter than one 2-s clip.

The hostile corpus (:func:`make_hostile_corpus`) also expects ``NOT_FOUND`` (FIFOs,
sockets, dangling and looping symlinks), ``UNSUPPORTED`` (absurd headers, 201 streams,
a name that is not UTF-8) and ``DECODE_ERROR`` (opens, but the clip's frames are gone).
"""

from __future__ import annotations

import math
import os
import stat
import struct
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from avray.demo.media import write_media

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
    :class:`~avray.demo.media.WrittenMedia`.
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

    (directory / "notes.mkv").write_text("These are my notes about the holiday, not a video.\n" * 40, encoding="utf-8")
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
        written = make_good_video(
            directory / name,
            seconds=seconds,
            fps=fps,
            size=size,
            sample_rate=rate,
            audio=has_audio,
            seed=100 + i,
            channels=channels,
        )
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


# --- The hostile corpus (issue 8) -------------------------------------------------------

# Skip reasons the hostile corpus adds to those above (the same strings as avray.data.report).
NOT_FOUND = "not_found"
UNSUPPORTED = "unsupported"
DECODE_ERROR = "decode_error"

# Shell metacharacters, quotes, unicode, whitespace: names that break any code that
# pastes a path into a shell command (the corpus's good and bad files both carry them).
HOSTILE_STEMS = (
    "$(touch pwned_by_name)",
    "a;b|c&d>e<f",
    'it\'s "quoted" `touch pwned_by_name` *?[x]',
    "-rf --no-preserve-root",
    "new\nline\ttab",
    "vidéo 日本語 ✓",
    "  spaces  around  ",
)
# Cut points as fractions of the file, measured with this PyAV/FFmpeg build on 64x64, 3-s
# clips: an mp4/mov index (moov) is written last, so any cut inside the media data loses it;
# a Matroska file keeps its header and loses clusters: cut early, no clip has enough
# frames left; cut near the end, only its index (cues) and last frame or two are lost.
TRUNCATIONS = {
    ".mp4": {0.001: UNREADABLE, 0.05: UNREADABLE, 0.3: UNREADABLE, 0.6: UNREADABLE, 0.8: UNREADABLE},
    ".mov": {0.02: UNREADABLE, 0.5: UNREADABLE},
    ".mkv": {0.01: UNREADABLE, 0.1: DECODE_ERROR, 0.2: DECODE_ERROR, 0.3: DECODE_ERROR, 0.95: None},
    ".webm": {0.01: UNREADABLE, 0.1: DECODE_ERROR, 0.3: DECODE_ERROR, 0.9: None, 0.99: None},
    ".avi": {0.1: UNREADABLE, 0.4: TOO_SHORT, 0.9: None},
}


def make_hostile_corpus(
    directory: str | Path, clips_per_video: int, seed: int = 0
) -> tuple[dict[str, int], dict[str, str]]:
    """A folder of 77 files and entries to report (one partly decodable) among 21 good 64x64, 3-s videos.

    Returns ``(good, bad)``, both keyed by path relative to ``directory`` (as the listing
    prints it): ``good`` maps each file with decodable clips to how many a uniform index of
    ``clips_per_video`` (>= 2) clips per video must yield; ``bad`` maps each file the
    pipeline must report to its skip reason. A file that is partly decodable is in both.
    The same ``seed`` writes the same bytes (in about a second). Every expectation was
    measured with the pinned PyAV/FFmpeg build, and holds for seeds 0 to 9: noise can
    happen to parse as some format (one seed's 777 random bytes made an LRC lyrics file,
    ``no_video_stream``), so another seed may need a look.
    """
    assert clips_per_video >= 2, "the partly decodable file expects its first clip only"
    corpus = _HostileCorpus(Path(directory), clips_per_video, seed)
    for build in (
        corpus.good_videos,
        corpus.random_bytes,
        corpus.truncated,
        corpus.corrupted,
        corpus.absurd_headers,
        corpus.no_video,
        corpus.many_streams,
        corpus.odd_files,
        corpus.odd_entries,
    ):
        build()
    return corpus.good, corpus.bad


class _HostileCorpus:
    """Writes :func:`make_hostile_corpus`'s files, family by family, and what each must give."""

    def __init__(self, root: Path, clips_per_video: int, seed: int):
        self.root = root
        self.clips = clips_per_video
        self.seed = seed
        self.rng = np.random.default_rng([seed, 14])
        self.good: dict[str, int] = {}
        self.bad: dict[str, str] = {}
        self.templates: dict[str, bytes] = {}  # extension -> the bytes of a good video
        root.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, data: bytes, reason: str | None) -> None:
        """``data`` as ``name``; ``reason`` None means a good file (all its clips decode)."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.expect(name, reason)

    def expect(self, name: str, reason: str | None) -> None:
        if reason is None:
            self.good[name] = self.clips
        else:
            self.bad[name] = reason

    def video(self, name: str, seed: int, **kwargs) -> bytes:
        """A good video written as ``name`` (expected good); returns its bytes."""
        options = {"seconds": 3.0, "fps": 12, "size": 64, "sample_rate": 16000, **kwargs}
        make_good_video(self.root / name, seed=seed, **options)
        self.expect(name, None)
        return (self.root / name).read_bytes()

    def good_videos(self) -> None:
        """Every extension, hostile names, nested folders, a folder named like a video, a symlink."""
        for i, (stem, ext) in enumerate(zip(HOSTILE_STEMS, (".mp4", ".mkv", ".webm", ".avi", ".mov", ".mp4", ".mkv"))):
            data = self.video(stem + ext, seed=self.seed * 100 + i)
            self.templates.setdefault(ext, data)
        self.video("clips.mp4/inside a folder named like a video.mp4", seed=self.seed * 100 + 20)
        self.video("deep/er/still deeper/nested.webm", seed=self.seed * 100 + 21)
        (self.root / "a symlink to a good video.mp4").symlink_to(HOSTILE_STEMS[0] + ".mp4")
        self.expect("a symlink to a good video.mp4", None)

    def random_bytes(self) -> None:
        """Noise of many sizes under every extension, bare or behind the container's magic bytes."""
        magic = {
            ".mp4": b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41",
            ".mkv": b"\x1a\x45\xdf\xa3",
            ".webm": b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm",
            ".mov": b"\x00\x00\x00\x14ftypqt  ",
            ".avi": b"RIFF\x00\x10\x00\x00AVI LIST",
        }
        for ext, head in magic.items():
            for size in (1, 777, 65_536):
                self.write(f"noise/{size} random bytes{ext}", self.rng.bytes(size), UNREADABLE)
            # RIFF/AVI with noise for a header parses as an AVI holding no stream at all.
            self.write(
                f"noise/magic then noise{ext}",
                head + self.rng.bytes(5000),
                NO_VIDEO_STREAM if ext == ".avi" else UNREADABLE,
            )
        self.write("noise/" + HOSTILE_STEMS[2] + ".mp4", self.rng.bytes(300_000), UNREADABLE)

    def truncated(self) -> None:
        """Cut at fractions of the file (:data:`TRUNCATIONS`), and an mp4 cut inside its index."""
        for ext, cuts in TRUNCATIONS.items():
            data = self.templates[ext]
            for fraction, reason in cuts.items():
                self.write(f"truncated/at {fraction:g}{ext}", data[: int(len(data) * fraction)], reason)
        mp4 = self.templates[".mp4"]
        for name, (box, offset, reason) in {
            "in its sample description.mp4": (b"stsd", 2, UNSUPPORTED),  # a video stream without a codec
            "before its timing table.mp4": (b"stts", 0, DECODE_ERROR),
        }.items():
            self.write(f"truncated/{name}", mp4[: _mp4_box(mp4, box) + offset], reason)

    def corrupted(self) -> None:
        """Header bytes overwritten with noise; noise in the middle of the media data."""
        for ext in (".mp4", ".mov", ".mkv", ".webm"):
            data = bytearray(self.templates[ext])
            data[:64] = self.rng.bytes(64)
            self.write(f"corrupt/header{ext}", bytes(data), UNREADABLE)
        template = self.templates[".mp4"]
        for name, start, size, reason in (
            ("media data.mp4", _mp4_box(template, b"mdat") + 8, 4000, DECODE_ERROR),
            ("parameter sets.mp4", _mp4_box(template, b"avc1") + 86, 64, UNREADABLE),  # the avcC box: SPS/PPS
        ):
            data = bytearray(template)
            data[start : start + size] = self.rng.bytes(size)
            self.write(f"corrupt/{name}", bytes(data), reason)
        for ext in (".mkv", ".webm"):
            data = bytearray(self.templates[ext])
            data[len(data) // 3 : len(data) // 3 + 3000] = self.rng.bytes(3000)
            self.write(f"corrupt/media data{ext}", bytes(data), DECODE_ERROR)

    def absurd_headers(self) -> None:
        """Frame sizes, durations, time bases and sample tables no real file has."""
        mp4 = self.templates[".mp4"]
        patches = {
            # FFmpeg takes H.264's size from its parameter sets and durations from the sample
            # table: these lies change nothing, the files are good.
            "65535x65535 in avc1 and tkhd.mp4": (
                None,
                [
                    (b"avc1", 0, 32, ">H", 65535),
                    (b"avc1", 0, 34, ">H", 65535),
                    (b"tkhd", 0, 84, ">I", 65535 << 16),
                    (b"tkhd", 0, 88, ">I", 65535 << 16),
                ],
            ),
            "136 years in mvhd mdhd tkhd.mp4": (
                None,
                [
                    (b"mvhd", 0, 24, ">I", 2**32 - 1),
                    (b"mdhd", 0, 24, ">I", 2**32 - 1),
                    (b"mdhd", 1, 24, ">I", 2**32 - 1),
                    (b"tkhd", 0, 28, ">I", 2**32 - 1),
                ],
            ),
            "zero video timescale.mp4": (UNSUPPORTED, [(b"mdhd", 0, 20, ">I", 0)]),
            "zero timescales everywhere.mp4": (
                UNSUPPORTED,
                [(b"mvhd", 0, 20, ">I", 0), (b"mdhd", 0, 20, ">I", 0), (b"mdhd", 1, 20, ">I", 0)],
            ),
            "zero frame durations.mp4": (DECODE_ERROR, [(b"stts", 0, 20, ">I", 0)]),
            "2 GB samples.mp4": (DECODE_ERROR, [(b"stsz", 0, 20 + 4 * i, ">I", 2**31 - 1) for i in range(8)]),
            "chunk offsets past the end.mp4": (DECODE_ERROR, [(b"stco", 0, 16, ">I", 2**31 - 16)]),
            "2 billion timing entries.mp4": (UNREADABLE, [(b"stts", 0, 12, ">I", 2**31 - 1)]),
        }
        for name, (reason, edits) in patches.items():
            self.write(f"absurd/{name}", _patch_mp4(mp4, edits), reason)
        raw = self.raw_avi()
        for name, (reason, edits) in {
            "65535x65535 raw.avi": (UNSUPPORTED, [(b"strf", 12, "<i", 65535), (b"strf", 16, "<i", 65535)]),
            "9000x9000 raw.avi": (UNSUPPORTED, [(b"strf", 12, "<i", 9000), (b"strf", 16, "<i", 9000)]),
            "4 billion frames raw.avi": (UNSUPPORTED, [(b"strh", 40, "<I", 2**32 - 1), (b"avih", 24, "<I", 2**32 - 1)]),
            "zero frame rate raw.avi": (None, [(b"strh", 32, "<I", 0)]),  # FFmpeg falls back on avih's frame period
        }.items():
            self.write(f"absurd/{name}", _patch_riff(raw, edits), reason)
        mkv = self.templates[".mkv"]
        for name, (reason, milliseconds) in {
            "declares 1e12 s.mkv": (UNSUPPORTED, 1e15),
            "declares 8 days.mkv": (UNSUPPORTED, 8 * 86400e3),
            "declares -5 ms.mkv": (UNSUPPORTED, -5.0),
            "declares NaN.mkv": (None, float("nan")),  # ignored: the duration is read from the packets
            "declares 0.mkv": (None, 0.0),
        }.items():
            self.write(f"absurd/{name}", _patch_mkv_duration(mkv, milliseconds), reason)
        # A plausible lie: the index lays out clips over an hour; only the first exists.
        self.write("absurd/declares 1 hour.mkv", _patch_mkv_duration(mkv, 3600e3), DECODE_ERROR)
        self.good["absurd/declares 1 hour.mkv"] = 1

    def raw_avi(self) -> bytes:
        """A 16x16 uncompressed AVI: the header's frame size is the only size it has."""
        path = self.root / "absurd/16x16 raw.avi"
        path.parent.mkdir(parents=True, exist_ok=True)
        make_good_video(
            path, seconds=3.0, fps=12, size=16, sample_rate=16000, audio=False, seed=self.seed, video_codec="rawvideo"
        )
        self.expect("absurd/16x16 raw.avi", None)
        return path.read_bytes()

    def no_video(self) -> None:
        """Audio-only files, and an audio file whose only picture is its cover art."""
        audio = tone(3.0, 16000, seed=self.seed)
        for name in ("audio only.mp4", "audio only.webm", "audio only.mkv"):
            write_media(self.root / "no video" / name, audio=audio, sample_rate=16000)
            self.expect(f"no video/{name}", NO_VIDEO_STREAM)
        _write_with_cover_art(self.root / "no video/song with cover art.mp4", audio)
        self.expect("no video/song with cover art.mp4", NO_VIDEO_STREAM)

    def many_streams(self) -> None:
        _write_many_streams(self.root / "1 video and 200 audio streams.mkv", audio_streams=200, seed=self.seed)
        self.expect("1 video and 200 audio streams.mkv", UNSUPPORTED)

    def odd_files(self) -> None:
        """Empty, text and script files with video names; a video shorter than a clip."""
        self.write("empty.mp4", b"", EMPTY)
        self.write(HOSTILE_STEMS[1] + " empty.webm", b"", EMPTY)
        self.write("notes.mkv", b"These are my holiday notes, not a video.\n" * 40, UNREADABLE)
        self.write(HOSTILE_STEMS[0] + " script.mp4", b"#!/bin/sh\ntouch pwned_by_content\n", UNREADABLE)
        make_good_video(
            self.root / "half a second.mp4", seconds=0.5, fps=12, size=64, sample_rate=16000, seed=self.seed
        )
        self.expect("half a second.mp4", TOO_SHORT)

    def odd_entries(self) -> None:
        """Directory entries that are not regular files, loops, and a name that is not UTF-8."""
        os.mkfifo(self.root / "fifo.mp4")  # opening it for reading would block forever
        self.expect("fifo.mp4", NOT_FOUND)
        os.mknod(self.root / "socket.mkv", 0o600 | stat.S_IFSOCK)
        self.expect("socket.mkv", NOT_FOUND)
        (self.root / "dangling.mp4").symlink_to("no such file.mp4")
        self.expect("dangling.mp4", NOT_FOUND)
        (self.root / "ping.mp4").symlink_to("pong.mp4")
        (self.root / "pong.mp4").symlink_to("ping.mp4")
        (self.root / "self.webm").symlink_to("self.webm")
        for name in ("ping.mp4", "pong.mp4", "self.webm"):
            self.expect(name, NOT_FOUND)
        # Folder loops: into itself, back to an ancestor inside the corpus, out to its parent.
        (self.root / "loop").symlink_to(".")
        (self.root / "deep/er/up").symlink_to("../..")
        (self.root / "deep/out").symlink_to("../..")
        # A Latin-1 name (a good video inside) is reported under its printable form.
        (self.root / os.fsdecode(b"caf\xe9 latin-1.mp4")).write_bytes(self.templates[".mp4"])
        self.expect("caf\\xe9 latin-1.mp4", UNSUPPORTED)


def _mp4_boxes(data: bytes | bytearray, start: int = 0, end: int | None = None):
    """(type, offset) of every box, depth first; enough of ISO BMFF to find the header fields."""
    containers = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf"}
    end = len(data) if end is None else end
    while start + 8 <= end:
        size, kind = struct.unpack(">I4s", data[start : start + 8])
        if size < 8:
            return
        yield kind, start
        if kind in containers:
            yield from _mp4_boxes(data, start + 8, start + size)
        elif kind == b"stsd":  # a full box with an entry count before its sample entries
            yield from _mp4_boxes(data, start + 16, start + size)
        start += size


def _mp4_box(data: bytes | bytearray, kind: bytes, index: int = 0) -> int:
    return [offset for found, offset in _mp4_boxes(data) if found == kind][index]


def _patch_mp4(data: bytes, edits) -> bytes:
    """``edits``: (box type, which one, byte offset in the box, struct format, value)."""
    out = bytearray(data)
    for kind, index, offset, fmt, value in edits:
        struct.pack_into(fmt, out, _mp4_box(data, kind, index) + offset, value)
    return bytes(out)


def _patch_riff(data: bytes, edits) -> bytes:
    """``edits``: (chunk id, byte offset in the first such chunk, struct format, value)."""
    out = bytearray(data)
    for chunk, offset, fmt, value in edits:
        struct.pack_into(fmt, out, data.index(chunk) + offset, value)
    return bytes(out)


def _patch_mkv_duration(data: bytes, milliseconds: float) -> bytes:
    """The Segment Info ``Duration`` (EBML id 0x4489, a float in the 1 ms default timecode scale),
    with the per-track ``DURATION`` tags renamed, so that the segment's is the only one left."""
    at = data.index(b"\x44\x89")
    size = data[at + 2] & 0x0F
    assert data[at + 2] in (0x84, 0x88), "Duration is a 4- or 8-byte float"
    out = bytearray(data.replace(b"DURATION", b"DURATIOX"))
    struct.pack_into(">d" if size == 8 else ">f", out, at + 3, milliseconds)
    return bytes(out)


def _write_many_streams(path: Path, audio_streams: int, seed: int) -> None:
    """A real 3-s video plus ``audio_streams`` tiny PCM tracks (cheap: 10 ms of silence each)."""
    container = av.open(str(path), "w", options={"fflags": "+bitexact"})
    video = container.add_stream("libx264", rate=12, options={"preset": "ultrafast", "threads": "1"})
    video.width = video.height = 64
    video.pix_fmt = "yuv420p"
    tracks = [container.add_stream("pcm_s16le", rate=8000, layout="mono") for _ in range(audio_streams)]
    for track in tracks:
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 80), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        container.mux(track.encode(frame))
    for i, rgb in enumerate(moving_disc(3.0, 12, 64, 64, seed)):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        container.mux(video.encode(frame))
    container.mux(video.encode(None))
    container.close()


def _write_with_cover_art(path: Path, audio: np.ndarray, sample_rate: int = 16000) -> None:
    """AAC audio plus a JPEG cover: FFmpeg lists the cover as a one-frame video stream."""
    path.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(str(path), "w", options={"fflags": "+bitexact"})
    sound = container.add_stream("aac", rate=sample_rate, layout="mono")
    cover = container.add_stream("mjpeg", rate=1)
    cover.width = cover.height = 64
    cover.pix_fmt = "yuvj420p"
    cover.disposition = av.stream.Disposition.attached_pic
    picture = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 128, np.uint8), format="rgb24").reformat(
        format="yuvj420p"
    )
    picture.pts = 0
    container.mux(cover.encode(picture) + cover.encode(None))
    for start in range(0, len(audio), 1024):
        frame = av.AudioFrame.from_ndarray(audio[None, start : start + 1024], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = sample_rate, start
        container.mux(sound.encode(frame))
    container.mux(sound.encode(None))
    container.close()


def make_slow_video(path: str | Path, seconds: float = 10.0, fps: int = 240, keyframe_every: int = 2) -> None:
    """A 4K video that is slow to decode yet written in well under a second.

    3840x2160 at ``fps`` with a single keyframe flagged in the container: any clip means
    decoding hundreds of 4K frames from the start (about 20 ms each on this project's
    machine, so 10 s and more), the work a long-GOP, high-rate camera file asks for. Only
    ``keyframe_every`` frames (a smooth gradient) are encoded; their packets are repeated
    with later timestamps, each repeat opening with an IDR frame that the container does
    not mark, so seeking can only land at the start.
    """
    width, height = 3840, 2160
    gradient = np.broadcast_to(np.linspace(0, 255, height, dtype=np.float32)[:, None, None], (height, width, 3))
    with tempfile.TemporaryDirectory() as scratch:
        segment = Path(scratch) / "segment.mp4"
        write_media(
            segment,
            frames=np.broadcast_to(gradient.astype(np.uint8), (keyframe_every, height, width, 3)),
            fps=fps,
            video_options={"g": str(keyframe_every)},
        )
        source = av.open(str(segment))
        template = source.streams.video[0]
        packets = [packet for packet in source.demux(template) if packet.size]
        output = av.open(str(path), "w")
        stream = output.add_stream_from_template(template)
        ticks = int(round(1 / (template.time_base * fps)))  # one frame in the stream's time base
        for repeat in range(int(seconds * fps) // keyframe_every):
            shift = repeat * keyframe_every * ticks
            for packet in packets:
                copy = av.Packet(bytes(packet))
                copy.pts, copy.dts = packet.pts + shift, packet.dts + shift
                copy.time_base, copy.stream = template.time_base, stream
                copy.is_keyframe = repeat == 0 and packet.is_keyframe
                output.mux(copy)
        output.close()
        source.close()


# --- Odd timelines, layouts and orientations (issue 22) -----------------------------------


def write_timed_streams(
    path: str | Path,
    *,
    frames: np.ndarray,
    fps: int,
    audio: np.ndarray,
    sample_rate: int,
    layout: str = "mono",
    video_start: float = 0.0,
    audio_start: float = 0.0,
) -> None:
    """H.264 video and lossless PCM audio (``[C, S]`` float in ``layout``, or ``[S]`` mono), each
    stream starting at its own time on the container's timeline (``.mov`` writes an empty edit)."""
    container = av.open(str(path), "w", options={"fflags": "+bitexact"})
    video = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "threads": "1"})
    video.height, video.width = frames.shape[1:3]
    video.pix_fmt = "yuv420p"
    sound = container.add_stream("pcm_s16le", rate=sample_rate, layout=layout)
    samples = np.ascontiguousarray(np.atleast_2d(audio), np.float32)
    first_frame, first_sample = round(video_start * fps), round(audio_start * sample_rate)
    fed = 0

    def feed_audio(until: int) -> None:
        nonlocal fed
        for at in range(fed, min(until, samples.shape[1]), 1024):
            piece = samples[:, at : min(at + 1024, until)]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format="fltp", layout=layout)
            frame.sample_rate, frame.pts = sample_rate, first_sample + at
            container.mux(sound.encode(frame))
        fed = max(fed, min(until, samples.shape[1]))

    for i, rgb in enumerate(frames):
        # Interleaved by time, as a camera writes: the audio up to this frame, then the frame.
        feed_audio(round((first_frame + i + 1) / fps * sample_rate) - first_sample)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts, frame.time_base = first_frame + i, Fraction(1, fps)
        container.mux(video.encode(frame))
    feed_audio(samples.shape[1])
    container.mux(sound.encode(None) + video.encode(None))
    container.close()


# The mp4 track header's display matrix (16.16 fixed point; w in 2.30) that an iPhone writes
# for portrait footage: frames stored landscape, shown turned 90 degrees clockwise.
PORTRAIT_MATRIX = (0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30)


def with_display_matrix(mp4: bytes, matrix: tuple[int, ...] = PORTRAIT_MATRIX) -> bytes:
    """``mp4`` with its first track's ``tkhd`` matrix (36 bytes at offset 48) replaced."""
    return _patch_mp4(mp4, [(b"tkhd", 0, 48 + 4 * i, ">i", value) for i, value in enumerate(matrix)])
