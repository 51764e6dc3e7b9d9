"""The decode stage's task layout: how a long decode task parts its clips and streams them."""

import numpy as np
import pytest

from avray.config import DataConfig
from avray.data.stages import clip_id, clip_starts, decode_clip_stream, decode_clips, video_batches
from tests.media import make_good_video


def test_video_batches_cover_every_row_once_and_never_part_a_video():
    sources = ["a"] * 3 + ["b"] * 5 + ["c"] + ["d"] * 2 + ["e"] * 4
    batches = video_batches(sources, 4)
    assert batches == [(0, 8), (8, 7)]  # a is short of 4, so b joins it; then c, d and e
    assert sum(length for _, length in batches) == len(sources)
    for start, _ in batches:
        assert start == 0 or sources[start] != sources[start - 1]  # each batch opens a video
    assert video_batches(sources, 1) == [(0, 3), (3, 5), (8, 1), (9, 2), (11, 4)]
    assert video_batches(sources, 100) == [(0, len(sources))]


def test_a_long_task_yields_a_block_per_batch_with_the_rows_of_one_call(tmp_path):
    cfg = DataConfig(clip_seconds=0.5, fps=8, frame_size=16, decode_batch_size=3)
    sources, starts = [], []
    for i, clips in enumerate((2, 3, 1, 2)):
        path = tmp_path / f"v{i}.mp4"
        make_good_video(path, seconds=2.0, fps=12, size=32, sample_rate=16000, seed=i)
        sources += [str(path)] * clips
        starts += [0.5 * k for k in range(clips)]
    batch = {
        "source": np.array(sources, object),
        "start": np.array(starts),
        "clip_id": np.array([f"{s}@{t}" for s, t in zip(sources, starts)], object),
        "label": np.array([None] * len(sources), object),
    }

    blocks = list(decode_clip_stream(batch, cfg))
    assert [len(block["clip_id"]) for block in blocks] == [5, 3]  # v0+v1, then v2+v3
    whole = decode_clips(batch, cfg)
    for key in ("video", "audio", "clip_id", "start"):
        np.testing.assert_array_equal(np.concatenate([block[key] for block in blocks]), whole[key])


@pytest.mark.parametrize(
    ("video_seconds", "expected"),
    [(5.0, [0.0, 1.458, 2.917]), (2.0 + 1 / 12, [0.0]), (2.0, [0.0]), (2.1, [0.0, 0.008, 0.017])],
)
def test_a_video_gets_only_as_many_windows_as_are_distinct(video_seconds, expected):
    """A video about one clip long once gave every slot the start 0: the same clip K times
    under one clip_id."""
    starts = clip_starts(video_seconds, DataConfig(clip_seconds=2.0, fps=12, clips_per_video=3))
    np.testing.assert_allclose(starts, expected, atol=5e-4)
    assert len({clip_id("v.mp4", t) for t in starts}) == len(starts)
