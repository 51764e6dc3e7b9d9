"""The spoken-digit corpus: a hard demo, where only the digit links what is seen and heard.

Each video (H.264 + AAC, ``output/<class>/<name>.mp4``, classes ``"0"``..``"9"``) shows a
real handwritten digit (scikit-learn's ``load_digits`` scans, as in :mod:`avray.demo.corpus`)
moving over clutter, while a voice says **the same digit** again and again:

sound
    the digit spoken by eSpeak NG (:mod:`avray.demo.speech`) in one of several languages
    (English, German, French, Spanish, Italian, Dutch, Portuguese: ten words a language),
    voices (male and female variants), speaking rates and pitches, each utterance varied
    in rate, pitch and level, separated by random pauses; through a random room (reverb
    of random length and mix), a random tilt of the spectrum, with a per-video noise floor
    (white, pink or brown at a random SNR), room tone (mains hum at 50 or 60 Hz with its
    harmonics, and a steady drone at a random pitch), loudness, and stereo balance.
picture
    the digit in a random colour, size and motion as in the tone corpus, over a background
    of random colour, smooth blobs and a random texture (stripes or checks) under a colour
    cast, with one to four distractor shapes (discs, squares, rings, bars) of random
    colours moving across it, and per-frame noise and flicker.

Every cue but the digit (voice, language, room, noise, loudness, colours, texture,
distractors) is drawn per video independently of the class and of the other stream: a model
that matches a video's two streams by such cues learns nothing of the digit, and a
random-weight audio encoder probes near chance (the tone corpus's clean tones probe at 0.98).
Every 2-s window holds at least one whole utterance and shows the digit.

Every random choice is a function of ``(seed, index)``, and so are the pictures, byte for
byte; the voice's samples vary slightly between runs (see :mod:`avray.demo.speech`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.signal import fftconvolve, lfilter, resample_poly

from avray.demo.corpus import (
    AUDIO_BIT_RATE,
    AUDIO_OPTIONS,
    CLASSES,
    KEYFRAME_INTERVAL_S,
    MAX_ONSET_S,
    VIDEO_OPTIONS,
    VideoSpec,
    _digit_images,
    _indices_by_class,
    draw_spec,
    make_demo_corpus,
    render_frames,
    write_corpus,
)
from avray.demo.media import write_media
from avray.demo.speech import SAMPLE_RATE as SPEECH_RATE
from avray.demo.speech import Speaker

LANGUAGES = ("en", "de", "fr", "es", "it", "nl", "pt")
VOICE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
SHAPES = ("disc", "square", "ring", "bar")
MAX_PAUSE_S = 0.5  # with utterances of at most ~0.8 s, every 2-s window holds a whole one


@dataclass(frozen=True)
class Distractor:
    shape: str
    rgb: tuple[float, float, float]
    radius: float  # pixels
    x0: float
    y0: float
    vx: float  # pixels per second
    vy: float


@dataclass(frozen=True)
class SpokenSpec:
    """Every random choice behind one spoken-digit video. ``picture``: the digit's look and
    motion (only the picture fields of the tone corpus's :class:`VideoSpec` are used)."""

    index: int
    label: str
    picture: VideoSpec
    sample_rate: int
    # sound
    language: str
    voice: str  # eSpeak NG voice, language+variant
    rate: int  # words per minute
    pitch: int
    pitch_range: int
    audio_onset_s: float
    level: float  # peak amplitude
    snr_db: float
    noise_colour: float  # spectral slope exponent: 0 white, 1 pink, 2 brown
    hum_hz: float
    hum_level: float  # relative to the speech's RMS
    drone_hz: float
    drone_level: float
    reverb_s: float  # decay time to -60 dB
    reverb_mix: float
    tilt: float  # one-pole filter coefficient: < 0 brighter, > 0 darker
    balance: float  # left/right gain ratio
    # picture
    texture: str
    texture_period: float  # pixels
    texture_angle: float
    texture_amplitude: float
    cast_rgb: tuple[float, float, float]
    flicker: float
    distractors: tuple[Distractor, ...]
    noise_seed: int


def make_spoken_corpus(
    output_dir: str | os.PathLike,
    videos: int,
    seed: int,
    *,
    duration_s: float = 4.0,
    size: int = 96,
    fps: int = 12,
    sample_rate: int = 44_100,
    progress: Callable[[str], None] | None = None,
    workers: int | None = None,
) -> list[dict]:
    """Write ``videos`` spoken-digit mp4s (stereo AAC) under ``output_dir/<class>/`` and return
    one row per video: ``path``, ``label`` and every field of :class:`SpokenSpec`. Classes are
    balanced; ``workers`` and ``progress`` as for :func:`avray.demo.corpus.make_demo_corpus`."""
    if videos < 0:
        raise ValueError(f"videos must be >= 0, got {videos}")
    if duration_s < 2.0 + MAX_ONSET_S:
        raise ValueError(f"duration_s must be >= {2.0 + MAX_ONSET_S:g} (one 2-s clip after the onset)")
    output = Path(output_dir)
    images = _digit_images()
    specs = plan_spoken_corpus(videos, seed, duration_s=duration_s, size=size, fps=fps, sample_rate=sample_rate)
    jobs = [
        (spec, images[spec.picture.digit_index], str(output / spec.label / f"spoken_{spec.index:05d}.mp4"))
        for spec in specs
    ]
    return write_corpus(_write_one, jobs, progress, workers)


def plan_spoken_corpus(
    videos: int, seed: int, *, duration_s: float = 4.0, size: int = 96, fps: int = 12, sample_rate: int = 44_100
) -> list[SpokenSpec]:
    labels = np.random.default_rng([seed, 0x5B0]).permutation(np.arange(videos) % len(CLASSES))
    by_class = _indices_by_class()
    return [
        draw_spoken_spec(
            seed, i, int(labels[i]), by_class, duration_s=duration_s, size=size, fps=fps, sample_rate=sample_rate
        )
        for i in range(videos)
    ]


def draw_spoken_spec(
    seed: int,
    index: int,
    digit: int,
    by_class: dict[int, np.ndarray],
    *,
    duration_s: float,
    size: int,
    fps: int,
    sample_rate: int,
) -> SpokenSpec:
    """Video ``index``'s random choices, from ``(seed, index)`` only."""
    picture = draw_spec(
        seed, index, digit, by_class, duration_s=duration_s, size=size, fps=fps, sample_rate=sample_rate
    )
    rng = np.random.default_rng([seed, index, 0x5B0])
    language = str(rng.choice(LANGUAGES))
    return SpokenSpec(
        index=index,
        label=str(digit),
        picture=picture,
        sample_rate=int(sample_rate),
        language=language,
        voice=f"{language}+{rng.choice(VOICE_VARIANTS)}",
        rate=int(rng.integers(130, 221)),
        pitch=int(rng.integers(20, 81)),
        pitch_range=int(rng.integers(20, 81)),
        audio_onset_s=float(rng.uniform(0, MAX_ONSET_S)) if rng.random() < 0.5 else 0.0,
        level=float(rng.uniform(0.1, 0.9)),
        snr_db=float(rng.uniform(6, 30)),
        noise_colour=float(rng.choice([0.0, 1.0, 2.0])),
        hum_hz=float(rng.choice([50.0, 60.0])),
        hum_level=float(rng.uniform(0, 0.3)),
        drone_hz=float(np.exp(rng.uniform(np.log(150), np.log(3000)))),
        drone_level=float(rng.uniform(0, 0.2)),
        reverb_s=float(rng.uniform(0.1, 0.8)),
        reverb_mix=float(rng.uniform(0.0, 0.5)),
        tilt=float(rng.uniform(-0.6, 0.8)),
        balance=float(rng.uniform(0.5, 2.0)),
        texture=str(rng.choice(["stripes", "checks", "none"])),
        texture_period=float(rng.uniform(4, 24)),
        texture_angle=float(rng.uniform(0, math.pi)),
        texture_amplitude=float(rng.uniform(0.03, 0.15)),
        cast_rgb=tuple(float(c) for c in rng.uniform(0.7, 1.0, 3)),
        flicker=float(rng.uniform(0, 0.05)),
        distractors=tuple(_draw_distractor(rng, size) for _ in range(int(rng.integers(1, 5)))),
        noise_seed=int(rng.integers(2**63)),
    )


def _draw_distractor(rng: np.random.Generator, size: int) -> Distractor:
    speed, angle = rng.uniform(0.1, 0.5) * size, rng.uniform(0, 2 * math.pi)
    return Distractor(
        shape=str(rng.choice(SHAPES)),
        rgb=tuple(float(c) for c in rng.uniform(0, 1, 3)),
        radius=float(rng.uniform(0.06, 0.16) * size),
        x0=float(rng.uniform(0, size)),
        y0=float(rng.uniform(0, size)),
        vx=float(speed * math.cos(angle)),
        vy=float(speed * math.sin(angle)),
    )


def render_spoken_frames(spec: SpokenSpec, digit: np.ndarray) -> np.ndarray:
    """uint8 ``[N, size, size, 3]``: the tone corpus's moving digit over this spec's clutter."""
    picture = spec.picture
    s = picture.size
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    phase = 2 * np.pi * (x * math.cos(spec.texture_angle) + y * math.sin(spec.texture_angle)) / spec.texture_period
    if spec.texture == "stripes":
        texture = np.sin(phase)
    elif spec.texture == "checks":
        other = 2 * np.pi * (-x * math.sin(spec.texture_angle) + y * math.cos(spec.texture_angle)) / spec.texture_period
        texture = np.sign(np.sin(phase) * np.sin(other))
    else:
        texture = np.zeros_like(x)
    texture = (spec.texture_amplitude * texture)[..., None].astype(np.float32)
    cast = np.asarray(spec.cast_rgb, np.float32)
    flicker = 1 + spec.flicker * np.random.default_rng([spec.noise_seed, 3]).standard_normal(
        int(round(picture.duration_s * picture.fps))
    )

    def clutter(frame: np.ndarray, i: int) -> None:
        frame += texture
        t = i / picture.fps
        for d in spec.distractors:
            cx, cy = _wrap(d.x0 + d.vx * t, s), _wrap(d.y0 + d.vy * t, s)
            mask = _shape_mask(d, x - cx, y - cy)
            frame[mask] = d.rgb
        frame *= cast * np.float32(flicker[i])

    return render_frames(picture, digit, clutter)


def utterances(spec: SpokenSpec, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """The dry voice track float64 [S] at ``spec.sample_rate``, and each utterance's (start,
    stop) in seconds: the digit said again and again, each time at a slightly different rate,
    pitch and level, with random pauses."""
    sr = spec.sample_rate
    total = int(round(spec.picture.duration_s * sr))
    speech = np.zeros(total, np.float64)
    spans = []
    t = spec.audio_onset_s
    with Speaker() as speak:
        while t < spec.picture.duration_s:
            word = speak(
                spec.label,
                spec.voice,
                rate=int(spec.rate * rng.uniform(0.9, 1.1)),
                pitch=int(np.clip(spec.pitch + rng.integers(-8, 9), 0, 100)),
                pitch_range=spec.pitch_range,
            )
            word = resample_poly(word, sr, SPEECH_RATE) * rng.uniform(0.6, 1.0)
            start = int(t * sr)
            stop = min(total, start + len(word))
            speech[start:stop] += word[: stop - start]
            spans.append((start / sr, stop / sr))
            t += len(word) / sr + rng.uniform(0.1, MAX_PAUSE_S)
    return speech, spans


def render_spoken_audio(spec: SpokenSpec) -> np.ndarray:
    """float32 ``[2, S]`` stereo soundtrack in [-1, 1] at ``spec.sample_rate``."""
    rng = np.random.default_rng([spec.noise_seed, 2])
    sr = spec.sample_rate
    total = int(round(spec.picture.duration_s * sr))
    speech, _ = utterances(spec, rng)
    tail = int(spec.reverb_s * sr)
    room = rng.standard_normal(tail) * np.exp(-6.9 * np.arange(tail) / tail)  # -60 dB at reverb_s
    wet = fftconvolve(speech, room)[:total]
    speech = (1 - spec.reverb_mix) * speech + spec.reverb_mix * wet * (np.std(speech) / (np.std(wet) or 1.0))
    speech = lfilter([1 - abs(spec.tilt)], [1, -spec.tilt], speech)
    speech /= np.abs(speech).max() or 1.0
    rms = math.sqrt(float(np.mean(speech**2)) or 1e-6)
    k = np.arange(total) / sr
    hum = sum(np.sin(2 * np.pi * h * spec.hum_hz * k + rng.uniform(0, 2 * np.pi)) / h for h in (1, 2, 3))
    drone = np.sin(2 * np.pi * spec.drone_hz * k)
    floor = _coloured_noise(rng, total, spec.noise_colour) * rms * 10 ** (-spec.snr_db / 20)
    mix = speech + rms * (spec.hum_level * hum / 1.5 + spec.drone_level * drone) + floor
    mix *= spec.level / (np.abs(mix).max() or 1.0)
    left, right = mix * min(1.0, spec.balance), mix * min(1.0, 1 / spec.balance)
    return np.clip(np.stack([left, right]), -1.0, 1.0).astype(np.float32)


def _coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Unit-std noise whose power falls as 1/f**exponent."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1]
    noise = np.fft.irfft(spectrum / f ** (exponent / 2), n)
    return noise / (noise.std() or 1.0)


def _wrap(value: float, size: int) -> float:
    return float(np.mod(value, size))


def _shape_mask(d: Distractor, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    r = d.radius
    if d.shape == "disc":
        return dx**2 + dy**2 <= r**2
    if d.shape == "ring":
        return np.abs(np.sqrt(dx**2 + dy**2) - 0.8 * r) <= 0.25 * r
    if d.shape == "square":
        return (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r)
    return (np.abs(dx) <= 1.4 * r) & (np.abs(dy) <= 0.25 * r)


def _write_one(spec: SpokenSpec, digit: np.ndarray, path: str) -> dict:
    write_media(
        path,
        frames=render_spoken_frames(spec, digit),
        audio=render_spoken_audio(spec),
        fps=spec.picture.fps,
        sample_rate=spec.sample_rate,
        video_options={**VIDEO_OPTIONS, "g": str(max(1, round(KEYFRAME_INTERVAL_S * spec.picture.fps)))},
        audio_options=AUDIO_OPTIONS,
        audio_bit_rate=2 * AUDIO_BIT_RATE,
    )
    return {"path": path, **asdict(spec)}


# The demo corpora by name: what workflows/make_demo_corpus.py --kind and demo.py --corpus take.
CORPORA = {"spoken": make_spoken_corpus, "tones": make_demo_corpus}
