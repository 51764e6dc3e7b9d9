import os

import pytest

from avray.storage import join_uri, normalise_uri


@pytest.mark.parametrize(
    "written, normal",
    [
        ("s3://bucket/lists/../videos//a.mp4", "s3://bucket/videos/a.mp4"),
        ("s3://bucket/./a.mp4", "s3://bucket/a.mp4"),
        ("s3://bucket/../../a.mp4", "s3://bucket/a.mp4"),
        ("/data/x/../v//a.mp4", "/data/v/a.mp4"),
        ("file:///data/./v/a.mp4", "/data/v/a.mp4"),
        ("v/a.mp4", os.path.join(os.getcwd(), "v/a.mp4")),
        ("gs://bucket/../a.mp4", "gs://bucket/../a.mp4"),
    ],
)
def test_one_spelling_per_location(written, normal):
    assert normalise_uri(written) == normal


def test_a_colon_in_a_relative_name_is_no_scheme():
    assert join_uri("/data", "take:2.mp4") == "/data/take:2.mp4"
    assert join_uri("s3://b/lists", "../v/a.mp4") == "s3://b/lists/../v/a.mp4"
