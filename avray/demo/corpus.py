"""The demo corpus: real mp4 files of handwritten digits that you can also hear.

Each video (H.264 + AAC, ``output/<class>/<name>.mp4``, classes ``"0"``..``"9"``) shows
one **real handwritten digit** from scikit-learn's ``load_digits`` (8x8 scans bundled
with scikit-learn, no download), and its soundtrack carries **the same digit** as a
DTMF-like pair of tones. The digit's class is the only thing the two streams share:

picture
    a random sample of the class, upscaled smoothly (bicubic) to a random size
    (55-75 % of the frame), in a random colour, moving in a straight line at a random
    speed and bouncing off the frame edges, over a randomly tinted background with
    smooth colour blobs, static grain and per-frame noise; it may fade in at a random
    onset (<= 0.6 s).
sound
    the class's tone pair (the telephone keypad: ``1`` = 697 + 1209 Hz, ... ``0`` = 941 +
    1336 Hz), detuned per video (+-3 %, plus +-0.7 % per beep), with a random timbre
    (2nd-4th harmonics), a random balance of the two tones, beeps of random length
    (0.1-0.35 s) and gaps (0.04-0.25 s), attack/decay envelopes, a random onset
    (<= 0.6 s, independent of the picture's), and white + brown background noise.

Backgrounds, colours, motion, noise, onsets and loudness are drawn independently of the
class and of each other, as in real footage where only the event links sound and image.
Every 2-second window of every video shows the digit and holds several beeps, so the
task stays learnable from 2-s clips at 8 fps, 64x64 and 16 kHz (what the pipeline makes).

Generation is deterministic: each video's randomness comes from ``(seed, index)`` alone,
so the same seed gives byte-identical files whether videos are written in one process
or spread over a process pool (x264, AAC and the mp4 muxer are deterministic with
:func:`avray.demo.media.write_media`'s settings).
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from avray import console
from avray.demo.media import write_media

CLASSES = tuple(str(d) for d in range(10))
# The telephone keypad (DTMF): digit -> (row tone, column tone) in Hz.
TONES: dict[int, tuple[float, float]] = {
    1: (697.0, 1209.0),
    2: (697.0, 1336.0),
    3: (697.0, 1477.0),
    4: (770.0, 1209.0),
    5: (770.0, 1336.0),
    6: (770.0, 1477.0),
    7: (852.0, 1209.0),
    8: (852.0, 1336.0),
    9: (852.0, 1477.0),
    0: (941.0, 1336.0),
}
MAX_ONSET_S = 0.6  # picture and sound both start within this: every 2-s window has the digit
# x264: small files (the picture is simple), deterministic (see avray.demo.media), and a
# keyframe every 2 s as cameras write them, so that seeking to a clip decodes little.
VIDEO_OPTIONS = {"preset": "veryfast", "crf": "28", "threads": "1", "x264-params": "mbtree=0"}
KEYFRAME_INTERVAL_S = 2.0
AUDIO_BIT_RATE = 32_000
AUDIO_OPTIONS = {"aac_coder": "fast"}  # twice as fast as the default two-loop search, same size


@dataclass(frozen=True)
class VideoSpec:
    """Every random choice behind one demo video (flat, JSON-able; a corpus row holds it)."""

    index: int
    label: str
    digit_index: int  # row of sklearn.datasets.load_digits()
    duration_s: float
    size: int
    fps: int
    sample_rate: int
    # picture
    digit_px: int
    x0: float  # top-left corner at t = 0 (before bouncing), pixels
    y0: float
    vx: float  # pixels per second
    vy: float
    video_onset_s: float
    fg_rgb: tuple[float, float, float]  # 0..1
    bg_rgb: tuple[float, float, float]
    blob_amplitude: float
    grain: float
    frame_noise: float
    # sound
    f1: float  # detuned tone pair, Hz
    f2: float
    harmonics: tuple[float, float, float]  # weights of the 2nd, 3rd, 4th harmonic
    balance: float  # amplitude of f2 relative to f1
    audio_onset_s: float
    level: float  # peak amplitude
    snr_db: float
    noise_seed: int


def make_demo_corpus(
    output_dir: str | os.PathLike,
    videos: int,
    seed: int,
    *,
    duration_s: float = 4.0,
    size: int = 96,
    fps: int = 24,
    sample_rate: int = 22050,
    progress: Callable[[str], None] | None = None,
    workers: int | None = None,
) -> list[dict]:
    """Write ``videos`` demo mp4s under ``output_dir/<class>/`` and return one row per video.

    Rows hold ``path`` (str), ``label`` (``"0"``..``"9"``) and every field of
    :class:`VideoSpec`. Classes are balanced (counts differ by at most one; every class is
    present once ``videos >= 10``). ``workers``: processes to use (None: one per CPU
    when there is enough work; 1: this process). ``progress`` receives short messages.
    """
    if videos < 0:
        raise ValueError(f"videos must be >= 0, got {videos}")
    if duration_s < 2.0 + MAX_ONSET_S:
        raise ValueError(f"duration_s must be >= {2.0 + MAX_ONSET_S:g} (one 2-s clip after the onset)")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    output = Path(output_dir)
    images = _digit_images()
    specs = plan_corpus(videos, seed, duration_s=duration_s, size=size, fps=fps, sample_rate=sample_rate)
    jobs = [
        (spec, images[spec.digit_index], str(output / spec.label / f"digit_{spec.index:05d}.mp4")) for spec in specs
    ]
    return write_corpus(_write_one, jobs, progress, workers)


def write_corpus(
    write_one: Callable[..., dict], jobs: list[tuple], progress: Callable[[str], None] | None, workers: int | None
) -> list[dict]:
    """Run ``write_one(*job)`` for every job, over a process pool when there is enough work,
    reporting progress; returns the rows sorted by their ``index``."""
    videos = len(jobs)
    if workers is None:
        workers = max(1, min(os.cpu_count() or 1, videos // 16))
    start = time.perf_counter()
    rows: list[dict] = []
    step = max(1, videos // 10)

    def done(row: dict) -> None:
        rows.append(row)
        console.tick("corpus", done=len(rows))
        if progress is not None and (len(rows) % step == 0 or len(rows) == videos):
            elapsed = time.perf_counter() - start
            progress(f"{len(rows)}/{videos} videos ({elapsed:.1f} s, {len(rows) / max(elapsed, 1e-9):.1f} videos/s)")

    if workers <= 1 or videos <= 1:
        for job in jobs:
            done(write_one(*job))
    else:
        # spawn, not fork: callers may already run threads (Ray, torch) that fork would copy mid-lock.
        context = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for row in pool.map(write_one, *zip(*jobs), chunksize=max(1, videos // (workers * 8))):
                done(row)
    return sorted(rows, key=lambda r: r["index"])


def plan_corpus(
    videos: int, seed: int, *, duration_s: float = 4.0, size: int = 96, fps: int = 24, sample_rate: int = 22050
) -> list[VideoSpec]:
    """The specs of a corpus, without writing anything (cheap; the corpus is a function of them)."""
    labels = np.random.default_rng([seed, 0x1AB]).permutation(np.arange(videos) % len(CLASSES))
    by_class = _indices_by_class()
    return [
        draw_spec(seed, i, int(labels[i]), by_class, duration_s=duration_s, size=size, fps=fps, sample_rate=sample_rate)
        for i in range(videos)
    ]


def draw_spec(
    seed: int,
    index: int,
    digit: int,
    by_class: dict[int, np.ndarray],
    *,
    duration_s: float,
    size: int,
    fps: int,
    sample_rate: int,
) -> VideoSpec:
    """Draw video ``index``'s random choices from ``(seed, index)`` only."""
    rng = np.random.default_rng([seed, index])
    digit_index = int(rng.choice(by_class[digit]))
    digit_px = int(round(size * rng.uniform(0.55, 0.75)))
    room = size - digit_px
    speed = rng.uniform(0.08, 0.35) * size  # pixels per second
    angle = rng.uniform(0, 2 * math.pi)
    bg = rng.uniform(0.08, 0.92, 3)
    fg = _contrasting_colour(rng, bg)
    detune = 1 + rng.uniform(-0.03, 0.03)
    f1, f2 = TONES[digit]
    return VideoSpec(
        index=index,
        label=str(digit),
        digit_index=digit_index,
        duration_s=float(duration_s),
        size=int(size),
        fps=int(fps),
        sample_rate=int(sample_rate),
        digit_px=digit_px,
        x0=float(rng.uniform(0, room)),
        y0=float(rng.uniform(0, room)),
        vx=float(speed * math.cos(angle)),
        vy=float(speed * math.sin(angle)),
        video_onset_s=float(rng.uniform(0, MAX_ONSET_S)) if rng.random() < 0.5 else 0.0,
        fg_rgb=tuple(float(c) for c in fg),
        bg_rgb=tuple(float(c) for c in bg),
        blob_amplitude=float(rng.uniform(0.03, 0.12)),
        grain=float(rng.uniform(0.01, 0.04)),
        frame_noise=float(rng.uniform(0.005, 0.02)),
        f1=float(f1 * detune * (1 + rng.uniform(-0.01, 0.01))),
        f2=float(f2 * detune * (1 + rng.uniform(-0.01, 0.01))),
        harmonics=(float(rng.uniform(0, 0.35)), float(rng.uniform(0, 0.2)), float(rng.uniform(0, 0.1))),
        balance=float(rng.uniform(0.7, 1.3)),
        audio_onset_s=float(rng.uniform(0, MAX_ONSET_S)) if rng.random() < 0.5 else 0.0,
        level=float(rng.uniform(0.3, 0.8)),
        snr_db=float(rng.uniform(8, 25)),
        noise_seed=int(rng.integers(2**63)),
    )


def digit_position(spec: VideoSpec, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer top-left corner (top, left) of the digit at times ``t``: straight lines bouncing off the edges."""
    room = spec.size - spec.digit_px
    t = np.asarray(t, dtype=np.float64)
    return _bounce(spec.y0 + spec.vy * t, room), _bounce(spec.x0 + spec.vx * t, room)


def digit_visibility(spec: VideoSpec, t: np.ndarray) -> np.ndarray:
    """0..1 opacity of the digit at times ``t`` (0 before the onset, a 0.15 s fade in)."""
    return np.clip((np.asarray(t, dtype=np.float64) - spec.video_onset_s) / 0.15, 0.0, 1.0)


def render_frames(
    spec: VideoSpec, digit: np.ndarray, layers: Callable[[np.ndarray, int], None] | None = None
) -> np.ndarray:
    """uint8 ``[N, size, size, 3]`` frames of the video; ``digit`` is the 8x8 load_digits image (0..16).
    ``layers(frame, i)``, if given, paints on frame ``i`` (float RGB in place) under the digit."""
    rng = np.random.default_rng([spec.noise_seed, 1])
    n = int(round(spec.duration_s * spec.fps))
    s = spec.size
    background = np.empty((s, s, 3), np.float32)
    background[:] = np.asarray(spec.bg_rgb, np.float32)
    background += spec.blob_amplitude * _blobs(rng, s)
    background += spec.grain * rng.standard_normal((s, s, 3), dtype=np.float32)
    alpha = np.clip(_upscale(digit.astype(np.float32) / 16.0, spec.digit_px) * 1.15, 0.0, 1.0)[..., None]
    fg = np.asarray(spec.fg_rgb, np.float32)
    t = np.arange(n) / spec.fps
    tops, lefts = digit_position(spec, t)
    visible = digit_visibility(spec, t)
    frames = np.empty((n, s, s, 3), np.uint8)
    noise = rng.integers(-255, 256, (n, s, s, 3), dtype=np.int16).astype(np.float32) * (
        spec.frame_noise * math.sqrt(3) / 255
    )
    for i in range(n):
        frame = background + noise[i]
        if layers is not None:
            layers(frame, i)
        if visible[i] > 0:
            a = alpha * np.float32(visible[i])
            y, x = tops[i], lefts[i]
            patch = frame[y : y + spec.digit_px, x : x + spec.digit_px]
            patch += a * (fg - patch)
        frames[i] = np.clip(frame * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return frames


def render_audio(spec: VideoSpec) -> np.ndarray:
    """float32 ``[S]`` mono soundtrack in [-1, 1] at ``spec.sample_rate``."""
    rng = np.random.default_rng([spec.noise_seed, 2])
    sr = spec.sample_rate
    total = int(round(spec.duration_s * sr))
    signal = np.zeros(total, np.float64)
    nyquist_guard = 0.45 * min(sr, 16_000)  # keep harmonics below the pipeline's 16 kHz Nyquist
    weights = (1.0,) + spec.harmonics
    t = spec.audio_onset_s
    while t < spec.duration_s:
        length = rng.uniform(0.10, 0.35)
        start, stop = int(t * sr), min(total, int((t + length) * sr))
        if stop - start > 8:
            k = np.arange(stop - start) / sr
            jitter = 1 + rng.uniform(-0.007, 0.007)
            beep = np.zeros(stop - start)
            for f, gain in ((spec.f1, 1.0), (spec.f2, spec.balance)):
                phase = rng.uniform(0, 2 * math.pi, len(weights))
                for h, (w, p) in enumerate(zip(weights, phase), start=1):
                    if w > 0 and h * f * jitter < nyquist_guard:
                        beep += gain * w * np.sin(2 * math.pi * h * f * jitter * k + p)
            attack = rng.uniform(0.005, 0.025)
            decay = rng.uniform(0.08, 0.6)
            release = min(0.01, k[-1] / 2)
            envelope = np.minimum(1.0, k / attack) * np.exp(-k / decay) * np.clip((k[-1] - k) / release, 0.0, 1.0)
            signal[start:stop] += rng.uniform(0.8, 1.2) * envelope * beep
        t += length + rng.uniform(0.04, 0.25)
    peak = np.abs(signal).max()
    if peak > 0:
        signal *= spec.level / peak
    rms = math.sqrt(float(np.mean(signal[int(spec.audio_onset_s * sr) :] ** 2)) or 1e-6)
    white = rng.standard_normal(total)
    brown = np.cumsum(rng.standard_normal(total))
    brown -= _moving_average(brown, 256)  # a high-pass: no DC drift
    brown /= brown.std() or 1.0
    noise = 0.6 * white + 0.8 * brown
    noise *= rms * 10 ** (-spec.snr_db / 20) / (noise.std() or 1.0)
    return np.clip(signal + noise, -1.0, 1.0).astype(np.float32)


def write_video(spec: VideoSpec, digit: np.ndarray, path: str | os.PathLike) -> None:
    """Render and encode one demo video (H.264 + AAC mp4)."""
    write_media(
        path,
        frames=render_frames(spec, digit),
        audio=render_audio(spec),
        fps=spec.fps,
        sample_rate=spec.sample_rate,
        video_options={**VIDEO_OPTIONS, "g": str(max(1, round(KEYFRAME_INTERVAL_S * spec.fps)))},
        audio_options=AUDIO_OPTIONS,
        audio_bit_rate=AUDIO_BIT_RATE,
    )


def _write_one(spec: VideoSpec, digit: np.ndarray, path: str) -> dict:
    write_video(spec, digit, path)
    return {"path": path, **asdict(spec)}


@functools.lru_cache(maxsize=1)
def _digits():
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    data = load_digits()
    return data.images.astype(np.float32), data.target.astype(np.int64)


def _digit_images() -> np.ndarray:
    return _digits()[0]


def _indices_by_class() -> dict[int, np.ndarray]:
    targets = _digits()[1]
    return {d: np.flatnonzero(targets == d) for d in range(10)}


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    """Centred running mean (edges: mean of the part of the window inside ``x``)."""
    c = np.concatenate([[0.0], np.cumsum(x)])
    lo = np.clip(np.arange(len(x)) - width // 2, 0, len(x))
    hi = np.clip(np.arange(len(x)) + (width + 1) // 2, 0, len(x))
    return (c[hi] - c[lo]) / (hi - lo)


def _blobs(rng: np.random.Generator, size: int, waves: int = 4) -> np.ndarray:
    """Smooth colour shading ``[size, size, 3]`` with unit std: a few random low-frequency plane waves per channel."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.zeros((size, size, 3), np.float32)
    for c in range(3):
        for _ in range(waves):
            u, v = rng.uniform(-2.0, 2.0, 2)
            out[..., c] += np.cos(2 * np.pi * (u * x + v * y) + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    return out / (out.std() or 1.0)


def _bounce(x: np.ndarray, room: int) -> np.ndarray:
    if room <= 0:
        return np.zeros(np.shape(x), np.int64)
    m = np.mod(x, 2 * room)
    return np.rint(room - np.abs(m - room)).astype(np.int64)


def _luma(rgb: np.ndarray) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def _contrasting_colour(rng: np.random.Generator, bg: np.ndarray) -> np.ndarray:
    """A random colour whose luma differs from ``bg``'s by at least 0.35."""
    lo, hi = _luma(bg) - 0.35, _luma(bg) + 0.35
    for _ in range(100):
        fg = rng.uniform(0, 1, 3)
        if _luma(fg) <= lo or _luma(fg) >= hi:
            return fg
    return np.zeros(3) if hi > 1 else np.ones(3)


@functools.lru_cache(maxsize=64)
def _cubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] bicubic (Keys, a = -0.5) interpolation weights, edges clamped, rows sum to 1."""
    x = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    base = np.floor(x).astype(int)
    weights = np.zeros((n_out, n_in), np.float64)
    for offset in range(-1, 3):
        d = np.abs(x - (base + offset))
        w = np.where(d <= 1, 1.5 * d**3 - 2.5 * d**2 + 1, np.where(d < 2, -0.5 * d**3 + 2.5 * d**2 - 4 * d + 2, 0.0))
        np.add.at(weights, (np.arange(n_out), np.clip(base + offset, 0, n_in - 1)), w)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def _upscale(image: np.ndarray, size: int) -> np.ndarray:
    """Smooth (bicubic) resize of a square ``[h, w]`` or ``[h, w, c]`` image to ``size`` x ``size``."""
    rows = _cubic_matrix(image.shape[0], size)
    cols = _cubic_matrix(image.shape[1], size)
    return np.einsum("ij,jk...,lk->il...", rows, image, cols)


def prepared_demo_clips(workdir: Path, videos: int, cfg, seed: int = 0) -> Path:
    """``workdir/prepared``: the clips of a ``videos``-video demo corpus (``workdir/corpus``),
    prepared for ``cfg`` (a DataConfig); both reused when a previous run left them complete.
    What the benchmarks train on."""
    from avray.data.pipeline import prepare
    from avray.data.shards import PREPARED_MARKER

    corpus, prepared = workdir / "corpus", workdir / "prepared"
    if not (corpus / ".complete").exists():
        console.say(f"generating {videos} demo videos ...")
        make_demo_corpus(corpus, videos=videos, seed=seed)
        (corpus / ".complete").touch()
    if not (prepared / PREPARED_MARKER).exists():
        prepare(str(corpus), str(prepared), cfg)
    return prepared
