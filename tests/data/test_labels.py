"""A missing label is None wherever clips go: decoded from videos, held in the object store,
written as prepared shards and read back (shards of older versions included)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from avray.config import load_config
from avray.data.labels import batch_labels, label_column, label_or_none, labelled_count
from avray.data.pipeline import load_clips
from avray.data.shards import read_prepared, write_prepared
from tests.media import make_good_video
from tests.tiny import TINY


def test_every_form_of_a_missing_label_is_none():
    for missing in (None, float("nan"), np.float32("nan"), np.float64("nan"), pa.NA, "", "  "):
        assert label_or_none(missing) is None, repr(missing)
    assert label_or_none("cat") == "cat" and label_or_none(3) == "3" and label_or_none(" dog ") == "dog"


def test_a_label_column_stays_a_string_column_when_every_label_is_missing():
    column = label_column([None, float("nan")])
    assert column.type == pa.string() and column.to_pylist() == [None, None]


def test_batch_labels_mends_the_nan_of_an_all_null_column():
    assert batch_labels({"label": np.array([np.nan, np.nan], np.float32)}).tolist() == [None, None]
    assert labelled_count(["a", None, "b", "a"]) == (3, 2)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """Four videos, two of them labelled: a manifest whose label column has gaps."""
    root = tmp_path_factory.mktemp("partly-labelled")
    for i in range(4):
        make_good_video(root / f"v{i}.mp4", seconds=2.5, fps=12, size=48, sample_rate=16000, seed=i)
    (root / "videos.csv").write_text("path,label\nv0.mp4,cat\nv1.mp4,\nv2.mp4,dog\nv3.mp4,\n")
    return root / "videos.csv"


def _labels_by_source(dataset) -> dict[str, set]:
    found: dict[str, set] = {}
    for batch in dataset.iter_batches(batch_size=2, batch_format="numpy"):
        for source, label in zip(batch["source"], batch["label"]):
            found.setdefault(str(source).rsplit("/", 1)[1], set()).add(label)
    return found


@pytest.mark.parametrize("labels", ["none", "some"])
def test_labels_survive_decoding_the_object_store_and_shards(ray_local, manifest, tmp_path, labels):
    cfg = load_config(None, TINY).data
    source = str(manifest) if labels == "some" else str(manifest.parent)
    expected = (
        {"v0.mp4": {"cat"}, "v1.mp4": {None}, "v2.mp4": {"dog"}, "v3.mp4": {None}}
        if labels == "some"
        else {f"v{i}.mp4": {None} for i in range(4)}
    )
    decoded = load_clips(source, cfg)
    assert _labels_by_source(decoded.dataset) == expected
    assert _labels_by_source(decoded.dataset.materialize()) == expected
    write_prepared(decoded, str(tmp_path / "shards"), cfg)
    assert _labels_by_source(read_prepared(str(tmp_path / "shards"), cfg).dataset) == expected
    for shard in (tmp_path / "shards").glob("*.parquet"):
        assert pq.read_schema(shard).field("label").type == pa.string()


def test_shards_with_a_null_label_column_read_as_unlabelled(ray_local, manifest, tmp_path):
    """Shards that an older avray wrote for an unlabelled corpus: an Arrow null column."""
    cfg = load_config(None, TINY).data
    write_prepared(load_clips(str(manifest.parent), cfg), str(tmp_path / "shards"), cfg)
    for shard in (tmp_path / "shards").glob("*.parquet"):
        table = pq.read_table(shard)
        pq.write_table(
            table.set_column(table.schema.get_field_index("label"), "label", pa.nulls(table.num_rows)), shard
        )
    for batch in read_prepared(str(tmp_path / "shards"), cfg).dataset.iter_batches(batch_format="numpy"):
        assert batch_labels(batch).tolist() == [None] * len(batch["label"])
