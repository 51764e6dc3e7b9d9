"""Errors before work: every workflow answers a user error with one line on stderr (``error: ...``)
and exit code 2, before it starts Ray or creates its output.

Most faults run a workflow's ``main`` in this process with Ray start-up made to fail the test;
``test_the_real_cli_fails_before_joining_ray`` runs a few as a user does, ``python workflows/X.py``,
against a Ray address where nothing listens: a workflow that tried Ray first would hang there.
"""

import os
import runpy
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from avray import cli
from avray.checkpoint import CONFIG_FILE, STATE_FILE, save_state
from avray.config import Config
from avray.lock import LOCK_FILE, OutputLock
from avray.models import build_model
from tests.test_preflight import closed_port

ROOT = Path(__file__).resolve().parents[1]
DEAD_RAY = "127.0.0.1:1"
# Settings of the machine running the tests that would change what a workflow checks.
AMBIENT = ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


@dataclass
class Scene:
    """A workflow's surroundings: a folder with one (unread) video, an output path, the environment."""

    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    request: pytest.FixtureRequest | None = None

    def __post_init__(self):
        for key in AMBIENT:
            self.monkeypatch.delenv(key, raising=False)

    @property
    def videos(self) -> str:
        return self.folder("videos", {"a.mp4": "x"})

    @property
    def output(self) -> Path:
        return self.tmp / "out"

    @property
    def checkpoint(self) -> str:
        """A checkpoint folder as evaluate.py and embed.py find it (the checks never load its weights)."""
        return self.folder("checkpoint", {STATE_FILE: "", CONFIG_FILE: Config().to_yaml()})

    @property
    def loadable_checkpoint(self) -> str:
        """A checkpoint whose weights load (those of a model just built): what passes every check."""
        cfg = Config()
        model = build_model(cfg.model, cfg.data)
        folder = self.tmp / "loadable-checkpoint"
        save_state(folder, cfg, {"module": {f"model.{k}": v for k, v in model.state_dict().items()}})
        return str(folder)

    def folder(self, name: str, files: dict[str, str]) -> str:
        folder = self.tmp / name
        folder.mkdir(exist_ok=True)
        for file, text in files.items():
            (folder / file).write_text(text)
        return str(folder)

    def file(self, name: str, text: str) -> str:
        (self.tmp / name).write_text(text)
        return str(self.tmp / name)

    def dead_s3_endpoint(self) -> str:
        endpoint = f"http://127.0.0.1:{closed_port()}"
        self.setenv(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="AKIAPREFLIGHT",
            AWS_SECRET_ACCESS_KEY="s3-secret",
            AWS_REGION="us-east-1",
        )
        return endpoint

    def s3_server(self):
        """The SeaweedFS server of the tests, with the standard AWS variables set for it."""
        server = self.request.getfixturevalue("s3_server")
        self.setenv(**server.env())
        return server

    def setenv(self, **values: str) -> None:
        for key, value in values.items():
            self.monkeypatch.setenv(key, value)


# Each fault: the workflow, and a function of the Scene giving its arguments (without --output:
# every run writes to Scene.output) and the words the one line must hold.
def unknown_key(s):
    return ["--data", s.videos, "--set", "train.epochz=3"], [
        "unknown config key train.epochz",
        "valid keys under train",
    ]


def wrong_type(s):
    return ["--data", s.videos, "--set", "train.epochs=abc"], ["train.epochs must be an integer, got 'abc'"]


def list_for_a_number(s):
    return (
        ["--data", s.videos, "--config", s.file("c.yaml", "train:\n  lr: [0.1, 0.2]\n")],
        ["train.lr must be a number, got [0.1, 0.2]"],
    )


def bad_yaml(s):
    config = s.file("c.yaml", "train:\n  epochs: 3\n lr: 0.1\n")
    return ["--data", s.videos, "--config", config], [f"config file {config} is not valid YAML", "line 3, column 2"]


def missing_config(s):
    return (
        ["--data", s.videos, "--config", str(s.tmp / "nope.yaml")],
        [f"config file {s.tmp / 'nope.yaml'} does not exist"],
    )


def missing_data(s):
    return ["--data", str(s.tmp / "nowhere")], [f"data path '{s.tmp / 'nowhere'}' does not exist"]


def empty_data_folder(s):
    return ["--data", s.folder("empty", {})], [
        f"no videos with extensions .mp4, .mkv, .webm, .avi, .mov under '{s.tmp / 'empty'}'"
    ]


def empty_manifest(s):
    manifest = s.file("list.csv", "")
    return ["--data", manifest], [f"cannot read manifest '{manifest}'"]


def unreachable_s3(s):
    endpoint = s.dead_s3_endpoint()
    return (
        ["--data", "s3://corpus/videos"],
        [
            f"cannot reach the S3 endpoint {endpoint} for s3://corpus/videos",
            "AWS_ENDPOINT_URL",
            "data.endpoint_override",
        ],
    )


def unreachable_s3_output(s):
    endpoint = s.dead_s3_endpoint()
    return (
        ["--data", s.videos, "--output", "s3://clips/prepared"],
        [f"cannot reach the S3 endpoint {endpoint} for s3://clips/prepared"],
    )


def s3_wrong_credentials(s):
    server = s.s3_server()
    s.setenv(AWS_SECRET_ACCESS_KEY="wrong-s3-secret")
    return (
        ["--data", "s3://corpus/videos"],
        [f"the S3 endpoint {server.endpoint} refused the credentials for s3://corpus/videos", "AWS_SECRET_ACCESS_KEY"],
    )


def s3_missing_bucket_output(s):
    server = s.s3_server()
    return (
        ["--checkpoint", s.checkpoint, "--data", s.videos, "--output", "s3://no-such-bucket/embeddings"],
        [f"bucket 'no-such-bucket' does not exist at the S3 endpoint {server.endpoint}"],
    )


def s3_read_only_output(s):
    server = s.s3_server()
    server.client().create_bucket(Bucket="shared-runs")
    s.setenv(**server.read_only_env())
    return (
        ["--data", s.videos, "--output", "s3://shared-runs/clips"],
        [
            f"the S3 endpoint {server.endpoint} does not let these credentials write to s3://shared-runs/clips",
            "s3:PutObject",
        ],
    )


def unreachable_mlflow(s):
    port = closed_port()
    s.setenv(MLFLOW_TRACKING_URI=f"http://avray:mlflow-secret@127.0.0.1:{port}")
    return (
        ["--data", s.videos],
        [f"MLflow tracking server http://127.0.0.1:{port} does not answer", "MLFLOW_TRACKING_URI"],
    )


def output_is_a_file(s):
    taken = s.file("taken", "x")
    return ["--data", s.videos, "--output", taken], [f"output {taken}: {taken} is a file, not a folder"]


def unknown_scheduler(s):
    return (
        ["--data", s.videos, "--set", "tune.scheduler=evolve"],
        ["tune.scheduler must be one of 'pbt', 'pb2', 'asha', 'fifo'; got 'evolve'"],
    )


def evaluate_missing_data(s):
    return ["--checkpoint", s.checkpoint, "--data", str(s.tmp / "test-videos")], ["data path", "does not exist"]


def evaluate_unreachable_mlflow(s):
    port = closed_port()
    return (
        ["--checkpoint", s.checkpoint, "--data", s.videos, "--set", f"tracking.tracking_uri=http://127.0.0.1:{port}"],
        [f"MLflow tracking server http://127.0.0.1:{port} does not answer"],
    )


def evaluate_model_override(s):
    # The random baseline would be another architecture than the trained model.
    return (
        ["--checkpoint", s.checkpoint, "--data", s.videos, "--set", "model.embed_dim=8"],
        ["model.embed_dim: evaluation uses the model the checkpoint was trained with"],
    )


def demo_unreachable_mlflow(s):
    _, words = unreachable_mlflow(s)
    return [], words


FAULTS = [
    *(
        ("pretrain.py", fault)
        for fault in (
            unknown_key,
            wrong_type,
            list_for_a_number,
            bad_yaml,
            missing_config,
            missing_data,
            empty_data_folder,
            empty_manifest,
            unreachable_s3,
            s3_wrong_credentials,
            unreachable_mlflow,
            output_is_a_file,
        )
    ),
    ("tune_losses.py", unknown_scheduler),
    ("tune_losses.py", unreachable_mlflow),
    ("prepare.py", empty_data_folder),
    ("prepare.py", unreachable_s3_output),
    ("prepare.py", s3_read_only_output),
    ("evaluate.py", evaluate_missing_data),
    ("evaluate.py", evaluate_unreachable_mlflow),
    ("evaluate.py", evaluate_model_override),
    ("embed.py", evaluate_model_override),
    ("embed.py", s3_missing_bucket_output),
    ("extract_features.py", bad_yaml),
    ("demo.py", demo_unreachable_mlflow),
]


@pytest.fixture
def scene(tmp_path, monkeypatch, request):
    def refuse(*args, **kwargs):
        raise AssertionError("the workflow started Ray before checking its inputs")

    monkeypatch.setattr(cli, "init_ray", refuse)
    return Scene(tmp_path, monkeypatch, request)


def assert_one_line_error(code: int, stderr: str, words: list[str]) -> None:
    assert code == cli.EXIT_USAGE, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for word in words:
        assert word in lines[0]
    assert "secret" not in lines[0]  # every password and key the faults set holds the word


@pytest.mark.parametrize("script, fault", FAULTS, ids=[f"{script}:{fault.__name__}" for script, fault in FAULTS])
def test_a_user_error_is_one_line_and_exit_2_before_any_work(scene, capsys, script, fault):
    args, words = fault(scene)
    if "--output" not in args:
        args = [*args, "--output", str(scene.output)]
    main = runpy.run_path(str(ROOT / "workflows" / script))["main"]
    with pytest.raises(SystemExit) as exited:
        cli.run(main, [*args, "--ray-address", DEAD_RAY])
    assert_one_line_error(exited.value.code, capsys.readouterr().err, words)
    assert not scene.output.exists()


# Run as a user runs them, all at once: each spends seconds importing torch and Ray.
REAL_RUNS = {
    "pretrain.py:unreachable_mlflow": ("pretrain.py", unreachable_mlflow),
    "prepare.py:unreachable_s3": ("prepare.py", unreachable_s3),
    "evaluate.py:missing_data": ("evaluate.py", evaluate_missing_data),
}


def start_real_run(script, fault, tmp: Path) -> tuple[subprocess.Popen, list[str], Path]:
    """``python workflows/<script>`` with ``fault``'s arguments and environment, RAY_ADDRESS where nothing listens."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        scene = Scene(tmp, monkeypatch)
        monkeypatch.setenv("RAY_ADDRESS", DEAD_RAY)
        args, words = fault(scene)
        env = dict(os.environ)
    process = subprocess.Popen(
        [sys.executable, f"workflows/{script}", *args, "--output", str(scene.output)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, words, scene.output


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """(stderr, exit code, words the line must hold, output path) of each of REAL_RUNS."""
    started = {
        name: start_real_run(script, fault, tmp_path_factory.mktemp(name.replace(":", "-")))
        for name, (script, fault) in REAL_RUNS.items()
    }
    try:
        # A workflow that joined Ray first would hang on the dead address: the timeout fails it.
        return {
            name: (process.communicate(timeout=120)[1], process.returncode, words, output)
            for name, (process, words, output) in started.items()
        }
    finally:
        for process, _, _ in started.values():
            process.kill()


@pytest.mark.parametrize("name", REAL_RUNS)
def test_the_real_cli_fails_before_joining_ray(real_runs, name):
    stderr, code, words, output = real_runs[name]
    assert_one_line_error(code, stderr, words)
    assert not output.exists()


def test_a_sweep_resumed_with_another_config_is_one_line_and_exit_2_before_ray(scene, capsys):
    # A sweep begun in the output with the default config (what Tune leaves: its tuner.pkl).
    scene.folder("out", {"sweep_config.yaml": Config().to_yaml()})
    scene.folder("out/tune_losses", {"tuner.pkl": ""})
    main = runpy.run_path(str(ROOT / "workflows" / "tune_losses.py"))["main"]
    args = [
        "--data",
        scene.videos,
        "--output",
        str(scene.output),
        "--set",
        "tune.num_samples=8",
        "--set",
        "train.lr=0.01",
    ]
    with pytest.raises(SystemExit) as exited:
        cli.run(main, [*args, "--ray-address", DEAD_RAY])
    assert_one_line_error(
        exited.value.code,
        capsys.readouterr().err,
        [f"{scene.output} holds a sweep begun with another config (train.lr: 0.001 -> 0.01; tune.num_samples: 4 -> 8)"],
    )


def test_a_local_cluster_takes_another_dashboard_port_while_rays_usual_one_is_held():
    """Ray gives up at once on the dashboard port it is given, and a second workflow run on
    one machine failed to start ("Failed to find a valid port for dashboard after 0
    retries"). The tests hold 8265 (tests/conftest.py), so every workflow they run takes
    this path; here it is held for certain."""
    import socket

    from avray.cluster import DASHBOARD_PORT, local_dashboard_port

    with socket.socket() as held:
        try:
            held.bind(("127.0.0.1", DASHBOARD_PORT))
            held.listen()
        except OSError:
            pass  # conftest holds it already
        port = local_dashboard_port()
        assert port != DASHBOARD_PORT
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


# Each workflow that writes an output, and its arguments that pass every check (with --output).
WRITERS = {
    "prepare.py": lambda s: ["--data", s.videos],
    "pretrain.py": lambda s: ["--data", s.videos],
    "tune_losses.py": lambda s: ["--data", s.videos],
    "evaluate.py": lambda s: ["--checkpoint", s.loadable_checkpoint, "--data", s.videos, "--no-track"],
    "embed.py": lambda s: ["--checkpoint", s.loadable_checkpoint, "--data", s.videos],
    "extract_features.py": lambda s: ["--data", s.videos],
    "demo.py": lambda s: [],
}


@pytest.mark.parametrize("script", WRITERS)
def test_an_output_another_run_owns_is_refused_in_one_line_naming_it(scene, capsys, script):
    args = [*WRITERS[script](scene), "--output", str(scene.output), "--ray-address", DEAD_RAY]
    main = runpy.run_path(str(ROOT / "workflows" / script))["main"]
    with OutputLock(str(scene.output), "pretrain") as owner:
        with pytest.raises(SystemExit) as exited:
            cli.run(main, args)
        assert_one_line_error(
            exited.value.code,
            capsys.readouterr().err,
            [f"output {scene.output} is in use by pretrain (pid {os.getpid()} on host {owner.owner.host}, started "],
        )
        assert (scene.output / LOCK_FILE).exists()  # still the owner's


@pytest.mark.parametrize(
    ("stop", "ends_with"), [(KeyboardInterrupt, SystemExit), (RuntimeError, RuntimeError)], ids=["ctrl-c", "error"]
)
def test_the_lock_goes_when_the_run_ends_by_ctrl_c_or_an_error(scene, stop, ends_with):
    def stopped(*args, **kwargs):
        assert (scene.output / LOCK_FILE).exists()  # held while the run runs
        raise stop

    scene.monkeypatch.setattr(cli, "init_ray", stopped)
    main = runpy.run_path(str(ROOT / "workflows" / "prepare.py"))["main"]
    with pytest.raises(ends_with):  # Ctrl-C: "stopped by SIGINT", exit 130 (cli.run)
        cli.run(main, ["--data", scene.videos, "--output", str(scene.output)])
    assert not (scene.output / LOCK_FILE).exists()
