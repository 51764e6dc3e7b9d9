import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from avray.data.sources import SourceError, list_videos

EXT = (".mp4", ".mkv")
DOG_NOTE = (
    "1 label(s) differ only by case and stay separate classes: 'Dog' (1 video(s)), 'dog' (2 video(s)); "
    "rename them in the manifest or folders to merge them"
)


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_folder_per_class_gives_labels(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(2):
            touch(tmp_path / cls / f"{i}.mp4")
    touch(tmp_path / "dog" / "notes.txt")
    touch(tmp_path / "dog" / "UPPER.MKV")
    refs = list_videos(str(tmp_path), EXT).videos
    assert [(r.uri.rsplit("/", 2)[-2:], r.label) for r in refs] == [
        (["cat", "0.mp4"], "cat"),
        (["cat", "1.mp4"], "cat"),
        (["dog", "0.mp4"], "dog"),
        (["dog", "1.mp4"], "dog"),
        (["dog", "UPPER.MKV"], "dog"),
    ]


def test_mixed_depths_give_no_labels(tmp_path):
    touch(tmp_path / "a.mp4")
    touch(tmp_path / "x" / "y" / "b.mp4")
    refs = list_videos(str(tmp_path), EXT).videos
    assert len(refs) == 2 and all(r.label is None for r in refs)


def test_csv_manifest_resolves_relative_paths(tmp_path):
    touch(tmp_path / "v" / "a.mp4")
    (tmp_path / "m.csv").write_text(f"path,label\nv/a.mp4,speech\n{tmp_path}/v/b.mp4,music\n")
    refs = list_videos(str(tmp_path / "m.csv"), EXT).videos
    assert [(r.uri, r.label) for r in refs] == [(f"{tmp_path}/v/a.mp4", "speech"), (f"{tmp_path}/v/b.mp4", "music")]


def test_parquet_manifest_without_labels(tmp_path):
    pq.write_table(pa.table({"path": ["s3://bucket/a.mp4", "rel.mp4"]}), tmp_path / "m.parquet")
    refs = list_videos(str(tmp_path / "m.parquet"), EXT).videos
    assert [(r.uri, r.label) for r in refs] == [("s3://bucket/a.mp4", None), (f"{tmp_path}/rel.mp4", None)]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: p, "no videos with extensions"),
        (lambda p: (touch(p / "x.txt"), p / "x.txt")[1], "not a manifest"),
        (lambda p: ((p / "m.csv").write_text("file\na.mp4\n"), p / "m.csv")[1], "needs a 'path' column"),
        (lambda p: ((p / "m.csv").write_text("path\n"), p / "m.csv")[1], "lists no videos"),
    ],
)
def test_unusable_sources_say_what_to_fix(tmp_path, setup, message):
    with pytest.raises(SourceError, match=message):
        list_videos(str(setup(tmp_path)), EXT)


def test_unsupported_scheme():
    with pytest.raises(SourceError, match="unsupported data location"):
        list_videos("gs://bucket/videos", EXT)


def test_a_manifest_lists_each_video_once_and_reports_every_row_it_drops(tmp_path):
    (tmp_path / "lists").mkdir()
    manifest = tmp_path / "lists" / "m.csv"
    manifest.write_text(
        "path,label\n"
        "../v/a.mp4,dog\n"
        f"{tmp_path}/v/a.mp4,dog\n"  # the same video by its absolute path
        "../v/./sub/../a.mp4,Dog\n"  # again, and labelled otherwise
        f"file://{tmp_path}//v/b.mp4, dog \n"
        ",cat\n"
        "../v/c.mp4,\n"
        "../v/d.mp4,Dog\n"
    )
    listing = list_videos(str(manifest), EXT)
    assert [(r.uri, r.label) for r in listing.videos] == [
        (f"{tmp_path}/v/a.mp4", "dog"),
        (f"{tmp_path}/v/b.mp4", "dog"),
        (f"{tmp_path}/v/c.mp4", None),
        (f"{tmp_path}/v/d.mp4", "Dog"),
    ]
    row = lambda n: f"{manifest} row {n}"  # noqa: E731
    assert listing.report.skipped == {
        row(2): ("duplicate", f"{tmp_path}/v/a.mp4 again, first listed in row 1"),
        row(3): (
            "duplicate",
            f"{tmp_path}/v/a.mp4 again, first listed in row 1; labelled 'Dog' here, 'dog' there, which is kept",
        ),
        row(5): ("no_path", "empty 'path' cell"),
    }
    assert listing.report.skipped_clips == 0
    assert listing.report.notes == [DOG_NOTE]


def test_class_folders_that_differ_only_by_case_are_noted(tmp_path):
    for name in ("Dog/0.mp4", "dog/0.mp4", "dog/1.mp4", "cat/0.mp4"):
        touch(tmp_path / name)
    listing = list_videos(str(tmp_path), EXT)
    assert sorted({r.label for r in listing.videos}) == ["Dog", "cat", "dog"]
    assert listing.report.summary().splitlines() == ["skipped: none", DOG_NOTE]
    assert list_videos(str(tmp_path / "dog"), EXT).report.notes == []


def test_an_unlistable_subfolder_is_reported_and_the_rest_listed(tmp_path, monkeypatch):
    touch(tmp_path / "open" / "a.mp4")
    touch(tmp_path / "locked" / "b.mp4")
    locked = tmp_path / "locked"
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):  # root reads every folder: its listing is made to fail as it would
            listdir = os.scandir

            def scandir(path):
                if os.fspath(path) == str(locked):
                    raise PermissionError(13, "Permission denied", str(path))
                return listdir(path)

            monkeypatch.setattr(os, "scandir", scandir)
        listing = list_videos(str(tmp_path), EXT)
    finally:
        locked.chmod(0o755)
    assert [r.uri for r in listing.videos] == [f"{tmp_path}/open/a.mp4"]
    assert listing.report.skipped == {
        str(locked): ("unlistable", "folder not listed, its videos left out: Permission denied")
    }
