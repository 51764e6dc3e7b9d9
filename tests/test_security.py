"""Security: credentials never reach an output, checkpoints cannot run code, and the Ray
cluster a workflow starts keeps token authentication on.

``test_no_credential_reaches_any_output`` runs ``workflows/pretrain.py`` as a user would, in
a shell holding recognisable fake secrets, each one really in use:

* ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``: the only keys the S3 server (SeaweedFS)
  accepts; the corpus is read from it and the run's checkpoints are written to it, as a
  cluster's runs are (an S3-compatible server, which Ray's own s3:// resolution cannot
  reach). The run must name its checkpoint by URI, in its output and in MLflow, and a new
  process must load the model back from there, leaving no local copy behind.
* ``RAY_AUTH_TOKEN`` with ``RAY_AUTH_MODE=token``: the local Ray cluster the workflow starts
  runs with token authentication; while the job runs, its GCS is probed over gRPC and must
  refuse a call without the token and one with a wrong token, and answer one with it.
* an MLflow password in the tracking URI (``http://avray:PASSWORD@host``, from the job's
  ``--config`` file): the MLflow server answers nothing but exactly that Basic-auth login,
  and the run must have reached it, finished.

``AWS_SESSION_TOKEN`` is not in that run: SeaweedFS refuses requests carrying a session token
it did not issue itself (ACCESS_DENIED), so temporary AWS credentials cannot run a job here.
``test_a_session_token_reaches_no_error_log_or_mlflow_run`` covers it where avray could show
it: the refused request's error and logs, and an MLflow run's params, tags and config.

Then every output is searched for every secret (raw, URL-encoded and base64-encoded whole,
and the base64 ``user:password`` of a Basic-auth header): the job's and the loader's stdout
and stderr; every file under the job's ``TMPDIR``/``RAY_TMPDIR`` (Ray's session folder: logs,
events, runtime resources), its ``HOME`` (caches, MLflow's files) and its working directory;
the MLflow server's database, artifacts and log; every object in every S3 bucket (the
checkpoints among them: uncompressed zips, searched as bytes).
Nothing is excluded: Ray 2.60 keeps a token given in ``RAY_AUTH_TOKEN`` in memory and
writes no token file. The test's own inputs (the ``--config`` file, the S3 server's
identities file) are outside the searched folders.
"""

from __future__ import annotations

import ast
import base64
import itertools
import os
import pickle
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import torch
import yaml

from avray.checkpoint import load_state
from avray.config import ConfigError, DataConfig, FrozenVideoConfig, load_config
from avray.models import load_model
from avray.models.frozen import load_module
from avray.preflight import PreflightError, check_data
from avray.tracking import start_job_run
from tests.s3server import seaweedfs
from tests.tiny import TINY, make_tiny_corpus

ROOT = Path(__file__).resolve().parents[1]
MLFLOW_USER = "avray"
SECRETS = {
    "AWS access key id": "AKIAAVRAYCANARY0KEY1",
    "AWS secret access key": "avrayCanary+Secret/AccessKey" + secrets.token_hex(6),
    "Ray token": "avraycanaryraytoken" + secrets.token_hex(22),
    "MLflow password": "avray-canary-mlflow-pw-" + secrets.token_hex(6),
}
JOB = [*TINY, "train.epochs=1", "train.num_workers=1", "data.val_fraction=0"]
RUNS = "s3://runs/pretrain-1"
# A new process loading the model from each location it names; prints embed_dim and size.
LOAD_AND_DESCRIBE = """
import sys
from avray.models import load_model
for location in sys.argv[1:]:
    model, cfg = load_model(location)
    print(cfg.model.embed_dim, sum(p.numel() for p in model.parameters()))
"""

# An MLflow tracking server (its Flask app, served by werkzeug) behind Basic auth: any
# request without exactly the login in $AVRAY_TEST_BASIC_AUTH gets 401. Prints its port.
MLFLOW_SERVER = """
import base64, os, sys
store = sys.argv[1]
os.environ.update(_MLFLOW_SERVER_FILE_STORE=f"sqlite:///{store}/mlflow.db", _MLFLOW_SERVER_SERVE_ARTIFACTS="true",
                  _MLFLOW_SERVER_ARTIFACT_DESTINATION=f"{store}/artifacts",
                  _MLFLOW_SERVER_ARTIFACT_ROOT="mlflow-artifacts:/")
from mlflow.server import app
from werkzeug.serving import make_server
login = "Basic " + base64.b64encode(os.environ.pop("AVRAY_TEST_BASIC_AUTH").encode()).decode()

def guarded(environ, start_response):
    if environ.get("HTTP_AUTHORIZATION") != login:
        start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="mlflow"'), ("Content-Length", "0")])
        return [b""]
    return app(environ, start_response)

server = make_server("127.0.0.1", 0, guarded, threaded=True)
print(server.server_port, flush=True)
server.serve_forever()
"""


def _forms(value: str) -> set[bytes]:
    return {value.encode(), quote(value, safe="").encode(), base64.b64encode(value.encode())}


def _needles() -> dict[str, set[bytes]]:
    needles = {name: _forms(value) for name, value in SECRETS.items()}
    needles["MLflow Basic-auth login"] = _forms(f"{MLFLOW_USER}:{SECRETS['MLflow password']}")
    return needles


def _files(folder: Path) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of every regular file under ``folder`` (sockets and links to folders skipped)."""
    for parent, _, names in os.walk(folder):
        for name in names:
            path = Path(parent) / name
            try:
                if stat.S_ISREG(path.stat().st_mode):
                    yield str(path), path.read_bytes()
            except OSError:  # a file Ray removed while we walked
                continue


def _s3_objects(client) -> Iterator[tuple[str, bytes]]:
    for bucket in client.list_buckets()["Buckets"]:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
            for obj in page.get("Contents", []):
                key = f"s3://{bucket['Name']}/{obj['Key']}"
                yield key, client.get_object(Bucket=bucket["Name"], Key=obj["Key"])["Body"].read()


def _leaks(outputs: Iterator[tuple[str, bytes]]) -> tuple[int, list[str]]:
    """(outputs searched, "secret in where: ...context..." for every hit)."""
    needles, searched, found = _needles(), 0, []
    for where, data in outputs:
        searched += 1
        for name, forms in needles.items():
            at = next((data.find(f) for f in forms if f in data), -1)
            if at >= 0:
                found.append(f"{name} in {where}: ...{data[max(0, at - 80) : at + 40]!r}...")
    return searched, found


def _start_mlflow(store: Path) -> subprocess.Popen:
    store.mkdir(parents=True)
    env = {**os.environ, "AVRAY_TEST_BASIC_AUTH": f"{MLFLOW_USER}:{SECRETS['MLflow password']}"}
    with open(store / "server.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", MLFLOW_SERVER, str(store)],
            env=env,
            cwd=store,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )


def _port_of(server: subprocess.Popen, store: Path) -> int:
    port = server.stdout.readline().strip()
    assert port.isdigit(), (store / "server.log").read_text()[-3000:]
    return int(port)


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def _gcs_answers(port: str, token: str | None) -> str:
    """Status name of an unauthenticated-or-not gRPC call to a Ray GCS (``OK`` if answered)."""
    import grpc

    metadata = [("authorization", f"Bearer {token}")] if token is not None else None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetAllNodeInfo")
        try:
            call(b"", metadata=metadata, timeout=10)
            return "OK"
        except grpc.RpcError as err:
            return err.code().name


def _probe_ray_auth(ray_tmp: Path, job: subprocess.Popen, results: dict) -> None:
    """Once the job's GCS is up: how it answers without a token, a wrong one and the right one."""
    while job.poll() is None:
        ports = [p.read_text().strip() for p in ray_tmp.glob("ray/session_*/gcs_server_port_*")]
        if ports and ports[0]:
            for _ in range(40):  # the port file can appear before the GCS answers
                answers = {
                    case: _gcs_answers(ports[0], token)
                    for case, token in (("no token", None), ("wrong token", "0" * 64), ("token", SECRETS["Ray token"]))
                }
                if "UNAVAILABLE" not in answers.values():
                    results.update(answers)
                    return
                time.sleep(0.25)
            return
        time.sleep(0.2)


def _kill_group(job: subprocess.Popen) -> None:
    """Whatever is left of the job's own process group (its Ray, if it did not shut down)."""
    try:
        os.killpg(job.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    job.wait(timeout=30)


def _job_env(s3_env: dict[str, str], home: Path, ray_tmp: Path) -> dict[str, str]:
    """A user's shell: no Ray/AWS/MLflow settings but the fake secrets, a private HOME and temp dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "MLFLOW_"))}
    env.update(
        s3_env,
        AWS_ACCESS_KEY_ID=SECRETS["AWS access key id"],
        AWS_SECRET_ACCESS_KEY=SECRETS["AWS secret access key"],
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=SECRETS["Ray token"],
        RAY_USAGE_STATS_ENABLED="0",
        HOME=str(home),
        TMPDIR=str(ray_tmp),
        RAY_TMPDIR=str(ray_tmp),
    )
    return env


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_no_credential_reaches_any_output(tmp_path):
    import boto3
    import botocore.exceptions
    import mlflow

    started = time.monotonic()
    # Ray's unix sockets live under RAY_TMPDIR (107-byte limit): a short private folder.
    ray_tmp = Path(tempfile.mkdtemp(prefix="avs-"))
    home, work, store, scratch = tmp_path / "home", tmp_path / "work", tmp_path / "mlflow", tmp_path / "scratch"
    for folder in (home, work, scratch):
        folder.mkdir()
    server, job = _start_mlflow(store), None  # the server starts while the corpus and the S3 server are made
    try:
        corpus = make_tiny_corpus(tmp_path / "corpus", videos=4)
        with seaweedfs(tmp_path / "weed", SECRETS["AWS access key id"], SECRETS["AWS secret access key"]) as s3:
            client = s3.client()
            client.create_bucket(Bucket="corpus")
            client.create_bucket(Bucket="runs")
            for path in Path(corpus).rglob("*.mp4"):
                client.upload_file(str(path), "corpus", f"videos/{path.relative_to(corpus)}")
            wrong = boto3.client(
                "s3",
                endpoint_url=s3.endpoint,
                region_name="us-east-1",
                aws_access_key_id=SECRETS["AWS access key id"],
                aws_secret_access_key="wrong",
            )
            with pytest.raises(botocore.exceptions.ClientError):
                wrong.list_objects_v2(Bucket="corpus")

            port = _port_of(server, store)
            uri = f"http://{MLFLOW_USER}:{SECRETS['MLflow password']}@127.0.0.1:{port}"
            assert _http_status(f"http://127.0.0.1:{port}/health") == 401
            config = tmp_path / "job.yaml"  # a test input, outside every searched folder
            config.write_text(yaml.safe_dump({"tracking": {"tracking_uri": uri, "experiment": "security"}}))

            job_started = time.monotonic()
            job = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "workflows/pretrain.py"),
                    "--data",
                    "s3://corpus/videos",
                    "--output",
                    RUNS,
                    "--config",
                    str(config),
                    *[a for kv in JOB for a in ("--set", kv)],
                ],
                cwd=work,
                env=_job_env(s3.env(), home, ray_tmp),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            ray_auth: dict[str, str] = {}
            probe = threading.Thread(target=_probe_ray_auth, args=(ray_tmp, job, ray_auth))
            probe.start()
            stdout, stderr = job.communicate(timeout=300)
            probe.join()
            job_seconds = time.monotonic() - job_started
            assert job.returncode == 0, (stdout + stderr).decode()[-4000:]
            assert b"[avray] done:" in stdout and b"8 training clips" in stdout, stdout.decode()[-2000:]
            tracking = mlflow.MlflowClient(uri)
            run = tracking.search_runs([tracking.get_experiment_by_name("security").experiment_id])[0]
            checkpoint = run.data.tags["avray.checkpoint"]
            assert (
                checkpoint.startswith(f"{RUNS}/pretrain/checkpoint_") and f"checkpoint: {checkpoint}".encode() in stdout
            )
            loader = subprocess.run(
                [sys.executable, "-c", LOAD_AND_DESCRIBE, checkpoint, RUNS],
                cwd=work,
                env={**_job_env(s3.env(), home, ray_tmp), "TMPDIR": str(scratch)},
                capture_output=True,
                timeout=120,
            )
            assert loader.returncode == 0, loader.stderr.decode()[-3000:]
            # Both locations give the same model: embed_dim 16, the same number of weights.
            (dim, size), again = (line.split() for line in loader.stdout.decode().splitlines())
            assert dim == "16" and int(size) > 0 and again == [dim, size], loader.stdout
            assert not list(scratch.iterdir())  # the local copies went with the process

            searched, found = _leaks(
                itertools.chain(
                    [
                        ("job stdout", stdout),
                        ("job stderr", stderr),
                        ("loader stdout", loader.stdout),
                        ("loader stderr", loader.stderr),
                    ],
                    _s3_objects(client),
                    *(_files(folder) for folder in (ray_tmp, home, work, store)),
                )
            )
            assert not found, "secrets found:\n" + "\n".join(found)
            assert searched > 100  # Ray's session logs alone are dozens of files

            # Each secret was in use: Ray's GCS wanted the token, the MLflow login reached the
            # server (the run is there, finished), and the run and the job show it masked.
            assert ray_auth == {"no token": "UNAUTHENTICATED", "wrong token": "UNAUTHENTICATED", "token": "OK"}
            masked = f"http://{MLFLOW_USER}:***@127.0.0.1:{port}"
            assert run.info.status == "FINISHED" and run.data.params["tracking.tracking_uri"] == masked
            assert f"open {masked}".encode() in stdout
    finally:
        if job is not None:
            _kill_group(job)
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    print(f"searched {searched} outputs; job {job_seconds:.1f} s, test {time.monotonic() - started:.1f} s")


def test_a_session_token_reaches_no_error_log_or_mlflow_run(s3_env, monkeypatch, tmp_path, caplog, capsys):
    """avray never reads ``AWS_SESSION_TOKEN`` (pyarrow sends it with each S3 request): it must
    not show in the error of the request SeaweedFS refuses for it (the one message that quotes
    what the server said), in the logs, or in a job's MLflow run (params, tags, config.yaml)."""
    token = "avrayCanarySessionToken+/" + secrets.token_hex(16)
    client = s3_env.client()
    client.create_bucket(Bucket="session")
    client.put_object(Bucket="session", Key="videos/a.mp4", Body=b"x")
    check_data("s3://session/videos", DataConfig())  # passes without the token
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    with pytest.raises(PreflightError, match="refused the credentials") as refused:
        check_data("s3://session/videos", DataConfig())
    cfg = load_config(None, [*TINY, f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db"])
    start_job_run(cfg, str(tmp_path / "run")).finish()
    outputs = [("error", str(refused.value).encode()), ("log", caplog.text.encode())]
    outputs += [("stdout", capsys.readouterr().out.encode()), *_files(tmp_path)]
    assert len(outputs) > 5  # the MLflow database, config.yaml, the run-id file
    assert not [where for where, data in outputs if any(form in data for form in _forms(token))]


class RunsCode:
    """Unpickling this runs ``exec``: what a hostile checkpoint or weights file carries."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.fixture
def hostile_checkpoint(tmp_path) -> tuple[Path, Path]:
    """(checkpoint folder whose state.pt runs code when unpickled, marker file that code creates)."""
    folder, marker = tmp_path / "checkpoint", tmp_path / "code-ran"
    folder.mkdir()
    torch.save(
        {"module": {"model.video_encoder.x": torch.zeros(1)}, "epoch": 0, "payload": RunsCode(marker)},
        folder / "state.pt",
    )
    (folder / "config.yaml").write_text(load_config(None, TINY).to_yaml())
    return folder, marker


def test_checkpoint_loaders_refuse_pickled_code(hostile_checkpoint):
    folder, marker = hostile_checkpoint
    with pytest.raises(pickle.UnpicklingError):
        load_state(folder)
    with pytest.raises(pickle.UnpicklingError):
        load_model(folder)
    assert not marker.exists()
    # The file is really hostile: a loader without weights_only runs its code.
    torch.load(folder / "state.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("architecture", ["avray", None])
def test_frozen_encoder_loader_refuses_pickled_code(hostile_checkpoint, architecture):
    """As a state dict (torch.load, weights_only) and as a would-be TorchScript file (torch.jit.load)."""
    folder, marker = hostile_checkpoint
    cfg = load_config(None, TINY)
    with pytest.raises(ConfigError, match="state dict of tensors" if architecture else "not a TorchScript file"):
        load_module(
            FrozenVideoConfig(path=str(folder / "state.pt"), architecture=architecture), "video", cfg.model, cfg.data
        )
    assert not marker.exists()


def _unsafe_loads(source: str) -> list[str]:
    """Calls in ``source`` that can unpickle code: torch.load without weights_only=True,
    pickle/cloudpickle/joblib loads, yaml.load/unsafe_load, read_pickle, np.load(allow_pickle=True)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = ast.unparse(node.func.value)
        name, flags = node.func.attr, {k.arg: ast.unparse(k.value) for k in node.keywords}
        if (
            (owner == "torch" and name == "load" and flags.get("weights_only") != "True")
            or (owner in ("pickle", "cloudpickle", "joblib", "dill") and name in ("load", "loads"))
            or (owner == "yaml" and name in ("load", "unsafe_load", "full_load"))
            or name == "read_pickle"
            or (name == "load" and flags.get("allow_pickle") == "True")
        ):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_every_load_in_avray_is_weights_only():
    """torch.jit.load (frozen TorchScript encoders) is not listed: TorchScript archives are
    read by a restricted unpickler that resolves no Python globals; the module is a program
    the user chose to run, as the docs say."""
    assert _unsafe_loads("torch.load(f)\ntorch.load(f, weights_only=False)\npickle.loads(b)\nyaml.load(s)")
    unsafe = {
        str(path.relative_to(ROOT)): found
        for path in [*ROOT.glob("avray/**/*.py"), *ROOT.glob("workflows/*.py")]
        if (found := _unsafe_loads(path.read_text()))
    }
    assert not unsafe, unsafe
