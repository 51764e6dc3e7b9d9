"""Checkpoints: one folder per epoch holding the full training state and the config.

Everything is saved as tensors, numbers, strings and containers, so loading uses
``torch.load(weights_only=True)``: a checkpoint cannot execute code. Checkpoints are copied
to MLflow and shared, so the config saved with one has URI passwords masked (a tracking URI
``http://user:***@host``; see ``avray.tracking.tracking_uri`` for how such a config is read back).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch
import yaml

from avray.config import Config, config_from_dict
from avray.storage import filesystem_for, is_remote
from avray.tracking import redact

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"


EPOCH_FOLDER = "checkpoint_epoch_"


def epoch_folder_name(epochs_done: int) -> str:
    """The name of the checkpoint folder saved after ``epochs_done`` epochs, in a run's
    storage. Ray names them by time otherwise; by epoch, the newest can be told without Ray's
    own record of them (:func:`newest_complete_epoch_folder`)."""
    return f"{EPOCH_FOLDER}{epochs_done:06d}"


def newest_complete_epoch_folder(fs: pafs.FileSystem, run_folder: str) -> str | None:
    """The newest checkpoint folder under ``run_folder`` (on ``fs``) that holds a whole state
    and config, or None.

    Ray's controller registers a checkpoint a moment after the worker has written it; a stop
    signal in between (Ctrl-C) left the newest checkpoints written but unlisted, and the re-run
    resumed epochs behind them. A folder whose copy was cut short has no config or a state file
    without the end record that every zip file, torch.save's format, ends with.
    """
    selector = pafs.FileSelector(run_folder, allow_not_found=True)
    folders = sorted(
        info.path
        for info in fs.get_file_info(selector)
        if info.type == pafs.FileType.Directory and info.base_name.startswith(EPOCH_FOLDER)
    )
    for folder in reversed(folders):
        state, config = fs.get_file_info([f"{folder}/{STATE_FILE}", f"{folder}/{CONFIG_FILE}"])
        if state.type != pafs.FileType.File or config.type != pafs.FileType.File:
            continue
        with fs.open_input_file(state.path) as file:
            if zipfile.is_zipfile(file):
                return folder
    return None


def save_state(folder: Path, cfg: Config, state: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / STATE_FILE)
    (folder / CONFIG_FILE).write_text(redact(cfg.to_yaml()))


def checkpoint_uri(checkpoint) -> str:
    """Where a Ray checkpoint lies, as a user writes it: Ray gives the path inside its
    filesystem, which for S3 storage lacks the ``s3://``."""
    return f"s3://{checkpoint.path}" if isinstance(checkpoint.filesystem, pafs.S3FileSystem) else checkpoint.path


def load_state(folder: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The saved training state; a file that would run code when unpickled is refused
    (``pickle.UnpicklingError``) before any of it runs."""
    return torch.load(folder / STATE_FILE, map_location=map_location, weights_only=True)


def load_config_of(folder: Path) -> Config:
    return config_from_dict(yaml.safe_load((folder / CONFIG_FILE).read_text()))


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, or the newest one under a run's output folder. One on
    ``s3://`` (a cluster's storage) is first copied to a local temporary folder, removed when
    the process exits."""
    if is_remote(str(path)):
        return _fetch_checkpoint(str(path))
    path = Path(path)
    if (path / STATE_FILE).exists():
        return path
    candidates = sorted(path.rglob(STATE_FILE), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"no avray checkpoint ({STATE_FILE}) under {path}")
    return candidates[-1].parent


def _fetch_checkpoint(uri: str) -> Path:
    import atexit
    import shutil
    import tempfile

    fs, root = filesystem_for(uri)
    found = [
        info
        for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        if info.base_name == STATE_FILE
    ]
    direct = [info for info in found if info.path == f"{root}/{STATE_FILE}"]
    if not found:
        raise FileNotFoundError(f"no avray checkpoint ({STATE_FILE}) under {uri}")
    folder = (direct or sorted(found, key=lambda info: info.mtime))[-1].path.rsplit("/", 1)[0]
    local = Path(tempfile.mkdtemp(prefix="avray-checkpoint-"))
    # Weights can be gigabytes: the copy lasts as long as the process that asked for it.
    atexit.register(shutil.rmtree, local, ignore_errors=True)
    for name in (STATE_FILE, CONFIG_FILE):
        with fs.open_input_stream(f"{folder}/{name}") as remote:
            (local / name).write_bytes(remote.read())
    return local
