"""write_media writes real containers: PyAV reads back the streams, sizes, rates and content."""

import hashlib
from fractions import Fraction

import av
import numpy as np
import pytest

from avray.demo.media import CODEC_DEFAULTS, MediaWriteError, write_media
from tests.media import (
    EMPTY,
    NO_VIDEO_STREAM,
    SKIP_REASONS,
    TOO_SHORT,
    UNREADABLE,
    make_bad_inputs,
    make_odd_good_inputs,
    moving_disc,
    tone,
)


def ramp(n, width=64, height=48):
    """Frame i is uniformly grey at level 8 * i (mod 256)."""
    levels = (np.arange(n) * 8 % 256).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (n, height, width, 3)).copy()


def read_back(path):
    """Streams as PyAV sees them: decoded video frames, and mono-summed audio at the file's rate."""
    info = {}
    with av.open(str(path)) as container:
        info["format"] = container.format.name
        info["video_streams"] = len(container.streams.video)
        info["audio_streams"] = len(container.streams.audio)
        info["duration"] = container.duration / av.time_base if container.duration else None
        if container.streams.video:
            v = container.streams.video[0]
            info.update(
                video_codec=v.codec_context.name,
                width=v.codec_context.width,
                height=v.codec_context.height,
                pix_fmt=v.codec_context.pix_fmt,
                rate=v.average_rate,
            )
    with av.open(str(path)) as container:
        if container.streams.video:
            info["frames"] = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(str(path)) as container:
        if container.streams.audio:
            a = container.streams.audio[0]
            info.update(
                audio_codec=a.codec_context.name,
                sample_rate=a.codec_context.sample_rate,
                channels=a.codec_context.channels,
            )
            info["audio"] = np.concatenate([_planar(f) for f in container.decode(audio=0)], axis=1)
    return info


def _planar(frame):
    """[channels, samples] whatever the sample format's layout."""
    data = frame.to_ndarray()
    channels = frame.layout.nb_channels
    return data.reshape(channels, -1) if not frame.format.is_packed else data.reshape(-1, channels).T


EXPECTED_CODECS = {  # extension -> (decoder name of video, of audio)
    ".mp4": ("h264", "aac"),
    ".mov": ("h264", "aac"),
    ".mkv": ("h264", "aac"),
    ".webm": ("vp9", "opus"),
    ".avi": ("mpeg4", {"mp3", "mp3float"}),
}


@pytest.mark.parametrize("ext", sorted(CODEC_DEFAULTS))
def test_each_container_round_trips(tmp_path, ext):
    fps, seconds, rate = 24, 2.0, 22050
    frames = moving_disc(seconds, fps, 64, 48, seed=1)
    audio = tone(seconds, rate, seed=1)
    path = tmp_path / f"clip{ext}"
    written = write_media(path, frames=frames, audio=audio, fps=fps, sample_rate=rate)
    got = read_back(path)
    video_codec, audio_codec = EXPECTED_CODECS[ext]
    assert (got["video_streams"], got["audio_streams"]) == (1, 1)
    assert got["video_codec"] == video_codec
    assert got["audio_codec"] in ({audio_codec} if isinstance(audio_codec, str) else audio_codec)
    assert (got["width"], got["height"]) == (64, 48) and got["pix_fmt"] == "yuv420p"
    assert got["rate"] == fps
    assert abs(len(got["frames"]) - len(frames)) <= 1
    assert got["duration"] == pytest.approx(seconds, abs=0.1)
    # Opus decodes at 48 kHz whatever the input rate: write_media resamples to it.
    assert got["sample_rate"] == written.audio_rate == (48000 if ext == ".webm" else rate)
    assert got["channels"] == 1
    assert got["audio"].shape[1] / got["sample_rate"] == pytest.approx(seconds, abs=0.1)
    # The content survives lossy coding: frames close to the input, audio as loud as the input.
    n = min(len(frames), len(got["frames"]))
    error = np.abs(np.stack(got["frames"][:n]).astype(int) - frames[:n].astype(int)).mean()
    assert error < 12, error
    rms_in, rms_out = np.sqrt(np.mean(audio**2)), np.sqrt(np.mean(got["audio"] ** 2))
    assert rms_out == pytest.approx(rms_in, rel=0.25)


def test_encoders_are_flushed_every_frame_is_in_the_file(tmp_path):
    frames = ramp(30)  # one GOP, B-frames: the last frames only leave x264 when it is flushed
    write_media(tmp_path / "ramp.mp4", frames=frames, fps=30)
    got = read_back(tmp_path / "ramp.mp4")
    assert len(got["frames"]) == 30
    levels = np.array([f[24, 32, 0] for f in got["frames"]], int)
    np.testing.assert_allclose(levels, np.arange(30) * 8 % 256, atol=4)


def test_fractional_frame_rate(tmp_path):
    fps = Fraction(30000, 1001)
    write_media(tmp_path / "ntsc.mp4", frames=ramp(90), fps=fps)
    got = read_back(tmp_path / "ntsc.mp4")
    assert got["rate"] == fps
    assert len(got["frames"]) == 90
    assert got["duration"] == pytest.approx(90 / float(fps), abs=0.02)
    assert got["audio_streams"] == 0


def test_float_fps_becomes_a_fraction(tmp_path):
    written = write_media(tmp_path / "f.mp4", frames=ramp(10), fps=12.5)
    assert written.fps == Fraction(25, 2) and read_back(tmp_path / "f.mp4")["rate"] == Fraction(25, 2)


def test_audio_only_file(tmp_path):
    write_media(tmp_path / "a.mp4", audio=tone(1.5, 16000, seed=2), sample_rate=16000)
    got = read_back(tmp_path / "a.mp4")
    assert (got["video_streams"], got["audio_streams"]) == (0, 1)
    assert got["sample_rate"] == 16000 and got["duration"] == pytest.approx(1.5, abs=0.05)


@pytest.mark.parametrize(
    "data_channels, layout, expected", [(1, "stereo", 2), (2, "mono", 1), (2, None, 2), (1, None, 1)]
)
def test_channel_layouts(tmp_path, data_channels, layout, expected):
    audio = tone(1.0, 44100, seed=3, channels=data_channels)
    write_media(tmp_path / "s.mp4", frames=ramp(10), audio=audio, fps=10, sample_rate=44100, audio_layout=layout)
    got = read_back(tmp_path / "s.mp4")
    assert got["channels"] == expected and got["sample_rate"] == 44100
    assert np.abs(got["audio"]).max() > 0.2


def test_odd_sizes_keep_their_size_or_are_padded(tmp_path):
    frames = moving_disc(1.0, 24, 97, 61, seed=4)
    kept = write_media(tmp_path / "keep.mp4", frames=frames, fps=24)
    padded = write_media(tmp_path / "pad.mp4", frames=frames, fps=24, odd_size="pad")
    vp9 = write_media(tmp_path / "odd.webm", frames=frames, fps=24)
    assert (kept.width, kept.height, kept.pixel_format) == (97, 61, "yuv444p")
    assert (padded.width, padded.height, padded.pixel_format) == (98, 62, "yuv420p")
    assert (vp9.width, vp9.height, vp9.pixel_format) == (97, 61, "yuv420p")
    for written in (kept, padded, vp9):
        got = read_back(written.path)
        assert (got["width"], got["height"], got["pix_fmt"]) == (written.width, written.height, written.pixel_format)
        assert got["frames"][0].shape == (written.height, written.width, 3) and len(got["frames"]) == 24
    # Padding repeats the last row and column.
    got = read_back(padded.path)["frames"][5].astype(int)
    assert np.abs(got[:61, :97] - frames[5]).mean() < 8
    assert np.abs(got[61] - got[60]).mean() < 6 and np.abs(got[:, 97] - got[:, 96]).mean() < 6


def test_lossless_pcm_audio_is_exact(tmp_path):
    audio = tone(1.0, 22050, seed=5)
    write_media(tmp_path / "pcm.mov", frames=ramp(24), audio=audio, fps=24, sample_rate=22050, audio_codec="pcm_s16le")
    got = read_back(tmp_path / "pcm.mov")
    assert got["audio_codec"] == "pcm_s16le"
    np.testing.assert_allclose(
        got["audio"][0].astype(np.float32) / (32768 if got["audio"].dtype == np.int16 else 1), audio, atol=2e-4
    )


@pytest.mark.parametrize(
    "name, size", [("a.mp4", (98, 62)), ("b.mkv", (97, 61)), ("c.webm", (64, 48)), ("d.avi", (50, 30))]
)
def test_same_input_same_bytes(tmp_path, name, size):
    frames = moving_disc(2.0, 24, *size, seed=6) // 2 + np.random.default_rng(0).integers(
        0, 40, (48, size[1], size[0], 3), dtype=np.uint8
    )
    audio = tone(2.0, 44100, seed=6, channels=2)
    digests, junk = set(), []
    for i in range(5):
        junk.append(np.random.default_rng(i).bytes(10_000 * (i + 1)))  # vary the heap between runs
        write_media(tmp_path / name, frames=frames, audio=audio, fps=24, sample_rate=44100)
        digests.add(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
    assert len(digests) == 1


def test_rejects_what_it_cannot_write(tmp_path):
    with pytest.raises(MediaWriteError, match="nothing to write"):
        write_media(tmp_path / "x.mp4")
    with pytest.raises(MediaWriteError, match="uint8"):
        write_media(tmp_path / "x.mp4", frames=np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(MediaWriteError, match=r"\[C, S\]"):
        write_media(tmp_path / "x.mp4", audio=np.zeros((3, 100), np.float32))
    with pytest.raises(MediaWriteError, match="no default codecs"):
        write_media(tmp_path / "x.flv", frames=ramp(2))
    assert not (tmp_path / "x.mp4").exists()


def test_bad_inputs_helper(tmp_path):
    cases = make_bad_inputs(tmp_path)
    assert set(cases.values()) == set(SKIP_REASONS) == {EMPTY, UNREADABLE, NO_VIDEO_STREAM, TOO_SHORT}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(cases)
    assert (tmp_path / "empty.mp4").stat().st_size == 0
    for name, reason in cases.items():
        if reason == UNREADABLE:
            with pytest.raises((av.FFmpegError, UnicodeDecodeError)):
                av.open(str(tmp_path / name)).close()
    with av.open(str(tmp_path / "audio_only.mp4")) as c:
        assert not c.streams.video and c.streams.audio
    with av.open(str(tmp_path / "short.mp4")) as c:
        assert c.streams.video and c.duration / av.time_base < 1.0


def test_bad_input_reasons_are_the_decoders():
    from avray.data import report

    assert set(SKIP_REASONS) <= set(report.REASONS)
    assert (EMPTY, UNREADABLE, NO_VIDEO_STREAM, TOO_SHORT) == (
        report.EMPTY,
        report.UNREADABLE,
        report.NO_VIDEO_STREAM,
        report.TOO_SHORT,
    )


def test_odd_good_inputs_helper(tmp_path):
    facts = make_odd_good_inputs(tmp_path)
    assert {"no_audio.mp4", "vp9_opus.webm", "mpeg4_mp3.avi", "matroska.mkv", "quicktime.mov"} <= set(facts)
    for name, expected in facts.items():
        got = read_back(tmp_path / name)
        assert (got["width"], got["height"]) == (expected["width"], expected["height"]), name
        assert got["rate"] == expected["fps"], name
        assert abs(len(got["frames"]) - expected["seconds"] * expected["fps"]) <= 1, name
        assert got["duration"] >= 2.5, name  # every odd file holds at least one 2-s clip
        assert (got["audio_streams"] == 1) == expected["has_audio"], name
        if expected["has_audio"]:
            assert (got["sample_rate"], got["channels"]) == (expected["sample_rate"], expected["channels"]), name
