import subprocess
import sys

import pytest

from avray.data.throughput import ResourceMonitor

BURN = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass"


def test_cpu_time_of_a_child_process_is_counted_apart_from_this_one():
    with ResourceMonitor(interval_s=0.05, memory=False) as monitor:
        subprocess.Popen([sys.executable, "-c", BURN + "\nimport time; time.sleep(0.3)"]).wait()
    used = monitor.cpu_seconds
    assert 0.5 <= used["other processes"] <= 1.5, used
    assert used.get("Ray workers", 0.0) == 0.0
    assert 0.0 <= monitor.idle_fraction <= 1.0


def test_peak_memory_is_read_only_when_sampled():
    with ResourceMonitor(interval_s=0.05) as monitor:
        before = monitor.sample()
        ballast = bytearray(64 << 20)
        ballast[::4096] = b"x" * len(ballast[::4096])
        monitor.sample()
    assert monitor.peak_mb - before / 2**20 >= 60
    with ResourceMonitor(memory=False) as cheap:
        pass
    with pytest.raises(ValueError, match="memory=False"):
        cheap.peak_mb
