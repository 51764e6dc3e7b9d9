import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from avray.data.sources import SourceError, list_videos

EXT = (".mp4", ".mkv")


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_folder_per_class_gives_labels(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(2):
            touch(tmp_path / cls / f"{i}.mp4")
    touch(tmp_path / "dog" / "notes.txt")
    touch(tmp_path / "dog" / "UPPER.MKV")
    refs = list_videos(str(tmp_path), EXT)
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
    refs = list_videos(str(tmp_path), EXT)
    assert len(refs) == 2 and all(r.label is None for r in refs)


def test_csv_manifest_resolves_relative_paths(tmp_path):
    touch(tmp_path / "v" / "a.mp4")
    (tmp_path / "m.csv").write_text(f"path,label\nv/a.mp4,speech\n{tmp_path}/v/b.mp4,music\n")
    refs = list_videos(str(tmp_path / "m.csv"), EXT)
    assert [(r.uri, r.label) for r in refs] == [(f"{tmp_path}/v/a.mp4", "speech"), (f"{tmp_path}/v/b.mp4", "music")]


def test_parquet_manifest_without_labels(tmp_path):
    pq.write_table(pa.table({"path": ["s3://bucket/a.mp4", "rel.mp4"]}), tmp_path / "m.parquet")
    refs = list_videos(str(tmp_path / "m.parquet"), EXT)
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
