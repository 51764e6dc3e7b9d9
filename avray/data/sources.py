"""Where videos come from: a local folder, a manifest (CSV/parquet), or an ``s3://`` prefix.

Every source resolves to a list of :class:`VideoRef` plus the ``pyarrow.fs`` filesystem
that reads them, so the decoder never needs to know whether bytes come from disk or S3.
Credentials follow the standard AWS chain (environment, ``~/.aws``, instance role);
``endpoint_override`` points at an S3-compatible server (MinIO, SeaweedFS, ...).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from avray.data.labels import case_variants_note, label_or_none
from avray.data.report import DUPLICATE, NO_PATH, UNLISTABLE, SkipReport
from avray.storage import SourceError, filesystem_for, join_uri, normalise_uri

MANIFEST_SUFFIXES = (".csv", ".parquet")


@dataclass(frozen=True)
class VideoRef:
    """One video: ``uri`` its one name (an absolute local path, or ``s3://bucket/key``), ``label`` or None."""

    uri: str
    label: str | None = None


@dataclass(frozen=True)
class Listing:
    """The videos of a source, each once, and what listing left out and noticed."""

    videos: list[VideoRef]
    report: SkipReport


def _to_uri(fs: pafs.FileSystem, path: str) -> str:
    return f"s3://{path}" if isinstance(fs, pafs.S3FileSystem) else path


def list_videos(uri: str, extensions: Sequence[str], endpoint_override: str | None = None) -> Listing:
    """Every video under ``uri``: a folder (recursive), a manifest file, or an s3:// prefix.

    In a folder-per-class layout (``root/<class>/<video>``, as UCF101) the label is the
    class folder's name. A manifest has a ``path`` column (absolute, s3://, or relative to
    the manifest's folder) and an optional ``label`` column. Sorted, so runs are repeatable;
    labels that differ only by case are noted in the report (:func:`case_variants_note`).
    """
    listing = _list(uri, extensions, endpoint_override)
    note = case_variants_note(ref.label for ref in listing.videos)
    if note:
        listing.report.notes.append(note)
    return listing


def _list(uri: str, extensions: Sequence[str], endpoint_override: str | None) -> Listing:
    fs, path = filesystem_for(uri, endpoint_override)
    try:
        info = fs.get_file_info(path)
    except OSError as err:
        raise SourceError(f"cannot reach data source {uri!r}: {err}") from None
    if info.type == pafs.FileType.File:
        if not path.lower().endswith(MANIFEST_SUFFIXES):
            raise SourceError(
                f"{uri!r} is a file but not a manifest: give a folder, an s3:// prefix, "
                f"or a .csv/.parquet manifest with a 'path' column"
            )
        return _read_manifest(fs, path, uri)
    # S3 has no folders: an empty prefix is reported below as "no videos".
    if info.type != pafs.FileType.Directory and not isinstance(fs, pafs.S3FileSystem):
        raise SourceError(f"data path {uri!r} does not exist")
    wanted = tuple(e.lower() for e in extensions)
    report = SkipReport()
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            found = _walk_local(path, wanted, report)
        else:
            entries = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
            found = [e.path for e in entries if e.type == pafs.FileType.File and e.path.lower().endswith(wanted)]
    except OSError as err:
        raise SourceError(f"cannot list data source {uri!r}: {err}") from None
    files = sorted(found)
    if not files:
        raise SourceError(f"no videos with extensions {', '.join(extensions)} under {uri!r}")
    relative = [PurePosixPath(f).relative_to(path).parts for f in files]
    # Labels come from folders only when every video sits exactly one folder down.
    per_class = all(len(parts) == 2 for parts in relative)
    videos = [
        VideoRef(
            uri=printable_path(_to_uri(fs, f)), label=label_or_none(printable_path(parts[0])) if per_class else None
        )
        for f, parts in zip(files, relative)
    ]
    return Listing(videos, report)


def _walk_local(root: str, wanted: tuple[str, ...], report: SkipReport) -> list[str]:
    """Every entry under ``root`` whose name ends with one of ``wanted``, regular file or not.

    pyarrow's recursive selector is no good on a hostile folder: it follows a symlink loop
    (``loop -> .``) until the kernel refuses, listing every file once per level (41 times),
    and two loops in one folder multiply that into a walk that never ends; one name that
    is not UTF-8 makes it raise. Here each real directory is entered once (known by device
    and inode; the root's ancestors count as entered, so ``up -> ../..`` is not followed),
    and entries with a video name that are not regular files (FIFOs, dangling or looping
    symlinks) are listed all the same, so that probing reports them instead of the listing
    hiding them. A folder named like a video (``clips.mp4/``) is a folder. A folder below
    ``root`` that cannot be listed (no permission) goes into ``report`` and the walk goes on;
    ``root`` itself unlistable raises.
    """
    entered = {_identity(ancestor) for ancestor in PurePosixPath(os.path.realpath(root)).parents}
    found: list[str] = []
    folders = [root]
    while folders:
        folder = folders.pop()
        identity = _identity(folder)
        if identity in entered:
            continue
        entered.add(identity)
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if _is_folder(entry):
                        folders.append(entry.path)
                    elif entry.name.lower().endswith(wanted):
                        found.append(entry.path)
        except OSError as err:
            if folder == root:
                raise
            report.add(printable_path(folder), UNLISTABLE, f"folder not listed, its videos left out: {err.strerror}", 0)
    return found


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a symlink loop (ELOOP): not a folder, listed so that probing reports it
        return False


def _identity(folder: str | os.PathLike) -> tuple[int, int]:
    info = os.stat(folder)
    return info.st_dev, info.st_ino


def printable_path(path: str) -> str:
    """``path`` as valid UTF-8: bytes of a name that is not UTF-8 are written as ``\\xNN``.

    Paths travel in Arrow string columns, which must be UTF-8; Python keeps such bytes as
    lone surrogates, which Arrow refuses. The printable form names no file: probing finds
    the original (:func:`unprintable_original`) and reports it instead of decoding it.
    """
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def unprintable_original(path: str) -> str | None:
    """The file whose :func:`printable_path` is ``path``, when ``path`` was made that way."""
    if "\\x" not in path or os.path.lexists(path):
        return None
    original = re.sub(r"\\x([89a-f][0-9a-f])", lambda m: chr(0xDC00 + int(m.group(1), 16)), path)
    return original if original != path and os.path.lexists(original) else None


def _read_manifest(fs: pafs.FileSystem, path: str, uri: str) -> Listing:
    """The manifest's videos in its order, each once: paths resolved against the manifest's
    folder and normalised (:func:`~avray.storage.normalise_uri`), so that ``../v/a.mp4`` and
    ``/data/v/a.mp4`` are one video. A row with an empty path, and one naming a video an
    earlier row names, are reported as ``<manifest> row N`` (N counted from 1 after the header)."""
    try:
        with fs.open_input_file(path) as handle:
            table = pq.read_table(handle) if path.lower().endswith(".parquet") else pacsv.read_csv(handle)
    except (OSError, pa.ArrowInvalid) as err:
        raise SourceError(f"cannot read manifest {uri!r}: {err}") from None
    if "path" not in table.column_names:
        raise SourceError(f"manifest {uri!r} needs a 'path' column; it has {table.column_names}")
    base = uri.rsplit("/", 1)[0] if uri.startswith("s3://") else os.path.dirname(os.path.abspath(path))
    paths = table.column("path").to_pylist()
    labels = table.column("label").to_pylist() if "label" in table.column_names else [None] * len(paths)
    report = SkipReport()
    first: dict[str, tuple[int, str | None]] = {}  # video -> (row, label) where first listed
    videos: list[VideoRef] = []
    for row, (entry, raw_label) in enumerate(zip(paths, labels), start=1):
        where = f"{uri} row {row}"
        if entry is None or not str(entry).strip():
            report.add(where, NO_PATH, "empty 'path' cell", clips=0)
            continue
        # A name is kept as written, spaces and all: " a.mp4" may be a file's real name.
        video, label = normalise_uri(join_uri(base, str(entry))), label_or_none(raw_label)
        if video in first:
            kept_row, kept_label = first[video]
            other = "" if kept_label == label else f"; labelled {label!r} here, {kept_label!r} there, which is kept"
            report.add(where, DUPLICATE, f"{video} again, first listed in row {kept_row}{other}", clips=0)
            continue
        first[video] = (row, label)
        videos.append(VideoRef(uri=video, label=label))
    if not videos:
        raise SourceError(f"manifest {uri!r} lists no videos")
    return Listing(videos, report)
