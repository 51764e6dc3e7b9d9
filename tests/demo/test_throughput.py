"""ResourceMonitor, run in a fresh process: the test process's own children (a Ray cluster, the
S3 server) would otherwise be counted too."""

import json
import subprocess
import sys

BURNER = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\ntime.sleep(0.3)"


def _measure(body: str) -> dict:
    code = "import json, subprocess, sys\nfrom avray.demo.throughput import ResourceMonitor\n" + body
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_cpu_time_of_a_child_process_is_counted_apart_from_this_one():
    used = _measure(f"""
with ResourceMonitor(interval_s=0.05, memory=False) as monitor:
    subprocess.Popen([sys.executable, "-c", {BURNER!r}]).wait()
print(json.dumps({{"cpu": monitor.cpu_seconds, "idle": monitor.idle_fraction}}))
""")
    assert 0.5 <= used["cpu"]["other processes"] <= 1.5, used
    assert used["cpu"]["this process"] < 0.5, used
    assert "Ray workers" not in used["cpu"], used
    assert 0.0 <= used["idle"] <= 1.0


def test_peak_memory_is_read_only_when_sampled():
    seen = _measure("""
with ResourceMonitor(interval_s=0.05) as monitor:
    before = monitor.sample()
    ballast = bytearray(64 << 20)
    ballast[::4096] = b"x" * len(ballast[::4096])
    monitor.sample()
with ResourceMonitor(memory=False) as cheap:
    pass
try:
    cheap.peak_mb
    refused = ""
except ValueError as err:
    refused = str(err)
print(json.dumps({"grew_mb": monitor.peak_mb - before / 2**20, "refused": refused}))
""")
    assert seen["grew_mb"] >= 60, seen
    assert "memory=False" in seen["refused"], seen
