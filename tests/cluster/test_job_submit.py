"""`ray job submit` against a real `ray start --head` cluster with token authentication on.

What a user does on a cluster, on this machine: generate a token, start a head node,
submit a workflow with ``--working-dir`` and ``cluster_configs/runtime_env.yaml``, wait
for SUCCEEDED. The same cluster refuses a submission without the token and one with a
wrong token, so authentication is proven on, not assumed.

Isolation from the other tests of the session (which run their own Ray): the cluster has
its own ``--temp-dir``, its own ports (GCS, dashboard, dashboard agent, Ray client, random
worker ports), its own token file (``RAY_AUTH_TOKEN_PATH``, generated with a temporary
``HOME``, so ``~/.ray/auth_token`` is never read or written). It is stopped by killing
exactly its own processes: ``ray stop`` cannot be used, it stops *every* Ray on the
machine (it matches process names, it has no address or temp-dir option).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
RUNTIME_ENV = "cluster_configs/runtime_env.yaml"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

CLIPS_PER_VIDEO = 2
NUM_VIDEOS = 2
TINY_PRETRAIN = [
    "model.video_width=8",
    "model.video_depth=2",
    "model.audio_width=8",
    "model.audio_depth=2",
    "model.embed_dim=16",
    "model.fused_dim=16",
    "model.n_mels=32",
    "model.n_fft=256",
    f"data.clips_per_video={CLIPS_PER_VIDEO}",
    "data.val_fraction=0",  # 2 videos: both train
    "data.cpus_per_decode_task=0.5",
    "train.cpus_per_worker=0.5",
    "train.batch_size=2",
    "train.warmup_epochs=0",
    "train.epochs=1",
    "train.num_workers=1",
    "tune.zipf_clusters=2",
]


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))  # all interfaces: Ray binds the GCS on the node IP, not loopback
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _write_corpus(root: Path) -> None:
    from avray.demo.media import write_media

    rate, fps, seconds = 16_000, 8, 3.0
    t = np.arange(int(seconds * rate)) / rate
    for i in range(NUM_VIDEOS):
        rng = np.random.default_rng(i)
        frames = rng.integers(0, 255, (int(seconds * fps), 32, 32, 3), dtype=np.uint8)
        audio = (0.3 * np.sin(2 * np.pi * (300 + 200 * i) * t)).astype(np.float32)
        folder = root / "ab"[i % 2]  # folder-per-class layout, as UCF101
        folder.mkdir(parents=True, exist_ok=True)
        write_media(folder / f"v{i}.mp4", frames=frames, audio=audio, fps=fps, sample_rate=rate)


def _base_env(home: Path) -> dict[str, str]:
    """The environment minus anything that would point a Ray CLI at another cluster or token."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    }
    env["HOME"] = str(home)
    # As in an activated virtualenv: the job's `python` is this interpreter (the cluster's
    # processes inherit the PATH of `ray start`).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def _http(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _cluster_processes(block: subprocess.Popen, temp_dir: str) -> list[psutil.Process]:
    """The head's processes: descendants of the blocking `ray start`, and anything whose
    command line names this cluster's temp dir (in case one was re-parented)."""
    found: dict[int, psutil.Process] = {}

    def add(proc: psutil.Process) -> None:
        try:
            for p in (proc, *proc.children(recursive=True)):
                found[p.pid] = p
        except psutil.Error:
            pass

    try:
        add(psutil.Process(block.pid))
    except psutil.Error:
        pass
    me = os.getpid()
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.pid != me and any(temp_dir in arg for arg in proc.info["cmdline"] or []):
                add(proc)
        except psutil.Error:
            pass
    found.pop(me, None)
    return list(found.values())


def _stop_cluster(block: subprocess.Popen, temp_dir: str) -> None:
    """`ray stop` for this cluster only: SIGTERM its processes, SIGKILL what is left after 3 s."""
    procs = _cluster_processes(block, temp_dir)
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=3)
    for proc in alive + _cluster_processes(block, temp_dir):
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    try:
        block.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _start_head(base: Path, temp_dir: Path, env: dict[str, str]) -> tuple[subprocess.Popen | None, str]:
    """`ray start --head --block` on fresh ports; (process, dashboard URL), or (None, log) if
    it died before its dashboard answered (e.g. a port taken in between by another test)."""
    gcs_port, dashboard_port, agent_port, client_port = _free_ports(4)
    log_path = base / f"{temp_dir.name}.log"
    with open(log_path, "w") as log:
        block = subprocess.Popen(
            [
                RAY,
                "start",
                "--head",
                "--block",
                f"--port={gcs_port}",
                f"--dashboard-port={dashboard_port}",
                "--num-cpus=2",
                "--num-gpus=0",
                "--dashboard-host=127.0.0.1",
                "--node-ip-address=127.0.0.1",
                f"--temp-dir={temp_dir}",
                f"--dashboard-agent-listen-port={agent_port}",
                f"--ray-client-server-port={client_port}",
                "--min-worker-port=0",
                "--max-worker-port=0",
                "--disable-usage-stats",
            ],
            env={**env, "RAY_TMPDIR": str(temp_dir)},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=base,
            start_new_session=True,
        )
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    deadline = time.monotonic() + 60
    while block.poll() is None and time.monotonic() < deadline:
        try:
            if _http(f"{dashboard}/api/gcs_healthz")[0] == 200:
                return block, dashboard
        except OSError:
            pass
        time.sleep(0.5)
    _stop_cluster(block, str(temp_dir))
    return None, log_path.read_text()[-3000:]


@pytest.fixture(scope="module")
def head():
    """A token-authenticated `ray start --head` (2 CPUs); yields its address, token and env."""
    # Short, private paths: Ray's unix sockets live under --temp-dir (107-byte limit).
    base = Path(tempfile.mkdtemp(prefix="avray-head-"))
    home = base / "home"
    home.mkdir()
    env = _base_env(home)
    try:
        # The user's step: `ray get-auth-token --generate` writes $HOME/.ray/auth_token.
        out = subprocess.run([RAY, "get-auth-token", "--generate"], env=env, capture_output=True, text=True, timeout=60)
        token_path = home / ".ray" / "auth_token"
        assert out.returncode == 0 and token_path.exists(), out.stderr
        token = token_path.read_text().strip()
        assert out.stdout.strip() == token and len(token) >= 32

        # The cluster reads the token from that file (RAY_AUTH_TOKEN_PATH beats ~/.ray/auth_token).
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
        for attempt in range(3):
            temp_dir = base / f"ray{attempt}"
            block, dashboard = _start_head(base, temp_dir, env)
            if block is not None:
                break
        else:
            pytest.fail(f"ray start --head failed three times; last log:\n{dashboard}")
        try:
            yield {"dashboard": dashboard, "token": token, "env": env}
        finally:
            _stop_cluster(block, str(temp_dir))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _submit(head: dict, env: dict[str, str], submission_id: str, corpus: Path, output: Path, timeout: float):
    cmd = [
        RAY,
        "job",
        "submit",
        "--address",
        head["dashboard"],
        "--submission-id",
        submission_id,
        "--working-dir",
        str(ROOT),
        "--runtime-env",
        RUNTIME_ENV,
        "--",
        "python",
        "workflows/pretrain.py",
        "--data",
        str(corpus),
        "--output",
        str(output),
        *[arg for kv in TINY_PRETRAIN for arg in ("--set", kv)],
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_job_submit_with_token_auth(head, tmp_path):
    started = time.monotonic()
    corpus, output = tmp_path / "corpus", tmp_path / "out"
    _write_corpus(corpus)
    dashboard, token = head["dashboard"], head["token"]

    # The server says it is in token mode, and refuses the jobs API without a token.
    status, body = _http(f"{dashboard}/api/authentication_mode")
    assert status == 200 and json.loads(body)["authentication_mode"] == "token", body
    assert _http(f"{dashboard}/api/jobs/")[0] == 401
    assert _http(f"{dashboard}/api/jobs/", token="0" * len(token))[0] == 403
    assert _http(f"{dashboard}/api/jobs/", token=token)[0] == 200

    # `ray job submit` as a user without the token (no token anywhere, auth mode unset) and
    # with a wrong one: both refused, neither creates a job.
    no_home = tmp_path / "no-token-home"
    no_home.mkdir()
    refused = _submit(head, _base_env(no_home), "no-token", corpus, output, timeout=60)
    assert refused.returncode != 0
    assert "401" in refused.stderr or "Authentication required" in refused.stderr, refused.stderr[-2000:]
    wrong = {**_base_env(no_home), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    refused = _submit(head, wrong, "wrong-token", corpus, output, timeout=60)
    assert refused.returncode != 0
    assert "403" in refused.stderr or "invalid" in refused.stderr.lower(), refused.stderr[-2000:]
    assert not output.exists()

    # With the token: submitted, runs to SUCCEEDED, writes its output.
    submitted = _submit(head, head["env"], "avray-job", corpus, output, timeout=240)
    logs = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, logs[-4000:]
    status, body = _http(f"{dashboard}/api/jobs/avray-job", token=token)
    job = json.loads(body)
    assert status == 200 and job["status"] == "SUCCEEDED", body
    assert "[avray] done:" in logs and "[avray] checkpoint:" in logs, logs[-3000:]
    assert list(output.glob("**/checkpoint_*")) and (output / "mlflow.db").exists(), sorted(output.rglob("*"))[:50]

    # Only the authenticated submission became a job.
    status, body = _http(f"{dashboard}/api/jobs/", token=token)
    assert [j["submission_id"] for j in json.loads(body)] == ["avray-job"]
    print(f"job submit test body: {time.monotonic() - started:.1f} s")
