"""Start-up checks (avray.preflight): each failure within seconds, in one line naming what to fix."""

import contextlib
import http.server
import json
import socket
import threading
import time

import pytest

from avray.config import DataConfig, load_config, with_overrides
from avray.data.shards import PREPARED_MARKER
from avray.data.sources import SourceError
from avray.preflight import (
    PreflightError,
    bundles_that_fit,
    check_data,
    check_output,
    check_resources,
    check_tracking_server,
    decode_ask,
    training_ask,
    trial_ask,
    without_userinfo,
)

# Generous: a check that fails fast takes well under a second here; pyarrow's and MLflow's
# default retries take from seconds to minutes.
FAST_S = 15


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: one the OS just handed out, released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_videos_manifests_and_prepared_clips_pass(tmp_path):
    (tmp_path / "videos" / "cat").mkdir(parents=True)
    (tmp_path / "videos" / "cat" / "a.mp4").write_bytes(b"x")
    (tmp_path / "list.csv").write_text("path\nvideos/cat/a.mp4\n")
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / PREPARED_MARKER).write_text("{}")
    for data in ("videos", "list.csv", "clips"):
        check_data(str(tmp_path / data), DataConfig())


@pytest.mark.parametrize(
    "data, files, message",
    [
        ("missing", {}, "does not exist"),
        ("", {}, "no videos with extensions"),
        ("", {"notes.txt": b"x"}, "no videos with extensions"),
        ("m.csv", {"m.csv": b""}, "cannot read manifest"),
        ("m.parquet", {"m.parquet": b"not parquet"}, "cannot read manifest"),
        ("m.csv", {"m.csv": b"path\n"}, "lists no videos"),
    ],
    ids=["missing path", "empty folder", "no videos", "empty manifest", "unreadable manifest", "manifest without rows"],
)
def test_unusable_local_data_says_what_is_wrong(tmp_path, data, files, message):
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    data = str(tmp_path / data)
    with pytest.raises(SourceError) as err:
        check_data(data, DataConfig())
    assert message in one_line(err) and data in str(err.value)


@pytest.fixture
def dead_s3_endpoint(monkeypatch):
    """The standard AWS variables, pointing at an endpoint where nothing listens."""
    endpoint = f"http://127.0.0.1:{closed_port()}"
    for key, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "AKIAPREFLIGHT",
        "AWS_SECRET_ACCESS_KEY": "preflight-secret",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    return endpoint


@pytest.mark.parametrize(
    "check",
    [
        lambda: check_data("s3://corpus/videos", DataConfig()),
        lambda: check_output("s3://corpus/runs/1"),
    ],
    ids=["data", "output"],
)
def test_an_unreachable_s3_endpoint_fails_fast_and_says_what_to_set(dead_s3_endpoint, check):
    started = time.monotonic()
    with pytest.raises(PreflightError) as err:
        check()
    assert time.monotonic() - started < FAST_S
    message = one_line(err)
    assert message.startswith(f"cannot reach the S3 endpoint {dead_s3_endpoint} for s3://corpus/")
    assert "AWS_ENDPOINT_URL" in message and "data.endpoint_override" in message
    assert "preflight-secret" not in message


def test_the_configured_endpoint_is_the_one_checked(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    endpoint = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(PreflightError, match=f"cannot reach the S3 endpoint {endpoint} "):
        check_data("s3://corpus/videos", DataConfig(endpoint_override=endpoint))


@pytest.fixture(scope="module")
def bucket(s3_server):
    client = s3_server.client()
    client.create_bucket(Bucket="preflight")
    client.put_object(Bucket="preflight", Key="videos/a/1.mp4", Body=b"x")
    client.put_object(Bucket="preflight", Key="lists/empty.csv", Body=b"path\n")
    return "preflight"


def test_s3_data_and_outputs_that_exist_pass(s3_env, bucket):
    check_data("s3://preflight/videos", DataConfig())
    check_output("s3://preflight/runs/not-yet-written")


def test_an_s3_output_these_credentials_may_read_but_not_write_is_refused(s3_server, bucket, monkeypatch):
    for key, value in s3_server.read_only_env().items():
        monkeypatch.setenv(key, value)
    check_data("s3://preflight/videos", DataConfig())  # reading is allowed
    started = time.monotonic()
    with pytest.raises(PreflightError) as err:
        check_output("s3://preflight/runs/1")
    assert time.monotonic() - started < FAST_S
    assert one_line(err).startswith(
        f"the S3 endpoint {s3_server.endpoint} does not let these credentials write to s3://preflight/runs/1 ("
    )
    assert "grant them s3:PutObject and s3:DeleteObject there" in one_line(err)


def test_the_s3_write_check_leaves_only_the_output_folder_behind(s3_env, bucket):
    check_output("s3://preflight/runs/checked")
    listed = s3_env.client().list_objects_v2(Bucket="preflight", Prefix="runs/checked")
    assert [item["Key"] for item in listed["Contents"]] == ["runs/checked/"]  # pyarrow's folder marker


def test_s3_wrong_credentials_are_told_apart(s3_env, bucket, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    for check in (lambda: check_data("s3://preflight/videos", DataConfig()), lambda: check_output("s3://preflight/o")):
        with pytest.raises(PreflightError) as err:
            check()
        message = one_line(err)
        assert message.startswith(f"the S3 endpoint {s3_env.endpoint} refused the credentials for s3://preflight/")
        assert "AWS_SECRET_ACCESS_KEY" in message and "wrong-secret" not in message


def test_s3_missing_bucket_empty_prefix_and_empty_manifest(s3_env, bucket):
    for check in (
        lambda: check_data("s3://no-such-bucket/videos", DataConfig()),
        lambda: check_output("s3://no-such-bucket/runs"),
    ):
        with pytest.raises(
            PreflightError,
            match=f"bucket 'no-such-bucket' does not exist at the S3 endpoint "
            f"{s3_env.endpoint}: create it, or fix s3://no-such-bucket/",
        ):
            check()
    with pytest.raises(SourceError, match="no videos with extensions .* under 's3://preflight/nothing'"):
        check_data("s3://preflight/nothing", DataConfig())
    with pytest.raises(SourceError, match="lists no videos"):
        check_data("s3://preflight/lists/empty.csv", DataConfig())


def test_a_local_output_must_be_a_folder_this_user_can_write(tmp_path):
    check_output(str(tmp_path / "new" / "run"))
    assert not (tmp_path / "new").exists()  # checked, not created
    (tmp_path / "taken").write_text("x")
    for output in (tmp_path / "taken", tmp_path / "taken" / "run"):
        with pytest.raises(PreflightError, match=f"{tmp_path / 'taken'} is a file, not a folder"):
            check_output(str(output))


class StatusHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request with the status its first path segment names: ``GET /503/health``."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.send_response(int(self.path.split("/")[1]))
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StatusHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_tracking_server_that_answers_passes(http_server):
    for status in (200, 401, 404):  # an auth proxy may guard /health: it answers all the same
        check_tracking_server(f"{http_server}/{status}")
    check_tracking_server(http_server.replace("http://", "https://") + "/200")  # TLS is MLflow's to judge
    with pytest.raises(PreflightError, match=r"\(HTTP 503 Service Unavailable\)"):
        check_tracking_server(f"{http_server}/503")


def test_an_unreachable_tracking_server_fails_fast_without_its_password():
    uri = f"http://mlflow-user:hunter2@127.0.0.1:{closed_port()}/prefix"
    started = time.monotonic()
    with pytest.raises(PreflightError) as err:
        check_tracking_server(uri)
    assert time.monotonic() - started < FAST_S
    message = one_line(err)
    assert message.startswith(f"MLflow tracking server {without_userinfo(uri)} does not answer (")
    assert "hunter2" not in message and "mlflow-user" not in message
    assert "tracking.tracking_uri" in message and "MLFLOW_TRACKING_URI" in message


def test_local_tracking_stores_need_no_server(tmp_path):
    for uri in (f"sqlite:///{tmp_path}/missing/mlflow.db", str(tmp_path / "mlruns"), f"file://{tmp_path}"):
        check_tracking_server(uri)


def test_userinfo_is_stripped_and_nothing_else():
    assert without_userinfo("https://user:p%40ss@host:5000/a?b=1") == "https://host:5000/a?b=1"
    assert without_userinfo("https://token@host/a") == "https://host/a"
    assert without_userinfo("http://host:5000") == "http://host:5000"


@pytest.mark.parametrize(
    "overrides, ask, words",
    [
        (
            ["train.cpus_per_worker=64"],
            training_ask,
            ["1 pretraining worker of (CPU 64) each", "train.cpus_per_worker=64"],
        ),
        (["train.use_gpu=true"], training_ask, ["1 pretraining worker of (CPU 1, GPU 1) each", "(CPU 2, GPU 0)"]),
        (["train.num_workers=3"], training_ask, ["3 pretraining workers of (CPU 1) each", "holds 2"]),
        (["tune.cpus_per_trial=4"], trial_ask, ["1 sweep trial of (CPU 4) each", "tune.cpus_per_trial=4"]),
        (["tune.gpus_per_trial=1"], trial_ask, ["1 sweep trial of (CPU 1, GPU 1) each", "tune.gpus_per_trial=1"]),
        (["data.cpus_per_decode_task=3"], decode_ask, ["1 decode task of (CPU 3) each", "data.cpus_per_decode_task=3"]),
    ],
)
def test_resources_the_cluster_cannot_give_are_refused_at_once(ray_local, overrides, ask, words):
    start = time.perf_counter()
    with pytest.raises(PreflightError) as err:
        check_resources(ask(load_config(None, overrides)))
    assert time.perf_counter() - start < FAST_S
    message = one_line(err)
    for word in [*words, "1 node: 1 x (CPU 2", "nothing autoscales it", "--ray-address"]:
        assert word in message, message


def test_resources_the_cluster_holds_pass(ray_local):
    cfg = load_config(None, ["train.num_workers=2", "tune.cpus_per_trial=2", "data.cpus_per_decode_task=0.5"])
    check_resources(training_ask(cfg), trial_ask(cfg), decode_ask(cfg))


@contextlib.contextmanager
def announced_autoscaler(key: str, value: bytes, namespace: str | None = None):
    """The record an autoscaler keeps in the GCS (``key`` in ``namespace``), written there:
    what avray reads to tell that the cluster autoscales, and how far."""
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    _internal_kv_put(key, value, namespace=namespace)
    try:
        yield
    finally:
        _internal_kv_del(key, namespace=namespace)


def test_an_autoscaling_cluster_gets_a_bounded_wait_and_then_the_reason(ray_local):
    from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS

    cfg = load_config(None, ["train.cpus_per_worker=4"])
    # Autoscaler v1's report on a cluster of a head and a node of the type "cpu".
    report = {"autoscaler_report": {"node_type_mapping": {"0a1b": "head", "2c3d": "cpu"}}, "load_metrics_report": {}}
    with announced_autoscaler(DEBUG_AUTOSCALING_STATUS, json.dumps(report).encode()):
        start = time.perf_counter()
        with pytest.raises(PreflightError) as err:
            check_resources(training_ask(cfg), wait_s=1)
        waited = time.perf_counter() - start
    assert 1 <= waited < FAST_S
    assert "1 pretraining worker of (CPU 4) each" in one_line(err)
    assert "its autoscaler added none for it in 1 s" in one_line(err)


def test_what_the_autoscalers_node_types_cannot_hold_is_refused_without_waiting(ray_local):
    from ray._raylet import GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, GCS_AUTOSCALER_STATE_NAMESPACE
    from ray.core.generated.autoscaler_pb2 import ClusterConfig, NodeGroupConfig

    node_types = ClusterConfig(
        node_group_configs=[
            NodeGroupConfig(name="head", resources={"CPU": 2}, max_count=1),
            NodeGroupConfig(name="cpu", resources={"CPU": 8}, max_count=2),
        ]
    )
    cfg = load_config(None, ["train.cpus_per_worker=8", "train.num_workers=3"])
    with announced_autoscaler(
        GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, node_types.SerializeToString(), GCS_AUTOSCALER_STATE_NAMESPACE
    ):
        with pytest.raises(PreflightError) as err:
            check_resources(training_ask(cfg), wait_s=600)
        assert "its autoscaler adds at most 1 x (CPU 2), 2 x (CPU 8)" in one_line(err)
        # Two such workers fit the node types: the cluster may yet grow to hold them.
        with pytest.raises(PreflightError, match="added none for it in 1 s"):
            check_resources(training_ask(with_overrides(cfg, {"train.num_workers": 2})), wait_s=1)


def test_bundles_that_fit_counts_whole_bundles_per_node():
    nodes = [{"CPU": 3.0, "GPU": 1.0}, {"CPU": 8.0}]
    assert bundles_that_fit({"CPU": 2}, nodes) == 1 + 4
    assert bundles_that_fit({"CPU": 1, "GPU": 1}, nodes) == 1
    assert bundles_that_fit({"CPU": 0.5, "GPU": 0}, nodes) == 6 + 16
    assert bundles_that_fit({"GPU": 2}, nodes) == 0
