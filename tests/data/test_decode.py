import shutil
import threading
import time
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from avray.config import DataConfig
from avray.data import decode
from avray.data.decode import decode_clip, decode_clips_of_video, probe
from avray.data.report import DECODE_ERROR, EMPTY, NO_VIDEO_STREAM, TIMEOUT, TOO_SHORT, UNREADABLE, SkipError
from avray.demo.media import write_media
from tests.media import with_display_matrix, write_timed_streams

CFG = DataConfig()


def ramp_video(seconds: float, fps, width=96, height=96):
    """Frame i is uniformly grey at level 4*i: the decoded level tells which frame was kept."""
    n = int(round(seconds * float(fps)))
    levels = (np.arange(n) * 4 % 256).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (n, height, width, 3)).copy()


def clicks(seconds: float, rate: int, at=(1.0, 2.0, 3.0), channels=1):
    audio = np.zeros((channels, int(seconds * rate)), np.float32)
    for t in at:
        audio[:, int(t * rate) : int(t * rate) + rate // 200] = 0.8
    return audio if channels > 1 else audio[0]


@pytest.fixture(scope="module")
def pcm_video(tmp_path_factory):
    """Lossless audio (PCM in .mov) so timing can be checked to the millisecond."""
    path = tmp_path_factory.mktemp("decode") / "ramp.mov"
    write_media(
        path, frames=ramp_video(4.0, 24), audio=clicks(4.0, 22050), fps=24, sample_rate=22050, audio_codec="pcm_s16le"
    )
    return str(path)


def test_clip_row_shapes(pcm_video):
    clip = decode_clip(pcm_video, 0.5, CFG)
    assert clip.video.shape == (16, 64, 64, 3) and clip.video.dtype == np.uint8
    assert clip.audio.shape == (32_000,) and clip.audio.dtype == np.float32
    assert clip.has_audio


@pytest.mark.parametrize("start", [0.0, 0.7, 1.9])
def test_frames_are_sampled_at_the_clip_rate_from_the_window(pcm_video, start):
    clip = decode_clip(pcm_video, start, CFG)
    kept = clip.video[:, 32, 32, 0].astype(int)
    # Target time t_i = start + i/8 keeps source frame floor(t_i * 24), whose level is 4*index.
    expected = np.floor((start + np.arange(16) / 8) * 24 + 1e-6).astype(int) * 4 % 256
    np.testing.assert_allclose(kept, expected, atol=6)  # h264 quantisation


@pytest.mark.parametrize("start", [0.0, 0.6, 1.3])
def test_audio_is_aligned_with_the_window(pcm_video, start):
    clip = decode_clip(pcm_video, start, CFG)
    onsets = np.flatnonzero(np.diff((np.abs(clip.audio) > 0.4).astype(int)) == 1) + 1
    times = start + onsets / CFG.sample_rate
    expected = [t for t in (1.0, 2.0, 3.0) if start <= t < start + 2.0]
    np.testing.assert_allclose(times, expected, atol=0.003)


def test_aac_mp4_audio_is_resampled_to_mono_16k(tmp_path):
    path = tmp_path / "stereo.mp4"
    write_media(path, frames=ramp_video(3.0, 25), audio=clicks(3.0, 44100, channels=2), fps=25, sample_rate=44100)
    clip = decode_clip(str(path), 0.5, CFG)
    assert clip.audio.shape == (32_000,)
    onsets = np.flatnonzero(np.diff((np.abs(clip.audio) > 0.3).astype(int)) == 1) + 1
    # AAC adds encoder delay; the click must still land within ~50 ms of where it was written.
    np.testing.assert_allclose(0.5 + onsets / 16_000, [1.0, 2.0], atol=0.05)


def test_video_without_audio_gets_silence(tmp_path):
    path = tmp_path / "mute.mp4"
    write_media(path, frames=ramp_video(3.0, 24), audio=None, fps=24)
    assert probe(str(path), CFG).has_audio is False
    clip = decode_clip(str(path), 0.5, CFG)
    assert not clip.has_audio and clip.audio.shape == (32_000,) and not clip.audio.any()


@pytest.mark.parametrize("width, height", [(160, 48), (48, 160), (98, 62)])
def test_any_aspect_ratio_becomes_a_centred_square(tmp_path, width, height):
    frames = np.zeros((60, height, width, 3), np.uint8)
    # A bright block in the centre and dark borders: the centre crop must keep the block.
    frames[:, height // 2 - 8 : height // 2 + 8, width // 2 - 8 : width // 2 + 8] = 255
    path = tmp_path / f"v{width}x{height}.mp4"
    write_media(path, frames=frames, audio=None, fps=Fraction(30000, 1001))
    clip = decode_clip(str(path), 0.0, CFG)
    assert clip.video.shape == (16, 64, 64, 3)
    assert clip.video[:, 28:36, 28:36].mean() > 200
    assert clip.video[:, :4, :4].mean() < 40 or min(width, height) == height


def test_probe_reports_duration_and_rejects_unusable_files(tmp_path, pcm_video):
    info = probe(pcm_video, CFG)
    assert info.duration == pytest.approx(4.0, abs=0.1) and info.fps == pytest.approx(24)
    cases = {}
    (tmp_path / "empty.mp4").write_bytes(b"")
    cases["empty.mp4"] = EMPTY
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(20_000))
    cases["noise.mp4"] = UNREADABLE
    good = tmp_path / "good.mp4"
    write_media(good, frames=ramp_video(3.0, 24), audio=clicks(3.0, 16000), fps=24, sample_rate=16000)
    (tmp_path / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases["truncated.mp4"] = UNREADABLE
    write_media(tmp_path / "audio_only.mp4", frames=None, audio=clicks(3.0, 16000), sample_rate=16000)
    cases["audio_only.mp4"] = NO_VIDEO_STREAM
    write_media(tmp_path / "short.mp4", frames=ramp_video(0.5, 24), audio=None, fps=24)
    cases["short.mp4"] = TOO_SHORT
    for name, reason in cases.items():
        with pytest.raises(SkipError) as err:
            probe(str(tmp_path / name), CFG)
        assert err.value.reason == reason, (name, err.value)


def _onsets(audio: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.diff((audio > 0.4).astype(int)) == 1)


def test_clips_of_one_video_decode_in_shared_passes_exactly_as_one_by_one(pcm_video, monkeypatch):
    # Out of order, overlapping, and one far enough to be sought to.
    starts = [1.9, 0.0, 0.625, 1.25, 3.4]
    seeks = []
    real_seek = decode._seek
    monkeypatch.setattr(decode, "_seek", lambda *args: (seeks.append(args[2]), real_seek(*args))[1])
    together = decode_clips_of_video(pcm_video, starts, DataConfig(clip_seconds=0.5))
    assert len(seeks) == 2, seeks  # [0.0 .. 1.9] in one pass, 3.4 (1 s after the last window ends) in another
    for start, clip in zip(starts, together):
        alone = decode_clip(pcm_video, start, DataConfig(clip_seconds=0.5))
        assert np.array_equal(clip.video, alone.video), start
        # One resampler for the pass, not one per window: the same audio to within a sample's phase.
        assert (
            np.array_equal(_onsets(clip.audio), _onsets(alone.audio))
            or np.abs(_onsets(clip.audio) - _onsets(alone.audio)).max() <= 1
        ), start


def test_a_window_beyond_the_video_fails_alone(pcm_video):
    clips = decode_clips_of_video(pcm_video, [0.5, 30.0], CFG)
    assert clips[0].video.shape == (CFG.num_frames, CFG.frame_size, CFG.frame_size, 3)
    assert isinstance(clips[1], SkipError) and clips[1].reason == DECODE_ERROR


def click_times(audio: np.ndarray, rate: int = CFG.sample_rate) -> np.ndarray:
    """Seconds into the clip at which each click rises above half its height."""
    return (np.flatnonzero(np.diff((np.abs(audio) > 0.4).astype(int)) == 1) + 1) / rate


@pytest.mark.parametrize("suffix", [".mov", ".mkv"])
@pytest.mark.parametrize("video_start, audio_start", [(0.0, 0.94), (0.5, 0.0)])
@pytest.mark.parametrize("clip_start", [0.0, 0.5])
def test_streams_that_start_apart_are_aligned_on_the_container_timeline(
    tmp_path, suffix, video_start, audio_start, clip_start
):
    # Clicks at 1.3 and 2.0 s of the file's timeline, whichever stream starts first; both
    # streams end together, 3 s after the video starts.
    path = tmp_path / f"apart{suffix}"
    clicks_at = np.array([1.3, 2.0])
    write_timed_streams(
        path,
        frames=ramp_video(3.0, 24, 32, 32),
        fps=24,
        audio=clicks(3.0 + video_start - audio_start, 16000, at=clicks_at - audio_start),
        sample_rate=16000,
        video_start=video_start,
        audio_start=audio_start,
    )
    assert probe(str(path), CFG).duration == pytest.approx(3.0, abs=0.05)  # the video's, from its first frame
    clip = decode_clip(str(path), clip_start, CFG)
    # Clip time 0 is the video's first frame, at video_start on the timeline.
    expected = [t for t in clicks_at - video_start - clip_start if 0 <= t < 2.0]
    np.testing.assert_allclose(click_times(clip.audio), expected, atol=0.002)
    silent = max(0, int((audio_start - video_start - clip_start) * 16000))
    assert silent == 0 or not clip.audio[:silent].any()  # before the audio starts
    levels = np.floor((clip_start + np.arange(16) / 8) * 24 + 1e-6) * 4 % 256
    np.testing.assert_allclose(clip.video[:, 16, 16, 0], levels, atol=6)


def test_audio_that_ends_before_the_video_is_followed_by_silence(tmp_path):
    path = tmp_path / "short audio.mov"
    rate = 16000
    write_timed_streams(
        path, frames=ramp_video(3.0, 24, 32, 32), fps=24, audio=np.full(rate, 0.3, np.float32), sample_rate=rate
    )
    clip = decode_clip(str(path), 0.5, CFG)
    assert np.abs(clip.audio[: int(0.45 * rate)] - 0.3).max() < 0.01  # the last half second of audio
    assert np.abs(clip.audio[int(0.55 * rate) :]).max() < 0.01
    assert clip.video.shape[0] == CFG.num_frames


@pytest.mark.parametrize("suffix", [".mov", ".mkv"])
def test_a_video_that_ends_before_its_audio_is_probed_at_its_own_length(tmp_path, suffix):
    # A Matroska container's duration is its longest stream's: clips laid out over the
    # audio's 4 s would run a second past the video's end.
    path = tmp_path / f"short video{suffix}"
    write_timed_streams(
        path, frames=ramp_video(3.0, 24, 32, 32), fps=24, audio=clicks(4.0, 16000, at=(2.5,)), sample_rate=16000
    )
    assert probe(str(path), CFG).duration == pytest.approx(3.0, abs=0.05)
    last = decode_clip(str(path), 1.0, CFG)
    np.testing.assert_allclose(click_times(last.audio), [1.5], atol=0.002)


@pytest.mark.parametrize(
    "layout, levels, mono",
    [
        ("5.1", [0.3] * 6, 0.3),  # every channel at 0.3: the weights sum to one
        ("stereo", [0.6, 0.0], 0.3),  # the mean of left and right
    ],
)
def test_multichannel_audio_is_downmixed_by_weights_without_clipping(tmp_path, layout, levels, mono):
    path = tmp_path / f"{layout}.mov"
    wave = np.sin(2 * np.pi * 440 * np.arange(3 * 16000) / 16000).astype(np.float32)
    write_timed_streams(
        path,
        frames=ramp_video(3.0, 24, 32, 32),
        fps=24,
        audio=np.asarray(levels, np.float32)[:, None] * wave,
        sample_rate=16000,
        layout=layout,
    )
    clip = decode_clip(str(path), 0.5, CFG)
    np.testing.assert_allclose(clip.audio, mono * wave[8000:40000], atol=0.002)


def _marked_square() -> np.ndarray:
    """2 s of 64x64 frames, dark, with a bright block in the top-left corner."""
    frames = np.full((48, 64, 64, 3), 30, np.uint8)
    frames[:, :20, :20] = 230
    return frames


@pytest.mark.parametrize(
    "matrix, quarter_turns",
    [
        ((0, 1, 0, -1, 0, 0), -1),  # an iPhone held upright: shown turned clockwise
        ((-1, 0, 0, 0, -1, 0), 2),  # upside down
        ((0, -1, 0, 1, 0, 0), 1),  # shown turned counterclockwise
    ],
)
def test_the_display_matrix_turns_frames_upright(tmp_path, matrix, quarter_turns):
    plain = tmp_path / "plain.mp4"
    write_media(plain, frames=_marked_square(), fps=24)
    turned = tmp_path / "turned.mp4"
    turned.write_bytes(with_display_matrix(plain.read_bytes(), (*[v << 16 for v in matrix], 0, 0, 1 << 30)))
    with av.open(str(turned)) as container:  # the file carries what the test means
        assert next(container.decode(video=0)).rotation % 360 == 90 * quarter_turns % 360
    upright = decode_clip(str(turned), 0.0, CFG).video
    stored = decode_clip(str(plain), 0.0, CFG).video
    assert stored[:, :8, :8].mean() > 200 and stored[:, -8:, -8:].mean() < 60
    np.testing.assert_array_equal(upright, np.rot90(stored, quarter_turns, axes=(1, 2)))


def test_the_time_limit_bounds_all_the_clips_of_a_file_together(pcm_video, monkeypatch):
    # Three windows far apart: three passes, each made to cost 6 s (of a fake clock) at its seek.
    clock = [0.0]
    real_seek = decode._seek

    def slow_seek(*args):
        clock[0] += 6.0
        return real_seek(*args)

    monkeypatch.setattr(decode, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(decode, "_seek", slow_seek)
    first, second, third = decode_clips_of_video(
        pcm_video, [0.0, 1.7, 3.4], DataConfig(clip_seconds=0.5, decode_timeout_s=10.0)
    )
    assert isinstance(first, decode.DecodedClip)  # decoded within the limit: kept
    for late in (second, third):
        assert isinstance(late, SkipError) and late.reason == TIMEOUT
        assert "decoding 3 clip(s) took over 10 s" in late.detail, late.detail


@pytest.fixture
def stuck():
    """Makes FFmpeg calls block (GIL released, as PyAV's do) until the test ends; the calls
    judged stuck give up after ``decode_timeout_s`` + 0.2 s."""
    released = threading.Event()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decode, "HANG_GRACE_S", 0.2)
        yield patch, lambda *args: released.wait()
    released.set()


def test_a_seek_that_never_returns_skips_its_file_and_the_next_file_decodes(pcm_video, stuck):
    patch, block = stuck
    cfg = DataConfig(clip_seconds=0.5, decode_timeout_s=0.3)
    real_seek = decode._seek

    def seek(container, *args):
        return block() if "stuck" in container.name else real_seek(container, *args)

    patch.setattr(decode, "_seek", seek)
    stuck_copy = Path(pcm_video).with_name("stuck.mov")
    shutil.copy(pcm_video, stuck_copy)
    started = time.monotonic()
    with pytest.raises(SkipError) as err:
        decode_clips_of_video(str(stuck_copy), [1.0], cfg)
    assert time.monotonic() - started < 5
    assert err.value.reason == TIMEOUT and "an FFmpeg call did not return in 0.5 s" in err.value.detail
    (clip,) = decode_clips_of_video(pcm_video, [1.0], cfg)
    assert isinstance(clip, decode.DecodedClip)


def test_an_open_that_never_returns_is_a_timeout_when_probing(pcm_video, stuck):
    patch, block = stuck
    patch.setattr(decode, "_open_container", block)
    with pytest.raises(SkipError) as err:
        probe(pcm_video, DataConfig(decode_timeout_s=0.3))
    assert err.value.reason == TIMEOUT and err.value.detail.startswith("probing: an FFmpeg call did not return")


def test_what_the_decoding_thread_raises_reaches_the_caller_as_it_is(tmp_path):
    with pytest.raises(SkipError) as err:
        probe(str(tmp_path / "missing.mp4"), CFG)
    assert err.value.reason != TIMEOUT
    with pytest.raises(ZeroDivisionError):
        decode.abandoned_if_stuck(lambda: 1 / 0, CFG, "dividing")
