"""S3 for real: a SeaweedFS server on 127.0.0.1 that enforces credentials."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from avray.config import DataConfig
from avray.data.decode import decode_clip, probe
from avray.data.report import NOT_FOUND, SkipError
from avray.data.sources import SourceError, list_videos
from avray.storage import filesystem_for
from tests.media import make_good_video

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bucket(s3_server, tmp_path_factory):
    local = tmp_path_factory.mktemp("s3src")
    client = s3_server.client()
    client.create_bucket(Bucket="corpus")
    for cls in ("a", "b"):
        for i in range(2):
            path = local / f"{cls}{i}.mp4"
            make_good_video(path, seconds=3.0, fps=24, size=64, sample_rate=16000, seed=i)
            client.upload_file(str(path), "corpus", f"videos/{cls}/{i}.mp4")
    client.put_object(Bucket="corpus", Key="videos/a/broken.mp4", Body=b"\x00" * 1000)
    client.put_object(
        Bucket="corpus",
        Key="lists/manifest.csv",
        Body=b"path,label\n../videos/a/0.mp4,a\ns3://corpus/videos/b/1.mp4,b\n",
    )
    return "corpus"


def test_lists_an_s3_prefix_with_folder_labels(s3_env, bucket):
    refs = list_videos("s3://corpus/videos", (".mp4",)).videos  # endpoint from AWS_ENDPOINT_URL
    assert [(r.uri, r.label) for r in refs] == [
        ("s3://corpus/videos/a/0.mp4", "a"),
        ("s3://corpus/videos/a/1.mp4", "a"),
        ("s3://corpus/videos/a/broken.mp4", "a"),
        ("s3://corpus/videos/b/0.mp4", "b"),
        ("s3://corpus/videos/b/1.mp4", "b"),
    ]


def test_manifest_on_s3_with_s3_paths_decodes(s3_env, bucket):
    refs = list_videos("s3://corpus/lists/manifest.csv", (".mp4",)).videos
    # "../videos/a/0.mp4" beside lists/manifest.csv is the key videos/a/0.mp4, spelt once.
    assert [(r.uri, r.label) for r in refs] == [
        ("s3://corpus/videos/a/0.mp4", "a"),
        ("s3://corpus/videos/b/1.mp4", "b"),
    ]
    cfg = DataConfig(endpoint_override=s3_env.endpoint)
    for ref in refs:
        assert probe(ref.uri, cfg).duration == pytest.approx(3.0, abs=0.1)
        clip = decode_clip(ref.uri, 0.5, cfg)
        assert clip.video.shape == (16, 64, 64, 3) and clip.has_audio and np.abs(clip.audio).max() > 0.01


def test_wrong_credentials_and_missing_keys_are_reported(s3_server, bucket, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SkipError) as err:
        probe("s3://corpus/videos/a/missing.mp4", DataConfig(endpoint_override=s3_server.endpoint))
    assert err.value.reason == NOT_FOUND
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(SourceError, match="cannot"):
        list_videos("s3://corpus/videos", (".mp4",), s3_server.endpoint)


@pytest.mark.slow
def test_prepare_reads_and_writes_s3(s3_env, bucket):
    """The prepare CLI exactly as a user runs it: credentials and endpoint from the environment."""
    s3_server = s3_env
    env = {**os.environ, "RAY_ADDRESS": ""}
    out = subprocess.run(
        [
            sys.executable,
            "workflows/prepare.py",
            "--data",
            "s3://corpus/videos",
            "--output",
            "s3://corpus/prepared",
            "--set",
            "data.clips_per_video=2",
            "--set",
            f"data.endpoint_override={s3_server.endpoint}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "wrote 8 clips" in out.stdout and "unreadable" in out.stdout and "broken.mp4" in out.stdout
    fs, path = filesystem_for("s3://corpus/prepared", s3_server.endpoint)
    table = pads.dataset(path, filesystem=fs, format="parquet").to_table()
    assert table.num_rows == 8 and set(table.column("label").to_pylist()) == {"a", "b"}
    with fs.open_input_stream(f"{path}/_avray_clips.json") as handle:
        meta = json.loads(handle.read())
    assert list(meta["skipped"]) == ["s3://corpus/videos/a/broken.mp4"]
