"""Checkpoint folders in a run's storage: which one a re-run resumes from."""

import pyarrow.fs as pafs
import torch

from avray.checkpoint import CONFIG_FILE, STATE_FILE, epoch_folder_name, newest_complete_epoch_folder


def _save(run, epochs_done: int) -> str:
    folder = run / epoch_folder_name(epochs_done)
    folder.mkdir(parents=True)
    torch.save({"epoch": epochs_done - 1}, folder / STATE_FILE)
    (folder / CONFIG_FILE).write_text("{}\n")
    return str(folder)


def test_the_newest_whole_checkpoint_is_found_and_cut_copies_are_passed_over(tmp_path):
    fs, run = pafs.LocalFileSystem(), tmp_path / "pretrain"
    assert newest_complete_epoch_folder(fs, str(run)) is None
    for epochs_done in (9, 10):
        newest = _save(run, epochs_done)
    (run / "checkpoint_2026-12-04_01-00-00.000000").mkdir()  # Ray's own naming: not ours to pick
    assert newest_complete_epoch_folder(fs, str(run)) == newest
    # A copy cut short by a stop signal: its state lacks the end of the zip file, ...
    cut = _save(run, 11)
    state = (run / epoch_folder_name(11) / STATE_FILE).read_bytes()
    (run / epoch_folder_name(11) / STATE_FILE).write_bytes(state[: len(state) // 2])
    assert newest_complete_epoch_folder(fs, str(run)) == newest
    # ... or the config was not copied yet.
    _save(run, 12)
    (run / epoch_folder_name(12) / CONFIG_FILE).unlink()
    assert newest_complete_epoch_folder(fs, str(run)) == newest != cut
