import contextlib
import os

# Ray Train's controller polls workers every 2 s by default; tests want it snappier.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import pytest  # noqa: E402


def _start_local():
    import ray

    # "local": a cluster of its own, never one that another process on the machine started.
    # The dashboard serves the State API that Ray Train polls (see avray.cli.init_ray).
    ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=False)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray cluster (2 CPUs, as on the CI machine) shared by the tests that need it."""
    import ray

    if not ray.is_initialized():
        _start_local()
    yield ray
    ray.shutdown()


@contextlib.contextmanager
def own_cluster(head_cpus: float, *node_cpus: float, **head_args):
    """A multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``), joined by this
    process; the shared local cluster, if it was running, is started again afterwards."""
    import ray
    from ray.cluster_utils import Cluster

    was_local = ray.is_initialized()
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, "include_dashboard": True, **head_args})
    try:
        for cpus in node_cpus:
            cluster.add_node(num_cpus=cpus)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if was_local:
            _start_local()


@pytest.fixture
def ray_two_nodes():
    """Two Ray nodes of 1 CPU each on this machine."""
    with own_cluster(1, 1) as cluster:
        yield cluster


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
