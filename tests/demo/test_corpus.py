"""The demo corpus: layout, real streams, determinism, and the digit in both picture and sound."""

import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
from sklearn.datasets import load_digits

from avray.demo.corpus import (
    CLASSES,
    TONES,
    VideoSpec,
    digit_position,
    digit_visibility,
    make_demo_corpus,
    plan_corpus,
)

ROOT = Path(__file__).resolve().parents[2]
VIDEOS, SEED = 20, 3
# What the pipeline makes of a clip (docs/design.md): 2-s windows, 8 fps, 16 kHz.
CLIP_S, CLIP_FPS, RATE = 2.0, 8, 16_000
WINDOW_STARTS = (0.0, 0.5, 1.0, 1.5, 2.0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    messages = []
    rows = make_demo_corpus(root, VIDEOS, SEED, workers=1, progress=messages.append)
    return root, rows, messages


def spec_of(row) -> VideoSpec:
    fields = VideoSpec.__dataclass_fields__
    return VideoSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in row.items() if k in fields})


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_folder_per_class_layout(corpus):
    root, rows, messages = corpus
    assert len(rows) == VIDEOS
    for row in rows:
        path = Path(row["path"])
        assert path.parent == root / row["label"] and path.suffix == ".mp4" and path.exists()
    assert Counter(r["label"] for r in rows) == {c: VIDEOS // 10 for c in CLASSES}
    assert sorted(str(p) for p in root.rglob("*") if p.is_file()) == sorted(r["path"] for r in rows)
    assert messages and messages[-1].startswith(f"{VIDEOS}/{VIDEOS} videos")


def test_files_are_real_h264_aac_mp4s(corpus):
    _, rows, _ = corpus
    for row in rows:
        size = Path(row["path"]).stat().st_size
        assert 5_000 < size < 60_000, size  # tens of kB
        with av.open(row["path"]) as c:
            v, a = c.streams.video[0], c.streams.audio[0]
            assert c.format.name.startswith("mov,mp4")
            assert (v.codec_context.name, v.codec_context.width, v.codec_context.height) == ("h264", 96, 96)
            assert v.codec_context.pix_fmt == "yuv420p" and v.average_rate == 24
            assert (a.codec_context.name, a.codec_context.sample_rate, a.codec_context.channels) == ("aac", 22050, 1)
            assert c.duration / av.time_base == pytest.approx(4.0, abs=0.05)
            assert abs(sum(1 for _ in c.decode(video=0)) - 96) <= 1


def test_same_seed_same_bytes_even_in_a_process_pool(corpus, tmp_path):
    root, rows, _ = corpus
    again = make_demo_corpus(tmp_path / "again", VIDEOS, SEED, workers=2)
    assert [Path(r["path"]).relative_to(tmp_path / "again") for r in again] == [
        Path(r["path"]).relative_to(root) for r in rows
    ]
    for first, second in zip(rows, again):
        assert digest(first["path"]) == digest(second["path"]), first["path"]
        assert {k: v for k, v in first.items() if k != "path"} == {k: v for k, v in second.items() if k != "path"}


def test_another_seed_gives_other_videos(corpus, tmp_path):
    _, rows, _ = corpus
    other = make_demo_corpus(tmp_path / "other", 10, SEED + 1, workers=1)
    assert not {digest(r["path"]) for r in other} & {digest(r["path"]) for r in rows}
    assert [r["digit_index"] for r in other] != [r["digit_index"] for r in rows[:10]]


def decode_audio(path) -> np.ndarray:
    """Mono float32 at 16 kHz, as the pipeline resamples it."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
    chunks = []
    with av.open(path) as c:
        for frame in c.decode(audio=0):
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(chunks)


def tone_class(window: np.ndarray) -> int:
    """The keypad digit whose tone pair is nearest the strongest peak in each DTMF band."""
    spectrum = np.abs(np.fft.rfft(window * np.hanning(len(window))))
    freqs = np.fft.rfftfreq(len(window), 1 / RATE)

    def peak(lo, hi):
        band = (freqs >= lo) & (freqs <= hi)
        return freqs[band][np.argmax(spectrum[band])]

    low, high = peak(640, 1000), peak(1150, 1560)
    return min(TONES, key=lambda d: abs(np.log(TONES[d][0] / low)) + abs(np.log(TONES[d][1] / high)))


def test_every_window_is_audible_and_its_tones_name_the_digit(corpus):
    _, rows, _ = corpus
    right = total = 0
    for row in rows:
        audio = decode_audio(row["path"])
        for start in WINDOW_STARTS:
            window = audio[int(start * RATE) : int((start + CLIP_S) * RATE)]
            assert len(window) == CLIP_S * RATE
            assert np.sqrt(np.mean(window**2)) > 0.02, (row["path"], start)
            right += tone_class(window) == int(row["label"])
            total += 1
    assert right / total >= 0.9, right / total


@pytest.fixture(scope="module")
def digit_bank():
    data = load_digits()
    bank = data.images.reshape(len(data.images), -1).astype(np.float64)
    bank -= bank.mean(axis=1, keepdims=True)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    return bank, data.target


def to_8x8(alpha: np.ndarray) -> np.ndarray:
    """Area-average a square crop down to load_digits' 8x8 grid."""
    cells = np.arange(alpha.shape[0]) * 8 // alpha.shape[0]
    total, count = np.zeros((8, 8)), np.zeros((8, 8))
    np.add.at(total, (cells[:, None], cells[None, :]), alpha)
    np.add.at(count, (cells[:, None], cells[None, :]), 1)
    return total / count


def test_every_window_shows_the_digit_and_it_reads_as_its_class(corpus, digit_bank):
    """Crop where the spec says the digit is, at the pipeline's 8 fps: a digit is there, and it is the right one."""
    _, rows, _ = corpus
    bank, targets = digit_bank
    right = total = 0
    for row in rows:
        spec = spec_of(row)
        with av.open(row["path"]) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        fg, bg = np.array(spec.fg_rgb) * 255, np.array(spec.bg_rgb) * 255
        times = np.arange(0, spec.duration_s, 1 / CLIP_FPS)
        tops, lefts = digit_position(spec, times)
        shown = {}
        for t, top, left, visible in zip(times, tops, lefts, digit_visibility(spec, times)):
            crop = frames[int(round(t * spec.fps))][top : top + spec.digit_px, left : left + spec.digit_px].astype(
                float
            )
            alpha = (crop - bg) @ (fg - bg) / np.dot(fg - bg, fg - bg)  # 0 on the background, 1 on the ink
            shown[t] = (alpha > 0.5).mean() > 0.1
            if visible == 1:
                q = to_8x8(alpha).ravel()
                q = (q - q.mean()) / (np.linalg.norm(q - q.mean()) + 1e-9)
                right += targets[np.argmax(bank @ q)] == int(row["label"])
                total += 1
        for start in WINDOW_STARTS:
            in_window = [shown[t] for t in times if start <= t < start + CLIP_S]
            assert np.mean(in_window) >= 0.6, (row["path"], start, in_window)
    assert right / total >= 0.8, right / total


def eta_squared(values: np.ndarray, labels: np.ndarray) -> float:
    """Share of a variable's variance explained by the class (0 when independent of it)."""
    total = ((values - values.mean()) ** 2).sum()
    between = sum((labels == c).sum() * (values[labels == c].mean() - values.mean()) ** 2 for c in np.unique(labels))
    return between / total


def test_nothing_but_the_digit_depends_on_the_class():
    specs = plan_corpus(3000, seed=0)
    labels = np.array([int(s.label) for s in specs])
    assert np.bincount(labels).tolist() == [300] * 10
    for s in specs:
        f1, f2 = TONES[int(s.label)]
        assert abs(s.f1 / f1 - 1) < 0.041 and abs(s.f2 / f2 - 1) < 0.041
    nuisances = {
        name: np.array([getattr(s, name) for s in specs], float)
        for name in (
            "digit_px",
            "x0",
            "y0",
            "vx",
            "vy",
            "video_onset_s",
            "blob_amplitude",
            "grain",
            "frame_noise",
            "balance",
            "audio_onset_s",
            "level",
            "snr_db",
        )
    }
    for i in range(3):
        nuisances[f"fg_rgb[{i}]"] = np.array([s.fg_rgb[i] for s in specs])
        nuisances[f"bg_rgb[{i}]"] = np.array([s.bg_rgb[i] for s in specs])
        nuisances[f"harmonics[{i}]"] = np.array([s.harmonics[i] for s in specs])
    # Independent of a 10-class label, eta^2 is about 9 / 2999 = 0.003.
    for name, values in nuisances.items():
        assert eta_squared(values, labels) < 0.015, name
    # Picture and sound onsets are independent of each other too (no shared timing cue).
    assert abs(np.corrcoef(nuisances["video_onset_s"], nuisances["audio_onset_s"])[0, 1]) < 0.06


def test_rejects_what_cannot_make_a_clip(tmp_path):
    with pytest.raises(ValueError, match="duration_s"):
        make_demo_corpus(tmp_path, 2, 0, duration_s=2.0)
    with pytest.raises(ValueError, match="videos"):
        make_demo_corpus(tmp_path, -1, 0)


def test_cli_from_the_repo_root(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "workflows/make_demo_corpus.py",
            "--output",
            str(tmp_path / "cli"),
            "--videos",
            "3",
            "--seed",
            "1",
            "--duration",
            "2.6",
            "--workers",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "3/3 videos" in out.stdout and "videos per class" in out.stdout and "ms per video" in out.stdout
    assert len(list((tmp_path / "cli").rglob("*.mp4"))) == 3
