"""cluster_configs/: every file parses, has the shape its tool expects, keeps token
authentication on, holds no secret, and every command in it that runs a workflow is one
the workflow's own CLI accepts (flags through its argparse parser, ``--set`` keys and
``--config`` files through avray.config).

Commands are looked for in YAML string values (entrypoints, setup/start commands,
runtimeEnvYAML) and in comments (the usage examples), with ``\\`` continuations joined.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import io
import re
import shlex
import zipfile
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "cluster_configs"
YAML_FILES = sorted(p for p in CONFIGS.rglob("*") if p.suffix in (".yaml", ".yml"))
ALL_FILES = sorted(p for p in CONFIGS.rglob("*") if p.is_file())
AWS = CONFIGS / "aws.yaml"
RUNTIME_ENV = CONFIGS / "runtime_env.yaml"
RAYCLUSTER = CONFIGS / "kuberay" / "raycluster.yaml"
RAYJOB = CONFIGS / "kuberay" / "rayjob.yaml"
DOCKERFILE = CONFIGS / "docker" / "Dockerfile"
WORKFLOW_RE = re.compile(r"(?:^|/)workflows/[\w./-]+\.py$")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _pinned(package: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, _, version = line.strip().partition("==")
        if name.lower() == package.lower():
            return version
    raise AssertionError(f"{package} is not pinned in constraints.txt")


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _logical_lines(text: str) -> list[str]:
    """Lines with ``\\`` continuations joined (comment markers of continued lines dropped)."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if pending and line.startswith("#"):
            line = line.lstrip("#").strip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    if pending:
        out.append(pending)
    return out


def _shell_commands(text: str) -> list[list[str]]:
    """Simple commands (split at ; && || | & and redirections) in ``text``; comments included."""
    commands = []
    for line in _logical_lines(text):
        line = line.lstrip("#").strip()
        if not line:
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = ""
        try:
            tokens = list(lexer)
        except ValueError:  # prose with an apostrophe, not a command
            continue
        current: list[str] = []
        for token in tokens:
            if token and set(token) <= set(";&|<>()"):
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(token)
        if current:
            commands.append(current)
    # Drop leading VAR=value assignments and `export`.
    cleaned = []
    for cmd in commands:
        while cmd and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", cmd[0]) or cmd[0] == "export"):
            cmd = cmd[1:]
        if cmd:
            cleaned.append(cmd)
    return cleaned


def _all_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in ALL_FILES:
        text = path.read_text()
        if path in YAML_FILES:
            # Comments (usage examples) from the text, commands from the parsed values: a
            # folded scalar's raw lines are not commands on their own.
            comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
            texts = [comments, *_strings(_docs(path))]
        else:
            texts = [text]
        for chunk in texts:
            for cmd in _shell_commands(chunk):
                found.append((_rel(path), cmd))
    return found


def _workflow_invocations() -> list[tuple[str, str, list[str]]]:
    """(file, script, argv) for every `python workflows/X.py ...` anywhere in cluster_configs/."""
    seen, out = set(), []
    for where, cmd in _all_commands():
        for i, token in enumerate(cmd):
            if WORKFLOW_RE.search(token) and i > 0 and Path(cmd[i - 1]).name.startswith("python"):
                key = (where, token, tuple(cmd[i + 1 :]))
                if key not in seen:
                    seen.add(key)
                    out.append((where, token, cmd[i + 1 :]))
    return out


def _ray_commands(subcommand: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    out, seen = [], set()
    n = len(subcommand)
    for where, cmd in _all_commands():
        if Path(cmd[0]).name == "ray" and tuple(cmd[1 : 1 + n]) == subcommand:
            key = (where, tuple(cmd))
            if key not in seen:
                seen.add(key)
                out.append((where, cmd[1 + n :]))
    return out


class _Parsed(Exception):
    def __init__(self, parser, namespace):
        self.parser, self.namespace = parser, namespace


def _parse_with_workflow(script: Path, argv: list[str]) -> argparse.Namespace:
    """Run the workflow's ``main(argv)`` only up to argument parsing, with its own parser."""
    spec = importlib.util.spec_from_file_location(f"_avray_workflow_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    original = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        raise _Parsed(self, original(self, args, namespace))

    argparse.ArgumentParser.parse_args = capture
    err = io.StringIO()
    try:
        with redirect_stderr(err):
            module.main(argv)
    except _Parsed as parsed:
        return parsed.namespace
    except SystemExit as exit_:
        raise AssertionError(f"{_rel(script)} rejects {argv}: {err.getvalue().strip()}") from exit_
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"{_rel(script)}: main() returned without parsing arguments")


# --- every file ----------------------------------------------------------------------


def test_expected_files_exist():
    for path in (AWS, RUNTIME_ENV, RAYCLUSTER, RAYJOB, DOCKERFILE):
        assert path.is_file(), path


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_yaml_parses(path):
    docs = _docs(path)
    assert docs and all(isinstance(d, dict) for d in docs)


SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA)[0-9A-Z]{16}\b"),
    "AWS secret/session variable": re.compile(r"(?i)aws_(?:secret_access_key|session_token)"),
    "AWS secret access key": re.compile(
        r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[0-9])(?=[A-Za-z0-9/+]*[a-z])"
        r"(?=[A-Za-z0-9/+]*[A-Z])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
    ),
    "hex token (a Ray token is 64 hex digits)": re.compile(r"(?<![0-9a-fA-F])[0-9a-fA-F]{32,}(?![0-9a-fA-F])"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "password/secret literal": re.compile(r"(?i)\b(?:password|passwd|secret_key|api_key|apikey)\b\s*[:=]\s*\S+"),
    "inline Ray token": re.compile(r"RAY_AUTH_TOKEN\s*[:=]\s*(?![\s$\"']*\$)[\"']?[A-Za-z0-9]"),
    "inline MLflow credential": re.compile(r"MLFLOW_TRACKING_(?:PASSWORD|TOKEN)\s*[:=]\s*[\"']?[A-Za-z0-9]"),
    "credentials in a URI": re.compile(r"://[^/\s:@]+:[^/\s@]+@"),
}


@pytest.mark.parametrize("path", ALL_FILES, ids=_rel)
def test_no_secrets(path):
    text = path.read_text()
    for what, pattern in SECRET_PATTERNS.items():
        match = pattern.search(text)
        assert match is None, f"{_rel(path)}: looks like a {what}: {match.group(0)!r}"


def _env_entries(node):
    """(name, entry) for every Kubernetes env entry (dicts with name + value/valueFrom)."""
    if isinstance(node, dict):
        if "name" in node and ("value" in node or "valueFrom" in node):
            yield node["name"], node
        for value in node.values():
            yield from _env_entries(value)
    elif isinstance(node, list):
        for value in node:
            yield from _env_entries(value)


@pytest.mark.parametrize("path", ALL_FILES, ids=_rel)
def test_token_auth_never_disabled(path):
    text = path.read_text()
    assert not re.search(r"RAY_AUTH_MODE\s*[=:]\s*[\"']?disabled", text), _rel(path)
    if path in YAML_FILES:
        for doc in _docs(path):
            for name, entry in _env_entries(doc):
                if name == "RAY_AUTH_MODE":
                    assert entry.get("value") == "token", (_rel(path), entry)
                if name == "RAY_AUTH_TOKEN":
                    assert "value" not in entry, f"{_rel(path)}: RAY_AUTH_TOKEN must come from a Secret"
            for node in _dicts(doc):
                if "authOptions" in node:
                    assert node["authOptions"].get("mode") == "token", (_rel(path), node["authOptions"])


def _dicts(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _dicts(value)
    elif isinstance(node, list):
        for value in node:
            yield from _dicts(value)


# --- workflow commands match the CLIs ----------------------------------------------------


def test_workflow_commands_are_found():
    found = {(where, script) for where, script, _ in _workflow_invocations()}
    # The job spec itself and the usage examples of the launcher and KubeRay files.
    assert (_rel(RAYJOB), "workflows/pretrain.py") in found
    assert (_rel(AWS), "workflows/pretrain.py") in found
    assert (_rel(RUNTIME_ENV), "workflows/pretrain.py") in found


@pytest.mark.parametrize(
    "where,script,argv", _workflow_invocations(), ids=lambda v: v if isinstance(v, str) else " ".join(v)[:60]
)
def test_workflow_command_matches_its_cli(where, script, argv):
    path = ROOT / script
    assert path.is_file(), f"{where}: {script} does not exist"
    args = _parse_with_workflow(path, argv)
    from avray.config import load_config

    if getattr(args, "config", None):
        assert (ROOT / args.config).is_file(), f"{where}: --config {args.config} does not exist"
    # Keys and values of --set go through the same validation the workflow applies.
    load_config(str(ROOT / args.config) if getattr(args, "config", None) else None, getattr(args, "overrides", []))
    # On a cluster the driver runs inside a copy of the working dir that excludes data/ and
    # runs/ and is deleted afterwards: a relative --data/--output would be missing or lost.
    for flag in ("data", "output"):
        value = getattr(args, flag, None)
        if value is None:
            continue
        assert value.startswith(("s3://", "/", "$")), f"{where}: --{flag} {value} must be s3:// or absolute"
        if value.startswith("s3://"):
            assert re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\S*)?", value), (where, value)


def test_ray_job_submit_commands_parse():
    from ray.dashboard.modules.job.cli import job_cli_group

    submit = job_cli_group.commands["submit"]
    commands = _ray_commands(("job", "submit"))
    assert commands
    for where, args in commands:
        ctx = submit.make_context("submit", list(args), resilient_parsing=False)
        params = ctx.params
        if params.get("runtime_env"):
            assert (ROOT / params["runtime_env"]).is_file(), (where, params["runtime_env"])
        assert params["entrypoint"], where
        assert params.get("working_dir") in (None, "."), (where, "submit from the repository root")


def test_ray_start_commands_parse_and_keep_auth():
    from ray.scripts.scripts import start

    commands = _ray_commands(("start",))
    assert commands
    for _, args in commands:
        start.make_context("start", list(args), resilient_parsing=False)


# --- runtime env -----------------------------------------------------------------------


def test_runtime_env_is_valid_and_credential_free():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load(RUNTIME_ENV.read_text())
    RuntimeEnv(**env)  # Ray's own validation of the fields
    assert set(env) <= {"excludes", "env_vars", "config", "working_dir"}, set(env)
    env_vars = env.get("env_vars", {})
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items())
    credential = re.compile(r"(?i)(KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL|AWS_|MLFLOW_TRACKING_(USERNAME|PASSWORD))")
    assert not [k for k in env_vars if credential.search(k)], env_vars
    assert "RAY_AUTH_MODE" not in env_vars


def test_runtime_env_uploads_the_package_and_nothing_heavy(tmp_path):
    """Package the repository exactly as `ray job submit --working-dir .` does."""
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import create_package

    env = yaml.safe_load(RUNTIME_ENV.read_text())
    for required in ("/.venv", "/runs", "/data", "mlruns", "*.mp4"):
        assert required in env["excludes"], required
    target = tmp_path / "working_dir.zip"
    create_package(
        str(ROOT),
        target,
        include_gitignore=True,
        excludes=ray_constants.get_runtime_env_default_excludes() + list(env["excludes"]),
    )
    names = set(zipfile.ZipFile(target).namelist())
    sources = [
        _rel(p)
        for folder in ("avray", "workflows")
        for p in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in p.parts
    ]
    missing = [s for s in sources if s not in names]
    assert not missing, f"the job would not get these sources: {missing[:10]}"
    for name in names:
        top = name.split("/", 1)[0]
        assert top not in {".venv", ".git", "runs", "data", "mlruns"}, name
        assert not name.endswith((".mp4", ".parquet", ".pt", ".ckpt")), name
    assert target.stat().st_size < 10 * 2**20


# --- cluster launcher (AWS) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def aws():
    return yaml.safe_load(AWS.read_text())


def test_aws_config_passes_rays_schema(aws):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(aws)))


def test_aws_head_and_gpu_workers(aws):
    assert aws["provider"]["type"] == "aws"
    types = aws["available_node_types"]
    head = types[aws["head_node_type"]]
    assert head.get("resources", {}).get("GPU", 0) == 0
    assert not head["node_config"]["InstanceType"].startswith(("g", "p")), "the head is a CPU node"
    workers = {name: t for name, t in types.items() if name != aws["head_node_type"]}
    gpu = {name: t for name, t in workers.items() if t.get("resources", {}).get("GPU", 0) > 0}
    assert gpu, "no GPU worker type"
    for name, t in gpu.items():
        assert t["node_config"]["InstanceType"].startswith(("g", "p")), name
    for name, t in workers.items():
        assert 0 <= t["min_workers"] <= t["max_workers"], name
    assert sum(t["min_workers"] for t in workers.values()) <= aws["max_workers"]
    for name, t in types.items():
        profile = t["node_config"].get("IamInstanceProfile")
        assert profile and ("Name" in profile or "Arn" in profile), f"{name}: S3 access needs an instance profile"


def test_aws_installs_the_project_with_constraints(aws):
    assert _pinned("torch") == "2.14.1"
    setup = " && ".join(aws["setup_commands"] + aws.get("head_setup_commands", []))
    assert re.search(r"pip install .*-c constraints\.txt .*-e \.", setup), setup
    mounts = aws["file_mounts"]
    assert "." in mounts.values() or any(c for c in aws["setup_commands"] if "git clone" in c)
    for pattern in aws.get("rsync_exclude", []):
        assert pattern.strip("/") not in {"data", "runs", "demo", "build"} or pattern.startswith("/"), (
            f"rsync_exclude {pattern!r} is not anchored: it would also drop avray/{pattern.strip('/')}"
        )


def test_aws_starts_ray_with_token_auth(aws):
    head = " ; ".join(aws["head_start_ray_commands"])
    workers = " ; ".join(aws["worker_start_ray_commands"])
    assert "ray start --head" in head
    for commands in (head, workers):
        assert "RAY_AUTH_MODE=token" in commands
    # The same token on every node: the local one, mounted by path.
    assert aws["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


# --- KubeRay ----------------------------------------------------------------------------


def _kind(path: Path, kind: str) -> dict:
    docs = [d for d in _docs(path) if d.get("kind") == kind]
    assert len(docs) == 1, f"{_rel(path)}: expected one {kind}"
    assert docs[0]["apiVersion"] == "ray.io/v1"
    return docs[0]


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def _check_cluster_spec(spec: dict, where: str) -> set[str]:
    assert spec["rayVersion"] == _pinned("ray"), f"{where}: rayVersion must match constraints.txt"
    assert spec["authOptions"]["mode"] == "token", where
    head = spec["headGroupSpec"]
    head_containers = _containers(head)
    assert head_containers and head["template"]["spec"].get("serviceAccountName"), where
    workers = spec["workerGroupSpecs"]
    assert workers, f"{where}: no worker group"
    gpu_groups = [
        g for g in workers if int(_containers(g)[0].get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) > 0
    ]
    assert gpu_groups, f"{where}: no GPU worker group"
    for group in workers:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        assert group["template"]["spec"].get("serviceAccountName"), group["groupName"]
    for group in [head, *gpu_groups]:
        env = {e["name"]: e for e in _containers(group)[0].get("env", [])}
        ref = env.get("MLFLOW_TRACKING_URI", {}).get("valueFrom", {}).get("secretKeyRef")
        assert ref and ref.get("name") and ref.get("key"), f"{where}: MLFLOW_TRACKING_URI must come from a Secret"
    return {c["image"] for g in [head, *workers] for c in _containers(g)}


def test_raycluster_structure():
    cluster = _kind(RAYCLUSTER, "RayCluster")
    images = _check_cluster_spec(cluster["spec"], _rel(RAYCLUSTER))
    assert len(images) == 1, images


def test_rayjob_structure_and_entrypoint():
    job = _kind(RAYJOB, "RayJob")
    spec = job["spec"]
    images = _check_cluster_spec(spec["rayClusterSpec"], _rel(RAYJOB))
    submitter = spec.get("submitterPodTemplate", {}).get("spec", {}).get("containers", [])
    images |= {c["image"] for c in submitter}
    cluster_images = {
        c["image"] for g in [_kind(RAYCLUSTER, "RayCluster")["spec"]["headGroupSpec"]] for c in _containers(g)
    }
    assert images == cluster_images, "RayJob and RayCluster should run the same avray image"
    entry = shlex.split(spec["entrypoint"])
    assert entry[:2] == ["python", "workflows/pretrain.py"], entry
    argv = entry[2:]
    assert argv[argv.index("--data") + 1].startswith("s3://")
    assert argv[argv.index("--output") + 1].startswith("s3://")
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**runtime_env)
    assert str(runtime_env["working_dir"]).startswith(("s3://", "https://", "gs://")), (
        "a RayJob cannot upload a local working_dir: use a remote zip"
    )
    assert runtime_env["working_dir"].endswith(".zip")
    assert spec.get("shutdownAfterJobFinishes") is True


def test_images_match_the_pinned_ray():
    text = DOCKERFILE.read_text()
    base = re.search(r"^FROM\s+rayproject/ray:(\S+)", text, re.M)
    assert base, "the image should build on rayproject/ray"
    assert base.group(1).startswith(_pinned("ray") + "-py311"), base.group(1)
    assert re.search(r"pip install .*-c constraints\.txt .*-e \.", text)
