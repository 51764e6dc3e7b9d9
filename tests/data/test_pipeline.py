"""The Ray Data pipeline end to end on one corpus holding every kind of bad input."""

import select
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
import ray

from avray.config import DataConfig
from avray.data.index import build_clip_index, held_out_sources, knn_labels
from avray.data.pipeline import decode_dataset, load_clips, prepare
from avray.data.report import TIMEOUT
from avray.data.shards import write_prepared
from avray.data.sources import SourceError
from tests.conftest import own_cluster
from tests.media import make_bad_inputs, make_good_video, make_odd_good_inputs

CFG = DataConfig(clips_per_video=3, decode_batch_size=4)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for i in range(4):
        make_good_video(root / "good" / f"v{i}.mp4", seconds=3.0, fps=24, size=80, sample_rate=22050, seed=i)
    bad = make_bad_inputs(root / "bad")
    odd = make_odd_good_inputs(root / "odd")
    return root, {f"{root}/bad/{name}": reason for name, reason in bad.items()}, {f"{root}/odd/{n}" for n in odd}


@pytest.fixture(scope="module")
def index(ray_local, corpus):
    return build_clip_index(str(corpus[0]), CFG)


def test_index_keeps_every_good_video_and_reports_every_bad_one(index, corpus):
    root, bad, odd = corpus
    good = {f"{root}/good/v{i}.mp4" for i in range(4)} | odd
    sources = index.clips.column("source").to_pylist()
    assert set(sources) == good
    assert all(sources.count(s) == CFG.clips_per_video for s in good)
    assert {uri: reason for uri, (reason, _) in index.report.skipped.items()} == bad
    assert index.report.skipped_clips == CFG.clips_per_video * len(bad)
    assert set(index.clips.column("label").to_pylist()) == {"good", "odd"}
    starts = index.clips.column("start").to_pylist()
    durations = index.clips.column("video_duration").to_pylist()
    assert all(0 <= s and s + CFG.clip_seconds <= d + 1e-6 for s, d in zip(starts, durations))


def test_every_indexed_clip_is_decoded(index):
    clips = decode_dataset(index, CFG)
    rows = clips.dataset.take_all()
    assert sorted(r["clip_id"] for r in rows) == sorted(index.clips.column("clip_id").to_pylist())
    for row in rows:
        assert row["video"].shape == (CFG.num_frames, 64, 64, 3) and row["video"].dtype == np.uint8
        assert row["audio"].shape == (CFG.num_samples,) and row["audio"].dtype == np.float32
    report = clips.report()
    assert report.skipped == index.report.skipped  # decoding found nothing new to skip
    silent = {uri for uri in report.silent_videos}
    assert silent and all("odd" in uri for uri in silent)


def test_random_sampling_redraws_offsets_per_epoch(index):
    cfg = DataConfig(clips_per_video=3, sampling="random", seed=7)
    epoch0, again, epoch1 = index.for_epoch(cfg, 0), index.for_epoch(cfg, 0), index.for_epoch(cfg, 1)
    assert epoch0.column("start").to_pylist() == again.column("start").to_pylist()
    assert epoch0.column("start").to_pylist() != epoch1.column("start").to_pylist()
    assert epoch0.column("clip_id").to_pylist() != epoch1.column("clip_id").to_pylist()
    for table in (epoch0, epoch1):
        for s, d in zip(table.column("start").to_pylist(), table.column("video_duration").to_pylist()):
            assert 0 <= s <= d - cfg.clip_seconds


def test_prepared_shards_round_trip(index, tmp_path):
    clips = decode_dataset(index, CFG)
    report = write_prepared(clips, str(tmp_path / "prepared"), CFG)
    assert report.skipped == index.report.skipped
    reread = load_clips(str(tmp_path / "prepared"), CFG).dataset.take_all()
    direct = {r["clip_id"]: r for r in decode_dataset(index, CFG).dataset.take_all()}
    assert {r["clip_id"] for r in reread} == set(direct)
    for row in reread:
        np.testing.assert_array_equal(row["video"], direct[row["clip_id"]]["video"])
        np.testing.assert_array_equal(row["audio"], direct[row["clip_id"]]["audio"])
        assert row["label"] == direct[row["clip_id"]]["label"]
    with pytest.raises(SourceError, match="frame_size"):
        load_clips(str(tmp_path / "prepared"), DataConfig(frame_size=32))

    # Writing again replaces the shards (no clip twice) and leaves other files alone.
    (tmp_path / "prepared" / "notes.txt").write_text("mine")
    write_prepared(decode_dataset(index, CFG), str(tmp_path / "prepared"), CFG)
    again = [r["clip_id"] for r in load_clips(str(tmp_path / "prepared"), CFG).dataset.take_all()]
    assert sorted(again) == sorted(direct)
    assert (tmp_path / "prepared" / "notes.txt").read_text() == "mine"


def test_a_corpus_of_only_bad_files_fails_clearly(ray_local, tmp_path):
    make_bad_inputs(tmp_path)
    with pytest.raises(SourceError, match="every video was skipped"):
        decode_dataset(build_clip_index(str(tmp_path), CFG), CFG)


def test_a_corpus_of_videos_shorter_than_a_clip_fails_naming_each(ray_local, tmp_path):
    """Once an ArrowNotImplementedError (array_take on a null column) with the files unlisted."""
    for i in range(2):
        make_good_video(tmp_path / f"short{i}.mp4", seconds=0.5, fps=12, size=48, sample_rate=16000, seed=i)
    with pytest.raises(SourceError, match="every video was skipped") as refused:
        decode_dataset(build_clip_index(str(tmp_path), CFG), CFG)
    assert all(f"too_short        {tmp_path / f'short{i}.mp4'}" in str(refused.value) for i in range(2)), refused.value


def test_epoch_clock_gives_each_epoch_fresh_offsets_in_one_dataset(index, ray_local):
    """Ray Train re-reads one dataset every epoch; the clock makes each read a new epoch's clips."""
    from avray.data.pipeline import EpochClock

    cfg = DataConfig(clips_per_video=3, decode_batch_size=4, sampling="random", seed=3)
    clock = EpochClock.remote()
    dataset = decode_dataset(index, cfg, epoch_clock=clock).dataset
    seen = {}
    for epoch in (0, 1):
        ray_local.get(clock.set.remote(epoch))
        seen[epoch] = sorted(r["clip_id"] for r in dataset.take_all())
        assert seen[epoch] == sorted(index.for_epoch(cfg, epoch).column("clip_id").to_pylist())
    assert seen[0] != seen[1]


def test_knn_can_score_only_labels_with_two_held_out_videos():
    sources = ["a/1", "a/1", "a/2", "b/1", "c/1", "c/2", "u/1", "u/2"]
    labels = ["a", "a", "a", "b", "c", "c", None, None]
    assert knn_labels(sources, labels) == {"a", "c"}


def test_a_flat_folder_gives_unlabelled_clips(ray_local, tmp_path):
    for i in range(2):
        make_good_video(tmp_path / f"v{i}.mp4", seconds=3.0, fps=12, size=48, sample_rate=16000, seed=i)
    index = build_clip_index(str(tmp_path), CFG)
    assert index.clips.num_rows == 2 * CFG.clips_per_video
    assert index.clips.column("label").to_pylist() == [None] * index.clips.num_rows


def test_validation_split_is_stratified_by_label_and_keeps_videos_whole():
    sources = [f"/c/{label}/v{i}.mp4" for label in "ab" for i in range(10) for _ in range(3)]
    labels = [s.split("/")[2] for s in sources]
    held_out = held_out_sources(sources, labels, 0.2, seed=0)
    assert sorted(s.split("/")[2] for s in held_out) == ["a", "a", "b", "b"]
    assert held_out == held_out_sources(list(reversed(sources)), list(reversed(labels)), 0.2, seed=0)
    assert held_out != held_out_sources(sources, labels, 0.2, seed=1)
    # A small corpus holds out its share, not a video per label (that was 10 of these 20 videos).
    small = [f"/c/{label}/v{i}.mp4" for label in range(10) for i in range(2)]
    assert len(held_out_sources(small, [s.split("/")[2] for s in small], 0.1, seed=0)) == 2
    # A tiny one still gets one held-out video, and a label keeps one for training.
    assert len(held_out_sources(["x", "y"], [None, None], 0.01, seed=0)) == 1
    assert held_out_sources(["x", "y"], [None, None], 0.0, seed=0) == set()
    assert held_out_sources(["x"], ["a"], 0.5, seed=0) == set()


def test_a_video_a_manifest_names_twice_is_indexed_once(ray_local, tmp_path):
    """Nine rows naming eight videos (one by its relative and its absolute path): eight videos'
    clips, each clip id once, so no video can sit on both sides of the validation split."""
    for i in range(8):
        make_good_video(tmp_path / "v" / f"{i}.mp4", seconds=3.0, fps=12, size=48, sample_rate=16000, seed=i)
    rows = [f"v/{i}.mp4" for i in range(8)] + [f"{tmp_path}/v/3.mp4"]
    (tmp_path / "m.csv").write_text("path\n" + "\n".join(rows) + "\n")
    index = build_clip_index(str(tmp_path / "m.csv"), CFG)
    ids = index.clips.column("clip_id").to_pylist()
    assert index.num_videos == 8 and len(ids) == len(set(ids)) == 8 * CFG.clips_per_video
    assert index.report.counts() == {"duplicate": 1}
    train, val = index.split(0.25, seed=0)
    assert not set(train.clips.column("source").to_pylist()) & set(val.clips.column("source").to_pylist())


HANGS_IN_SEEK = "hangs_in_seek.mp4"  # probed fine; the seek to its clip never returns
HANGS_IN_OPEN = "hangs_in_open.mp4"  # opening it to probe never returns


def _hang_on_chosen_files() -> None:
    """In each Ray worker as it starts: the chosen files' FFmpeg calls block in C with the GIL
    released, as PyAV's do (no real file is known to make FFmpeg block: a FIFO is refused
    before it is opened); and a short grace, to keep the test short."""
    from avray.data import decode

    real_seek, real_open = decode._seek, decode._open_container

    def seek(container, *args):
        if container.name.endswith(HANGS_IN_SEEK):
            select.select([], [], [], 1e9)
        return real_seek(container, *args)

    def open_container(handle, deadline):
        if str(handle).endswith(HANGS_IN_OPEN):
            select.select([], [], [], 1e9)
        return real_open(handle, deadline)

    decode._seek, decode._open_container, decode.HANG_GRACE_S = seek, open_container, 1.0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_files_whose_ffmpeg_calls_never_return_are_timeouts_and_the_job_goes_on(tmp_path):
    corpus = tmp_path / "corpus"
    for i in range(4):
        make_good_video(corpus / f"v{i}.mp4", seconds=2.5, fps=12, size=48, sample_rate=16000, seed=i)
    for name in (HANGS_IN_SEEK, HANGS_IN_OPEN):
        make_good_video(corpus / name, seconds=2.5, fps=12, size=48, sample_rate=16000, seed=9)
    # One decode slot, a video per block: the hung video shares its task with good ones.
    cfg = DataConfig(
        clips_per_video=2, decode_timeout_s=3.0, val_fraction=0.0, decode_batch_size=1, decode_concurrency=1
    )
    # By value: Ray's workers cannot import this test module (no `tests` on their path), and a
    # hook they cannot load fails every worker they start, without end.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with own_cluster(2, runtime_env={"worker_process_setup_hook": _hang_on_chosen_files}):
        started = time.monotonic()
        report = prepare(str(corpus), str(tmp_path / "clips"), cfg)
        took = time.monotonic() - started
    assert took < 90, f"prepare took {took:.0f} s"  # each hang costs 3 s + 1.5 s
    sources = pads.dataset(tmp_path / "clips", format="parquet").to_table(columns=["source"]).column("source")
    assert sorted(Path(s).name for s in sources.to_pylist()) == sorted(f"v{i}.mp4" for i in range(4) for _ in "ab")
    skipped = {Path(uri).name: (reason, detail) for uri, (reason, detail) in report.skipped.items()}
    assert set(skipped) == {HANGS_IN_SEEK, HANGS_IN_OPEN}, report.summary()
    for reason, detail in skipped.values():
        assert reason == TIMEOUT and "an FFmpeg call did not return in 4.5 s" in detail, detail
