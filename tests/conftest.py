import os

# Ray Train's controller polls workers every 2 s by default; tests want it snappier.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray cluster (2 CPUs, as on the CI machine) shared by the tests that need it."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    from tests.s3server import seaweedfs

    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Standard AWS environment variables pointing at the test server (what a user exports)."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server
