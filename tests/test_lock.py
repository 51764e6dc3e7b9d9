"""One run per output folder (avray.lock): a second run is refused naming the owner, a lock
whose run is gone is taken over, and the lock goes with its run; on local folders and on S3
(SeaweedFS: conditional puts, so of many runs starting at once exactly one wins)."""

import os
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import psutil
import pytest

from avray.lock import LOCK_FILE, STALE_AFTER_S, OutputInUse, OutputLock, Owner, is_gone
from avray.storage import create_new, join_uri, read_versioned, replace_if


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path):
    """An output folder that no run owns yet, on this machine's disk or in a SeaweedFS bucket."""
    if request.param == "local":
        return str(tmp_path / "run")
    server = request.getfixturevalue("s3_env")
    bucket = "locks"
    try:
        server.client().create_bucket(Bucket=bucket)
    except server.client().exceptions.BucketAlreadyOwnedByYou:
        pass
    return f"s3://{bucket}/{tmp_path.name}/run"


def lock_record(output: str) -> Owner | None:
    held = read_versioned(join_uri(output, LOCK_FILE))
    return Owner.from_bytes(held.body) if held is not None else None


def plant(output: str, owner: Owner) -> None:
    """A lock of ``owner``'s, as a run that died without unwinding leaves it."""
    assert create_new(join_uri(output, LOCK_FILE), owner.to_bytes())


def test_a_second_run_is_refused_naming_the_owner_and_may_start_once_the_first_ends(output):
    with OutputLock(output, "prepare") as first:
        with pytest.raises(OutputInUse) as refused:
            OutputLock(output, "pretrain").acquire()
        message = str(refused.value)
        assert "\n" not in message
        assert (
            f"output {output} is in use by prepare (pid {os.getpid()} on host {first.owner.host}, started " in message
        )
        assert re.search(r"UTC, last heartbeat [01] s ago\): wait for it to end or give another --output", message)
        assert lock_record(output) == first.owner  # the refused run left the lock alone
    assert lock_record(output) is None
    with OutputLock(output, "pretrain") as second:
        assert lock_record(output) == second.owner


def test_of_runs_starting_at_once_exactly_one_owns_the_output(output):
    def start(_):
        lock = OutputLock(output, "pretrain")
        try:
            lock.acquire()
            return lock
        except OutputInUse:
            return None

    with ThreadPoolExecutor(8) as pool:
        started = list(pool.map(start, range(8)))
    owners = [lock for lock in started if lock is not None]
    assert len(owners) == 1 and lock_record(output) == owners[0].owner
    owners[0].release()


def test_a_lock_whose_process_ended_on_this_host_is_taken_over_at_once(output, capsys):
    process = subprocess.Popen(["sleep", "60"])
    dead = replace(
        Owner.this_process("prepare"), pid=process.pid, pid_started=psutil.Process(process.pid).create_time()
    )
    plant(output, dead)
    with pytest.raises(OutputInUse, match=f"in use by prepare \\(pid {process.pid} "):
        OutputLock(output, "prepare").acquire()
    process.kill()
    process.wait()
    with OutputLock(output, "prepare") as taker:
        assert lock_record(output) == taker.owner
    assert (
        f"took over the lock on {output} from a run that is gone: prepare (pid {process.pid}" in capsys.readouterr().out
    )


def test_a_process_is_the_owner_only_if_it_started_when_the_owner_did():
    here = Owner.this_process("pretrain")
    now = time.time()
    assert not is_gone(here, now, here.host)
    assert is_gone(replace(here, pid_started=here.pid_started - 3600), now, here.host)  # the pid was reused


def test_a_lock_from_another_host_is_stale_only_once_its_heartbeat_stops(output):
    now = time.time()
    elsewhere = replace(Owner.this_process("pretrain"), host="ray-head-0", pid=1, heartbeat=now - 60)
    assert not is_gone(elsewhere, now, "laptop") and is_gone(elsewhere, now + STALE_AFTER_S, "laptop")
    plant(output, elsewhere)
    with pytest.raises(OutputInUse, match=r"pid 1 on host ray-head-0, .* last heartbeat 6\d s ago"):
        OutputLock(output, "pretrain").acquire()
    with OutputLock(output, "pretrain", stale_after_s=30) as taker:
        assert lock_record(output) == taker.owner


def test_the_heartbeat_keeps_the_lock_fresh_and_a_lock_taken_over_is_left_to_its_new_owner(output, capsys):
    with OutputLock(output, "tune_losses", heartbeat_s=0.2):
        first = lock_record(output).heartbeat
        deadline = time.monotonic() + 10
        while lock_record(output).heartbeat == first and time.monotonic() < deadline:
            time.sleep(0.1)
        assert lock_record(output).heartbeat > first
        # Another run judged this one gone and took the lock over: this run warns and stops beating.
        usurper = replace(Owner.this_process("tune_losses"), host="other-host")
        uri = join_uri(output, LOCK_FILE)
        while not replace_if(uri, usurper.to_bytes(), read_versioned(uri).version):
            pass  # this run's heartbeat wrote in between: read its new version
        said = ""
        deadline = time.monotonic() + 10
        while "another run took over" not in said and time.monotonic() < deadline:
            time.sleep(0.1)
            said += capsys.readouterr().out
        assert f"[avray] warning: another run took over the lock on {output} (it judged this run gone)" in said
    assert lock_record(output) == usurper  # leaving did not delete the new owner's lock


def test_a_file_by_the_lock_name_that_is_not_a_lock_is_refused(tmp_path):
    (tmp_path / LOCK_FILE).write_text("not json")
    with pytest.raises(OutputInUse, match=f"holds a {LOCK_FILE} that is not avray's lock: delete it"):
        OutputLock(str(tmp_path), "embed").acquire()


def test_many_takers_of_one_stale_lock_leave_one_owner(tmp_path):
    output = str(tmp_path)
    plant(output, replace(Owner.this_process("pretrain"), host="gone-host", heartbeat=0.0))
    barrier = threading.Barrier(6)

    def take(_):
        lock = OutputLock(output, "pretrain")
        barrier.wait()
        try:
            lock.acquire()
            return lock
        except OutputInUse:
            return None

    with ThreadPoolExecutor(6) as pool:
        owners = [lock for lock in pool.map(take, range(6)) if lock is not None]
    assert len(owners) == 1
    owners[0].release()
