"""The spoken-digit corpus: layout, real streams, determinism, a whole utterance in every clip
window, and incidental cues drawn independently of the class."""

from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
from scipy.stats import chi2_contingency, f_oneway

from avray.demo.corpus import CLASSES
from avray.demo.speech import SAMPLE_RATE, SpeechError, synthesize
from avray.demo.spoken import LANGUAGES, make_spoken_corpus, plan_spoken_corpus, render_spoken_audio, utterances

VIDEOS, SEED = 10, 5
WINDOW_S = 2.0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("spoken")
    return root, make_spoken_corpus(root, VIDEOS, SEED, workers=1)


def test_layout_and_balanced_classes(corpus):
    root, rows = corpus
    assert Counter(r["label"] for r in rows) == {c: 1 for c in CLASSES}
    for row in rows:
        path = Path(row["path"])
        assert path.parent == root / row["label"] and path.suffix == ".mp4"


def test_streams_are_h264_and_stereo_aac(corpus):
    _, rows = corpus
    with av.open(rows[0]["path"]) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and (video.width, video.height) == (96, 96)
        assert float(video.average_rate) == 12
        assert audio.codec_context.name == "aac" and audio.rate == 44_100 and audio.channels == 2
        assert float(container.duration / av.time_base) == pytest.approx(4.0, abs=0.2)


def test_same_seed_same_videos(corpus, tmp_path):
    """Every random choice and every picture are a function of the seed. (The voice's samples
    can differ slightly between runs: eSpeak NG reads memory it has not initialised.)"""
    _, rows = corpus
    again = make_spoken_corpus(tmp_path, VIDEOS, SEED, workers=2)
    strip = lambda row: {k: v for k, v in row.items() if k != "path"}  # noqa: E731
    assert [strip(r) for r in again] == [strip(r) for r in rows]
    for first, second in zip(rows[:3], again[:3]):
        assert np.array_equal(decoded_frames(first["path"]), decoded_frames(second["path"]))


def decoded_frames(path):
    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_every_clip_window_holds_a_whole_utterance():
    for spec in plan_spoken_corpus(30, SEED):
        _, spans = utterances(spec, np.random.default_rng(0))
        for start in np.arange(0, spec.picture.duration_s - WINDOW_S + 1e-9, 0.25):
            assert any(start <= a and b <= start + WINDOW_S for a, b in spans), (spec.voice, spec.rate, start)


def test_the_voice_says_the_digit_in_each_language():
    words = {lang: [synthesize(str(d), lang) for d in range(10)] for lang in LANGUAGES}
    for lang, spoken in words.items():
        assert all(0.1 * SAMPLE_RATE < len(w) < 1.0 * SAMPLE_RATE for w in spoken), lang
        assert len({len(w) for w in spoken}) > 3  # ten different words, not one sound
    with pytest.raises(SpeechError, match="no voice"):
        synthesize("1", "xx-nonexistent")


def test_soundtrack_is_finite_stereo_with_the_planned_loudness():
    spec = plan_spoken_corpus(1, SEED)[0]
    audio = render_spoken_audio(spec)
    assert audio.shape == (2, int(spec.picture.duration_s * spec.sample_rate)) and np.isfinite(audio).all()
    assert np.abs(audio).max() == pytest.approx(spec.level, rel=0.01)


def test_incidental_cues_are_independent_of_the_class():
    specs = plan_spoken_corpus(1000, SEED)
    labels = np.array([int(s.label) for s in specs])
    for name in ("level", "snr_db", "reverb_s", "drone_hz", "rate", "pitch"):
        values = np.array([getattr(s, name) for s in specs], dtype=float)
        assert f_oneway(*(values[labels == c] for c in range(10))).pvalue > 1e-3, name
    for values in ([s.picture.bg_rgb[0] for s in specs], [len(s.distractors) for s in specs]):
        assert f_oneway(*(np.asarray(values, float)[labels == c] for c in range(10))).pvalue > 1e-3
    table = np.array(
        [
            [sum(1 for s, y in zip(specs, labels) if s.language == lang and y == c) for c in range(10)]
            for lang in LANGUAGES
        ]
    )
    assert chi2_contingency(table).pvalue > 1e-3
