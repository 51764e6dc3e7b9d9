"""The S3 test server says why it cannot serve, instead of failing writes with InternalError."""

from types import SimpleNamespace

import pytest

from tests import s3server


def test_a_nearly_full_disk_is_refused_before_seaweedfs_starts(tmp_path, monkeypatch):
    """Measured on a 40 MiB tmpfs with 0.4 MiB (1 %) free: SeaweedFS started, then every PutObject
    failed with a bare InternalError after about 30 s per attempt. A 99.5 %-full disk is named."""
    total = 100 << 30
    full = SimpleNamespace(total=total, used=total - (500 << 20), free=500 << 20)
    monkeypatch.setattr(s3server.shutil, "disk_usage", lambda _: full)
    monkeypatch.setattr(s3server, "weed_binary", lambda: pytest.fail("SeaweedFS started on a full disk"))
    with pytest.raises(RuntimeError, match=r"has 500 MiB free of 100.0 GiB; SeaweedFS refuses writes under 1 % free"):
        with s3server.seaweedfs(tmp_path / "weed"):
            pass
