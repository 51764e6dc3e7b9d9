"""Start-up checks: what a job reads, writes and logs to, checked in seconds before any cluster work.

Without them a wrong data path surfaces only once Ray is up, a dead S3 endpoint or MLflow
server only after minutes of retries (pyarrow's and MLflow's defaults), and with a Ray
address that does not answer, never. Each failure here is one line naming what is wrong
and what to set: a :class:`PreflightError`, or the ``SourceError`` the data layer raises
for a missing or empty data path. ``avray.cli.run`` prints it as ``error: ...`` and exits 2.
"""

from __future__ import annotations

import json
import math
import os
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

from avray import console
from avray.config import Config, DataConfig
from avray.data.shards import DataSource, resolve_source
from avray.data.sources import list_videos
from avray.models import check_model_config
from avray.storage import filesystem_for
from avray.tracking import tracking_uri

# Short timeouts and one retry: an endpoint that is up answers well within them, and one
# that is down fails the check in seconds.
S3_CONNECT_TIMEOUT_S = 3.0
S3_REQUEST_TIMEOUT_S = 5.0
S3_ATTEMPTS = 2
MLFLOW_TIMEOUT_S = 5.0
# The object written (and deleted) to check that an S3 output takes writes; "_": parquet
# readers skip it, should a run die between the two requests.
WRITE_PROBE = "_avray-write-check"
# How long a cluster that autoscales may take to add the nodes a job asks for (cloud VMs
# and GPU nodes take minutes to boot); AVRAY_AUTOSCALE_WAIT_S changes it.
AUTOSCALE_WAIT_S = float(os.environ.get("AVRAY_AUTOSCALE_WAIT_S", 600))
AUTOSCALE_POLL_S = 1.0

# Words in pyarrow's S3 errors (from the AWS SDK and curl) that tell the failures apart.
S3_UNREACHABLE = ("NETWORK_CONNECTION", "curlCode")
S3_REFUSED = ("ACCESS_DENIED", "InvalidAccessKeyId", "SignatureDoesNotMatch", "HTTP status 403")


class PreflightError(ValueError):
    """Something outside the config keeps the job from starting; the message says what to fix."""


def check_job(
    cfg: Config, *, data: str | None = None, output: str | None = None, track: bool = False
) -> DataSource | None:
    """What a job needs before it starts: its model config, its data source, its output
    location and, for a job that logs to MLflow (``track``), the tracking server. Returns the
    data source resolved (what the job then reads), or None without ``data``."""
    check_model_config(cfg.model, cfg.data)
    source = check_data(data, cfg.data) if data is not None else None
    if output is not None:
        check_output(output, cfg.data.endpoint_override)
    if track:
        # Only a server can fail to answer, and the output folder only places the sqlite
        # default (a remote one would have tracking_uri warn twice).
        check_tracking_server(tracking_uri(cfg.tracking, output="."))
    return source


def check_data(uri: str, cfg: DataConfig) -> DataSource:
    """``uri`` holds prepared clips, or videos (a manifest is read: it must list some); what it
    holds, resolved once for the job to use.

    An S3 prefix that exists is not listed here: listing a large bucket takes minutes, and
    the pipeline lists it anyway; a missing one is.
    """
    fs, path = filesystem_for(uri, cfg.endpoint_override)
    s3_prefix = isinstance(fs, pafs.S3FileSystem) and _s3_file_info(uri, fs, path).type == pafs.FileType.Directory
    source = resolve_source(uri, cfg.endpoint_override)
    if not s3_prefix and not source.prepared:
        list_videos(uri, cfg.extensions, cfg.endpoint_override)
    return source


def check_output(uri: str, endpoint_override: str | None = None) -> None:
    """An S3 output's bucket exists and the credentials may write there and delete (an object
    is written and deleted: only a write proves it); a local output is a folder this process
    can write, or can be created (nothing is created here)."""
    fs, path = filesystem_for(uri, endpoint_override)
    if isinstance(fs, pafs.S3FileSystem):
        _s3_file_info(uri, fs, path.split("/", 1)[0])
        _s3_check_writable(uri, fs, path)
        return
    target = Path(path)
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        raise PreflightError(f"output {uri}: {existing} is a file, not a folder; give another --output")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PreflightError(f"output {uri}: {existing} is not writable by this user; give another --output")


def _s3_check_writable(uri: str, fs: pafs.S3FileSystem, path: str) -> None:
    """The credentials may write under ``path`` and delete what they wrote; otherwise a
    PreflightError, before a run that would fail at its first checkpoint, an hour in. What is
    left is the folder's marker that pyarrow writes on deleting a file (the output folder)."""
    quick = _quick(fs)
    probe = f"{path}/{WRITE_PROBE}-{uuid.uuid4().hex}"
    try:
        with quick.open_output_stream(probe) as handle:
            handle.write(b"avray checks that it may write here")
        quick.delete_file(probe)
    except OSError as err:
        detail = _s3_detail(err)
        if not any(word in detail for word in S3_REFUSED):
            raise PreflightError(_s3_failure(uri, _s3_endpoint(fs), err)) from None
        raise PreflightError(
            f"the S3 endpoint {_s3_endpoint(fs)} does not let these credentials write to {uri} ({detail}): "
            "grant them s3:PutObject and s3:DeleteObject there, or give another --output"
        ) from None


def _quick(fs: pafs.S3FileSystem) -> pafs.S3FileSystem:
    """``fs`` without pyarrow's long retries: an endpoint that is up answers well within them."""
    return pafs.S3FileSystem(
        **{
            **_s3_options(fs),
            "connect_timeout": S3_CONNECT_TIMEOUT_S,
            "request_timeout": S3_REQUEST_TIMEOUT_S,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS),
        }
    )


def _s3_file_info(uri: str, fs: pafs.S3FileSystem, path: str) -> pafs.FileInfo:
    """``path`` (``bucket/key``) as the endpoint of ``fs`` sees it, asked without pyarrow's long
    retries; an endpoint that does not answer, refused credentials and a missing bucket are
    each a PreflightError naming the endpoint. ``uri`` is what the user wrote."""
    quick = _quick(fs)
    bucket = path.split("/", 1)[0]
    try:
        info = quick.get_file_info(path)
        if info.type == pafs.FileType.NotFound and quick.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise PreflightError(
                f"bucket {bucket!r} does not exist at the S3 endpoint {_s3_endpoint(fs)}: create it, or fix {uri}"
            )
    except OSError as err:
        raise PreflightError(_s3_failure(uri, _s3_endpoint(fs), err)) from None
    return info


def _s3_endpoint(fs: pafs.S3FileSystem) -> str:
    """The endpoint ``fs`` talks to, fit to print."""
    options = _s3_options(fs)
    if options["endpoint_override"]:
        return without_userinfo(f"{options['scheme']}://{options['endpoint_override']}")
    return f"https://s3.{options['region'] or 'us-east-1'}.amazonaws.com"


def _s3_options(fs: pafs.S3FileSystem) -> dict:
    """The keyword arguments ``fs`` was built with (pyarrow pickles an S3FileSystem as them)."""
    _, (options,) = fs.__reduce__()
    return options


def _s3_detail(err: OSError) -> str:
    """What the endpoint answered, from pyarrow's message ("When getting information for key ...
    in bucket ...: AWS Error ..."), on one line."""
    return " ".join(str(err).split(": ", 1)[-1].split())


def _s3_failure(uri: str, endpoint: str, err: OSError) -> str:
    detail = _s3_detail(err)
    if any(word in detail for word in S3_UNREACHABLE):
        return (
            f"cannot reach the S3 endpoint {endpoint} for {uri} ({detail}): start it, or set "
            "AWS_ENDPOINT_URL or data.endpoint_override to the endpoint that serves the bucket"
        )
    if any(word in detail for word in S3_REFUSED):
        return (
            f"the S3 endpoint {endpoint} refused the credentials for {uri} ({detail}): check "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and the bucket's permissions"
        )
    return f"the S3 endpoint {endpoint} cannot serve {uri}: {detail}"


def check_tracking_server(uri: str) -> None:
    """An http(s) MLflow tracking server answers ``GET /health`` within seconds. Any answer
    but a 5xx will do: a proxy may guard the route, and whether a TLS certificate is trusted
    is for MLflow's own settings (``MLFLOW_TRACKING_INSECURE_TLS``, ...) to say. A local
    store (sqlite, a folder) needs no server."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    health = urlunsplit(
        urlsplit(without_userinfo(uri))._replace(path=parts.path.rstrip("/") + "/health", query="", fragment="")
    )
    try:
        with urllib.request.urlopen(health, timeout=MLFLOW_TIMEOUT_S):
            return
    except urllib.error.HTTPError as err:
        err.close()
        if err.code < 500:
            return
        reason = f"HTTP {err.code} {err.reason}"
    except urllib.error.URLError as err:  # refused, no such host, a TLS handshake
        if isinstance(err.reason, ssl.SSLError):
            return
        reason = str(err.reason)
    except (OSError, ValueError) as err:  # timed out while reading, a malformed port
        reason = str(err)
    raise PreflightError(
        f"MLflow tracking server {without_userinfo(uri)} does not answer ({reason}): start it, or fix "
        "tracking.tracking_uri / MLFLOW_TRACKING_URI (unset both to log to a sqlite file in the output folder)"
    )


def without_userinfo(uri: str) -> str:
    """``uri`` without ``user:password@``: fit to print, and what urllib can open."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


@dataclass(frozen=True)
class ResourceAsk:
    """``count`` bundles of ``bundle`` that a job asks Ray for, each on one node (a worker, a
    trial, a task); ``settings`` names the config values that chose them."""

    what: str
    count: int
    bundle: Mapping[str, float]
    settings: str


def training_ask(cfg: Config) -> ResourceAsk:
    from avray.train.trainer import scaling

    scaling_config = scaling(cfg)
    return ResourceAsk(
        "pretraining worker",
        scaling_config.num_workers,
        scaling_config.resources_per_worker,
        f"train.num_workers={_setting(cfg.train.num_workers)}, train.cpus_per_worker={cfg.train.cpus_per_worker:g}, "
        f"train.use_gpu={_setting(cfg.train.use_gpu)}",
    )


def trial_ask(cfg: Config) -> ResourceAsk:
    """One trial: Tune runs as many at once as the cluster holds, and at least one must fit."""
    bundle = {"CPU": cfg.tune.cpus_per_trial, "GPU": cfg.tune.gpus_per_trial}
    return ResourceAsk(
        "sweep trial",
        1,
        {name: amount for name, amount in bundle.items() if amount > 0},
        f"tune.cpus_per_trial={cfg.tune.cpus_per_trial:g}, tune.gpus_per_trial={cfg.tune.gpus_per_trial:g}",
    )


def decode_ask(cfg: Config) -> ResourceAsk:
    """One task reading or decoding clips (every job that reads a corpus has them)."""
    return ResourceAsk(
        "decode task",
        1,
        {"CPU": cfg.data.cpus_per_decode_task},
        f"data.cpus_per_decode_task={cfg.data.cpus_per_decode_task:g}",
    )


def _setting(value) -> str:
    return "auto" if value is None else str(value).lower()


def check_resources(*asks: ResourceAsk, wait_s: float = AUTOSCALE_WAIT_S) -> None:
    """Every ask fits on the cluster Ray joined, or a PreflightError naming what was asked and
    what the cluster has. Ray would instead wait for it forever (Ray Train's worker group
    times out and retries, a Tune trial stays PENDING, a task never starts).

    A cluster that autoscales (:func:`autoscaler_node_types`) is given ``wait_s`` to add nodes
    for what does not fit yet, unless the node types its autoscaler may add cannot hold it."""
    nodes = node_resources()
    short = [ask for ask in asks if bundles_that_fit(ask.bundle, nodes) < ask.count]
    if not short:
        return
    node_types = autoscaler_node_types()
    if node_types is None:
        raise PreflightError(_not_held(short[0], nodes, "and nothing autoscales it"))
    for ask in short:
        if node_types and _fit_in_node_types(ask.bundle, node_types) < ask.count:
            raise PreflightError(
                _not_held(ask, nodes, f"and its autoscaler adds at most {_node_types(node_types, ask.bundle)}")
            )
    _wait_for_autoscaler(short, wait_s)


def node_resources() -> list[dict[str, float]]:
    """The resources of each node of the cluster that is alive."""
    import ray

    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def bundles_that_fit(bundle: Mapping[str, float], nodes: Sequence[Mapping[str, float]]) -> float:
    """How many copies of ``bundle`` the ``nodes`` hold, each copy on one node."""
    return sum(_per_node(bundle, node) for node in nodes)


def _per_node(bundle: Mapping[str, float], node: Mapping[str, float]) -> float:
    """Copies of ``bundle`` one ``node`` holds (``math.inf`` for a bundle that asks for nothing)."""
    return min((node.get(name, 0) // amount for name, amount in bundle.items() if amount > 0), default=math.inf)


def _fit_in_node_types(bundle: Mapping[str, float], node_types: Sequence[tuple[dict[str, float], float]]) -> float:
    return sum(count * fits for resources, count in node_types if (fits := _per_node(bundle, resources)))


def autoscaler_node_types() -> list[tuple[dict[str, float], float]] | None:
    """The node types the cluster's autoscaler may add, each with its resources and max count
    (``math.inf``: no limit); an empty list when the autoscaler does not say; None when
    nothing autoscales the cluster.

    An autoscaler announces itself in the GCS: autoscaler v2 (KubeRay, the cluster launcher
    with ``RAY_enable_autoscaler_v2=1``) stores the cluster's node types and their max counts,
    which Ray Train checks its worker group against too; autoscaler v1's monitor stores its
    report every few seconds (what ``ray status`` prints, with no max counts in it). Every
    head runs that monitor, but without an autoscaling config (``ray.init``, ``ray start
    --head`` alone) it only watches, and names each node's type after the node."""
    from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
    from ray._private.state import state
    from ray.autoscaler._private.util import format_readonly_node_type
    from ray.experimental.internal_kv import _internal_kv_get

    config = state.get_cluster_config()
    if config is not None and config.node_group_configs:
        return [
            (
                {name: float(amount) for name, amount in group.resources.items()},
                math.inf if group.max_count == -1 else group.max_count,
            )
            for group in config.node_group_configs
        ]
    status = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
    node_types = (json.loads(status).get("autoscaler_report") or {}).get("node_type_mapping") or {} if status else {}
    if any(node_type != format_readonly_node_type(node) for node, node_type in node_types.items()):
        return []
    return None


def _wait_for_autoscaler(asks: Sequence[ResourceAsk], wait_s: float) -> None:
    """Ask the autoscaler for ``asks`` and wait up to ``wait_s`` until the cluster holds them."""
    from ray.autoscaler.sdk import request_resources

    console.say(f"[avray] waiting up to {wait_s:.0f} s for the autoscaler to add nodes for {_asked(asks[0])}")
    request_resources(bundles=[dict(ask.bundle) for ask in asks for _ in range(ask.count)])
    deadline = time.monotonic() + wait_s
    try:
        while short := [ask for ask in asks if bundles_that_fit(ask.bundle, node_resources()) < ask.count]:
            if time.monotonic() >= deadline:
                raise PreflightError(
                    _not_held(short[0], node_resources(), f"and its autoscaler added none for it in {wait_s:.0f} s")
                )
            time.sleep(AUTOSCALE_POLL_S)
    finally:
        request_resources(bundles=[])  # a request stands until replaced: it would keep the nodes up for good


def _not_held(ask: ResourceAsk, nodes: Sequence[Mapping[str, float]], why: str) -> str:
    return (
        f"{_asked(ask)} ({ask.settings}), but the cluster holds {bundles_that_fit(ask.bundle, nodes):g}: it has "
        f"{_nodes(nodes, ask.bundle)}, {why}; lower them, or join a cluster that has them (--ray-address)"
    )


def _asked(ask: ResourceAsk) -> str:
    return f"{ask.count} {ask.what}{'s' if ask.count != 1 else ''} of ({_amounts(ask.bundle, ask.bundle)}) each"


def _nodes(nodes: Sequence[Mapping[str, float]], bundle: Mapping[str, float]) -> str:
    """``nodes`` in a few words, naming only the resources ``bundle`` asks for."""
    kinds = Counter(_amounts(node, bundle) for node in nodes)
    return f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}: " + ", ".join(
        f"{count} x ({kind})" for kind, count in kinds.items()
    )


def _node_types(node_types: Sequence[tuple[dict[str, float], float]], bundle: Mapping[str, float]) -> str:
    return ", ".join(f"{count:g} x ({_amounts(resources, bundle)})" for resources, count in node_types)


def _amounts(resources: Mapping[str, float], bundle: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {resources.get(name, 0):g}" for name, amount in sorted(bundle.items()) if amount > 0)
