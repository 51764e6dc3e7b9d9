"""A file that holds its Ray worker in an FFmpeg call that never returns: the watchdog reports it
as ``timeout``, ends the worker, and the job goes on without it.

No real file is known to make FFmpeg block (a FIFO is refused before it is opened), so the hang
is injected in every Ray worker as it starts (``worker_process_setup_hook``): for two chosen
file names, a seek in one and the open in the other block in C with the GIL released, as
PyAV's FFmpeg calls do.
"""

from __future__ import annotations

import select
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from avray.data import decode
from avray.data.pipeline import prepare
from avray.data.report import TIMEOUT
from tests.conftest import own_cluster
from tests.media import make_good_video
from tests.tiny import make_tiny_corpus, tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

HANGS_IN_SEEK = "hangs_in_seek.mp4"  # probed fine; its decode task's seek never returns
HANGS_IN_OPEN = "hangs_in_open.mp4"  # opening it to probe never returns
GOOD_VIDEOS = 6
CLIPS_PER_VIDEO = 2


def _block_forever() -> None:
    select.select([], [], [], 1e9)


def _hang_on_chosen_files() -> None:
    """In a Ray worker at start-up: the chosen files' FFmpeg calls never return."""
    real_seek, real_open = decode._seek, decode._open_container

    def seek(container, *args):
        if container.name.endswith(HANGS_IN_SEEK):
            _block_forever()
        return real_seek(container, *args)

    def open_container(handle, deadline):
        if str(handle).endswith(HANGS_IN_OPEN):
            _block_forever()
        return real_open(handle, deadline)

    decode._seek, decode._open_container = seek, open_container


def test_a_file_whose_ffmpeg_call_never_returns_is_skipped_as_timeout_and_the_job_goes_on(tmp_path):
    corpus = make_tiny_corpus(tmp_path / "corpus", videos=GOOD_VIDEOS)
    for name in (HANGS_IN_SEEK, HANGS_IN_OPEN):
        make_good_video(Path(corpus) / "a" / name, seconds=2.5, fps=12, size=48, sample_rate=16000, seed=99)
    cfg = tiny_config(
        tmp_path,
        "data.decode_timeout_s=1",
        "data.val_fraction=0",
        f"data.clips_per_video={CLIPS_PER_VIDEO}",
        "data.decode_batch_size=1",
        # One slot: each decode task holds several videos, so the one that hangs shares its task
        # (with the default seed it is the third of four, after two blocks were delivered).
        "data.decode_concurrency=1",
    ).data
    with own_cluster(2, runtime_env={"worker_process_setup_hook": _hang_on_chosen_files}):
        started = time.monotonic()
        report = prepare(corpus, str(tmp_path / "clips"), cfg, progress=print)
        took = time.monotonic() - started
    # Each hang costs the limit (1 s) plus the grace (5 s) and a fresh worker.
    assert took < 60, f"prepare took {took:.0f} s"
    table = pads.dataset(tmp_path / "clips", format="parquet").to_table(columns=["clip_id", "source"])
    clip_ids = table.column("clip_id").to_pylist()
    # Every other video's clips, each once: the retried decode task's blocks that the first
    # attempt had delivered were not delivered again.
    assert len(clip_ids) == len(set(clip_ids)) == GOOD_VIDEOS * CLIPS_PER_VIDEO
    assert {Path(s).name for s in table.column("source").to_pylist()} == {f"v{i}.mp4" for i in range(GOOD_VIDEOS)}
    skipped = {Path(uri).name: why for uri, why in report.skipped.items()}
    assert set(skipped) == {HANGS_IN_SEEK, HANGS_IN_OPEN}, report.summary()
    for reason, detail in skipped.values():
        assert reason == TIMEOUT
        assert detail.startswith("an FFmpeg call did not return in 6 s (data.decode_timeout_s plus grace)"), detail
    assert report.skipped_clips == 2 * CLIPS_PER_VIDEO
