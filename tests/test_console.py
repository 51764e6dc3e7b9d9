"""avray's console: which lines reach the terminal, which the log, and what moves a bar."""

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from avray import console
from tests.tiny import make_tiny_corpus

ROOT = Path(__file__).resolve().parents[1]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return False


@pytest.fixture
def routed():
    terminal, log = _Terminal(), io.StringIO()
    return console._Console(terminal, log), terminal, log


@pytest.mark.parametrize(
    "line",
    [
        "\x1b[36m(RayTrainWorker pid=8152)\x1b[0m [avray] epoch 1/5  loss 4.1661",
        "(MapWorker(MapBatches(EmbedClips)) pid=31, ip=10.0.0.2) [avray] epoch 1/5  loss 4.1661",
        "(RayTrainWorker pid=8152) [avray] epoch 1/5  loss 4.1661 [repeated 2x across cluster]",
    ],
)
def test_a_forwarded_avray_line_is_shown_without_rays_prefix(routed, line):
    shown, terminal, log = routed
    shown.route(line + "\n")
    assert terminal.getvalue() == "[avray] epoch 1/5  loss 4.1661\n"


@pytest.mark.parametrize(
    "line",
    [
        "\x1b[36m(RayTrainWorker pid=8152)\x1b[0m Reporting training result 1: TrainingReport(...)",
        "\x1b[33m(raylet)\x1b[0m WARNING: 8 PYTHON worker processes have been started",
        "[2026-12-02 12:21:29,568 E 27004 27004] core_worker.cc:2465: Actor ... has constructor arguments",
        "2026/12/02 12:17:41 INFO mlflow.store.db.utils: Creating initial MLflow database tables...",
        "│ Search algorithm                 BasicVariantGenerator │",
    ],
)
def test_rays_tunes_and_mlflows_lines_go_to_the_log_only(routed, line):
    shown, terminal, log = routed
    shown.route(line + "\n")
    assert terminal.getvalue() == "" and log.getvalue() == line + "\n"


def test_what_the_driver_says_is_shown_and_logged(routed):
    shown, terminal, log = routed
    shown.show("metric   trained  random baseline")
    assert terminal.getvalue() == log.getvalue() == "metric   trained  random baseline\n"


def test_ticks_move_their_bar_and_are_neither_shown_nor_logged(routed):
    shown, terminal, log = routed
    bar = shown.open_bar("decode", "decoding", total=100, unit="clip", initial=0)
    shown.route("(MapBatches(decode_clip_stream) pid=1) [avray:tick] decode +16\n")
    shown.route("(MapBatches(decode_clip_stream) pid=2) [avray:tick] decode +4\n")
    assert bar.n == 20
    shown.route("(RayTrainWorker pid=3) [avray:tick] train 7\n")  # no such bar: dropped
    bar.close()
    assert "tick" not in terminal.getvalue() and log.getvalue() == ""
    assert "decoding" in terminal.getvalue()


def test_a_finished_bar_shows_its_total_though_the_last_ticks_were_not_sent(routed):
    shown, terminal, _ = routed
    with shown.open_bar("train", "training", total=24, unit="step", initial=0) as bar:
        shown.move("train", 23, 0)
    assert bar.n == 24 and "24/24" in terminal.getvalue()


def test_a_worker_ticks_only_where_a_driver_draws_bars(monkeypatch, capsys):
    monkeypatch.delenv(console.BARS_ENV, raising=False)
    console.tick("decode", advance=16)
    assert capsys.readouterr().out == ""
    monkeypatch.setenv(console.BARS_ENV, "1")
    monkeypatch.setattr(console, "_last_sent", {})
    monkeypatch.setattr(console, "_unsent", {})
    console.tick("decode", advance=16)
    console.tick("decode", advance=4)  # within TICK_INTERVAL_S: summed, not printed
    assert capsys.readouterr().out == f"{console.TICK} decode +16\n"


def test_capture_routes_a_whole_process_output_at_the_file_descriptor_level(tmp_path):
    log = tmp_path / "_logs" / "run.log"
    script = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from avray import console
        print("before the capture")
        with console.capture(Path({str(log)!r})):
            console.say("a table row of the driver's")
            print("a print of another library")
            print("a warning on stderr", file=sys.stderr)
            os.write(2, b"a native log line\\n")
            print("(RayTrainWorker pid=1) Reporting training result 1")
            print("(RayTrainWorker pid=1) [avray] epoch 1/2")
        print("after the capture")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "before the capture",
        "a table row of the driver's",
        "[avray] epoch 1/2",
        "after the capture",
    ]
    assert done.stderr == ""
    logged = log.read_text()
    for line in ("a print of another library", "a warning on stderr", "a native log line", "Reporting training"):
        assert line in logged


def test_log_path_is_in_the_output_or_the_temp_folder(tmp_path):
    assert console.log_path_for(str(tmp_path), "pretrain").parent == tmp_path / console.LOG_FOLDER
    assert console.log_path_for("s3://bucket/run", "pretrain").parent.name == "avray-logs"


@pytest.mark.slow
def test_a_workflow_prints_avray_lines_and_bars_only(tmp_path):
    """``prepare.py`` end to end on a real local Ray: nothing of Ray's reaches the console."""
    corpus = make_tiny_corpus(tmp_path / "videos")
    done = subprocess.run(
        [sys.executable, "workflows/prepare.py", "--data", str(corpus), "--output", str(tmp_path / "clips")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.replace("\r", "\n").splitlines() if line.strip()]
    internals = [line for line in lines if not line.startswith(("[avray]", "decoding:", "indexed", "wrote", "skipped"))]
    assert not internals, internals
    assert any(line.startswith("decoding:") and "100%" in line for line in lines)
    assert done.stderr == ""
    logs = list((tmp_path / "clips" / console.LOG_FOLDER).glob("prepare-*.log"))
    assert len(logs) == 1 and "Ray" in logs[0].read_text()


def test_ray_never_folds_avray_lines_of_several_workers_together():
    script = textwrap.dedent("""
        import re
        import avray
        from ray._private import ray_constants
        allow = ray_constants.RAY_DEDUP_LOGS_ALLOW_REGEX
        print(all(re.search(allow, line) for line in ("[avray] epoch 1/5  loss 4.1", "[avray:tick] decode +16")))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_DEDUP")}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "True", done.stderr
