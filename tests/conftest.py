import contextlib
import os
import sys
import threading

# Ray Train's controller polls workers every 2 s by default; tests want it snappier.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
# Ray Train watches for cloud nodes being drained (spot preemption) with an actor of its own
# per worker group: nothing here is ever drained, and each such actor is a process to start.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# No traffic beyond 127.0.0.1: Ray's dashboard would otherwise report usage to ray.io.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402

from avray.cluster import DASHBOARD_PORT, free_port  # noqa: E402

_EXIT_STATUS = pytest.StashKey[int]()
# Ray's default dashboard port, held while the tests run: every cluster they start, in this
# process or in a workflow's, takes a free port instead (avray.cluster.local_dashboard_port),
# so the clusters of two pytest-xdist workers never race for it.
_DASHBOARD_PORT_HELD = pytest.StashKey[object]()


def pytest_configure(config):
    import socket

    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", DASHBOARD_PORT))
        holder.listen()
    except OSError:  # held already: by the xdist controller, or a Ray the user runs
        holder.close()
        return
    config.stash[_DASHBOARD_PORT_HELD] = holder


# Modules whose tests share the session's ``uninterrupted_run`` (a two-node training run): one
# pytest-xdist worker runs them all, so it is built once.
SHARING_UNINTERRUPTED_RUN = ("tests/train/test_pretrain.py", "tests/cluster/test_node_loss.py")


def pytest_xdist_make_scheduler(config, log):
    """Under ``pytest -n N`` (``make test``): each test module runs in one worker, so its
    module-scoped fixtures (a trained model, a corpus) are built once, and the modules of
    :data:`SHARING_UNINTERRUPTED_RUN` in the same one. (``--dist loadgroup`` with groups set
    here would say the same, but pytest 9 no longer sees the group xdist 3.8 adds to a test's
    id, and every test went its own way.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "uninterrupted_run" if module in SHARING_UNINTERRUPTED_RUN else module

    return ByModule(config, log)


def pytest_collection_modifyitems(items):
    stray = {item.nodeid.split("::")[0] for item in items if "uninterrupted_run" in item.fixturenames}
    stray -= set(SHARING_UNINTERRUPTED_RUN)
    if stray:
        raise pytest.UsageError(f"add {sorted(stray)} to SHARING_UNINTERRUPTED_RUN in tests/conftest.py")


# A test still running this long before its timeout prints the Python stacks of every Ray
# process (py-spy): a Ray hang on CI leaves its cause in the failure report, not only the
# driver's wait.
RAY_STACKS_BEFORE_TIMEOUT_S = 60


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item):
    marker = item.get_closest_marker("timeout")
    limit = float(marker.args[0] if marker and marker.args else item.config.getini("timeout") or 0)
    timer = None
    if limit >= 2 * RAY_STACKS_BEFORE_TIMEOUT_S:
        timer = threading.Timer(limit - RAY_STACKS_BEFORE_TIMEOUT_S, _print_ray_stacks, args=(item.nodeid,))
        timer.daemon = True
        timer.start()
    yield
    if timer is not None:
        timer.cancel()


def _print_ray_stacks(nodeid: str) -> None:
    import subprocess

    import psutil

    py_spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    print(f"\n[conftest] {nodeid} is near its timeout; the stacks of every Ray process:", file=sys.stderr)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        command = " ".join(proc.info["cmdline"] or [])
        if not command.startswith("ray::"):
            continue
        try:
            dump = subprocess.run(
                [py_spy, "dump", "--pid", str(proc.info["pid"])], capture_output=True, text=True, timeout=20
            )
            print(f"== {proc.info['pid']} {command[:100]}\n{dump.stdout or dump.stderr}", file=sys.stderr)
        except (OSError, subprocess.TimeoutExpired) as err:
            print(f"== {proc.info['pid']} {command[:100]}: {err}", file=sys.stderr)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    session.config.stash[_EXIT_STATUS] = int(session.exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the test process as soon as pytest has reported, skipping the interpreter's
    teardown. This process starts and stops Ray a dozen times (own_cluster), and a process
    that does is known to crash at exit in Ray's native threads (ray-project/ray#31145):
    CI once saw all tests pass, then "Segmentation fault" as the exit status. A workflow
    starts Ray once and exits normally; tests/cluster and tests/test_security check that."""
    if _EXIT_STATUS in config.stash:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[_EXIT_STATUS])


def _start_local():
    import ray

    # "local": a cluster of its own, never one that another process on the machine started.
    # The dashboard serves the State API that Ray Train polls (see avray.cli.init_ray).
    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_port=free_port(), log_to_driver=False)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray cluster (2 CPUs, as on the CI machine) shared by the tests that need it."""
    import ray

    if not ray.is_initialized():
        _start_local()
    yield ray
    ray.shutdown()


@contextlib.contextmanager
def own_cluster(head_cpus: float, *node_cpus: float, runtime_env: dict | None = None, **head_args):
    """A multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``), joined by this
    process with ``runtime_env``; the shared local cluster, if it was running, is started again
    afterwards."""
    import ray
    from ray.cluster_utils import Cluster

    was_local = ray.is_initialized()
    ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": head_cpus, "include_dashboard": True, "dashboard_port": free_port(), **head_args},
    )
    try:
        for cpus in node_cpus:
            cluster.add_node(num_cpus=cpus)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, runtime_env=runtime_env)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if was_local:
            _start_local()


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


@pytest.fixture(scope="session")
def fault_corpus(tmp_path_factory):
    from tests.tiny import make_tiny_corpus

    return make_tiny_corpus(tmp_path_factory.mktemp("fault-corpus"))


@pytest.fixture(scope="session")
def uninterrupted_run(fault_corpus, tmp_path_factory):
    """``FAULT_RUN`` without a fault, its two workers on two nodes: the result a run that
    loses a worker (tests/train) or a node (tests/cluster) must end on."""
    from avray.train.trainer import pretrain
    from tests.tiny import FAULT_RUN, tiny_config

    tmp = tmp_path_factory.mktemp("uninterrupted")
    with own_cluster(1, 1):
        cfg = tiny_config(tmp, *FAULT_RUN, "train.cpus_per_worker=1", "train.placement_strategy=SPREAD")
        return pretrain(cfg, fault_corpus, str(tmp / "run"), track=False)
