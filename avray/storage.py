"""Where bytes live: local paths and ``s3://`` URIs, read and written through ``pyarrow.fs``;
the few writes that must be conditional (:func:`create_new`, :func:`replace_if`,
:func:`delete_if`, for ``avray.lock``) through boto3 on S3, as pyarrow has no conditional put.

Credentials follow the standard AWS chain (environment, ``~/.aws``, instance role);
``endpoint_override`` (or ``AWS_ENDPOINT_URL``) points at an S3-compatible server (MinIO,
SeaweedFS, ...), which pyarrow itself would not look for.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import posixpath
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs

# A conditional request's answers when its condition does not hold: the object is gone (an
# If-Match on a deleted one), or is there / is another version (412 Precondition Failed).
S3_CONDITION_NOT_MET = (404, 412)


class SourceError(ValueError):
    """The data source cannot be used; the message says what to fix."""


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names object storage (``s3://...``) rather than a local path."""
    return "://" in str(uri) and urlparse(str(uri)).scheme not in ("", "file")


def filesystem_for(uri: str, endpoint_override: str | None = None) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for ``uri`` and the path inside it.

    pyarrow ignores ``AWS_ENDPOINT_URL``, so an S3-compatible endpoint is passed explicitly
    (``endpoint_override``, or ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` from the environment).
    """
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        endpoint, region = _s3_endpoint_and_region(endpoint_override)
        kwargs: dict = {"region": region} if region else {}
        if endpoint:
            endpoint_url = urlparse(endpoint)
            kwargs["endpoint_override"] = endpoint_url.netloc
            kwargs["scheme"] = endpoint_url.scheme
        return pafs.S3FileSystem(**kwargs), f"{parsed.netloc}{parsed.path}".rstrip("/")
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else uri
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    raise SourceError(f"unsupported data location {uri!r}: use a local path, a manifest file or s3://bucket/prefix")


def _s3_endpoint_and_region(endpoint_override: str | None) -> tuple[str | None, str | None]:
    """The S3-compatible endpoint (a URL with its scheme) and the region to use, or None for AWS's
    own endpoint and the SDK's region lookup."""
    endpoint = endpoint_override or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not endpoint:
        return None, region
    # S3-compatible servers rarely care about the region, but the SDK must not go looking
    # for the bucket's region on AWS.
    return (endpoint if "://" in endpoint else f"https://{endpoint}"), region or "us-east-1"


def join_uri(base: str, relative: str) -> str:
    """``relative`` resolved against the folder ``base`` (local path or s3:// URI)."""
    # "://", not any scheme: "take:2.mp4" is a relative file name.
    if "://" in relative or os.path.isabs(relative):
        return relative
    if base.startswith("s3://"):
        return f"{base.rstrip('/')}/{relative}"
    return os.path.join(base, relative)


def normalise_uri(uri: str) -> str:
    """One spelling per location: a local path made absolute, ``.``, ``..`` and repeated
    slashes folded in it and in an s3:// key alike (``..`` stops at the bucket, as at ``/``),
    ``file://`` dropped. Lexical, as S3 has no links: a symlink and its target stay two names.
    Other schemes are left as written, for :func:`filesystem_for` to refuse."""
    if uri.startswith("s3://"):
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        return f"s3://{bucket}{posixpath.normpath('/' + key).rstrip('/')}"
    if is_remote(uri):
        return uri
    return os.path.abspath(urlparse(uri).path if uri.startswith("file://") else uri)


def read_file(uri: str, endpoint_override: str | None = None) -> bytes | None:
    """The bytes of the file ``uri`` (local or s3://), or None where there is no such file."""
    fs, path = filesystem_for(uri, endpoint_override)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as handle:
        return handle.read()


def write_file(uri: str, data: bytes, endpoint_override: str | None = None) -> None:
    """``data`` as the file ``uri`` (local or s3://), replacing it whole: object stores do not append."""
    fs, path = filesystem_for(uri, endpoint_override)
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(os.path.dirname(path), recursive=True)
    with fs.open_output_stream(path) as handle:
        handle.write(data)


@dataclass(frozen=True)
class Versioned:
    """An object's bytes and the version they are (an S3 ETag, locally a digest of the bytes),
    which :func:`replace_if` and :func:`delete_if` compare against."""

    body: bytes
    version: str


# Conditional writes of one small object, for what must have one writer (avray.lock). On S3,
# If-None-Match / If-Match (AWS since 2024, SeaweedFS: tests/test_lock.py, MinIO): the server
# decides, no race is left, on a server that honours them; one that ignored them would let two
# runs in at once. A local file is created by a
# hard link, which fails when the name is taken; a local replace or delete compares, then acts,
# holding flock on the folder, which every process of the machine that does the same respects
# (on a network filesystem, as far as its locks go: NFS emulates them with byte-range locks).


def create_new(uri: str, body: bytes, endpoint_override: str | None = None) -> str | None:
    """Write ``body`` to ``uri`` only if nothing is there: the version written, or None."""
    if is_remote(uri):
        written = _s3_conditional(_s3_client(endpoint_override).put_object, uri, Body=body, IfNoneMatch="*")
        return written["ETag"] if written is not None else None
    _, path = filesystem_for(uri)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    staged = _staged(path, body)
    try:
        os.link(staged, path)
        return _digest(body)
    except FileExistsError:
        return None
    finally:
        os.unlink(staged)


def read_versioned(uri: str, endpoint_override: str | None = None) -> Versioned | None:
    """The object at ``uri`` and its version, or None where there is none."""
    if is_remote(uri):
        import botocore.exceptions

        bucket, key = _bucket_and_key(uri)
        try:
            answer = _s3_client(endpoint_override).get_object(Bucket=bucket, Key=key)
        except botocore.exceptions.ClientError as err:
            if err.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise
        return Versioned(answer["Body"].read(), answer["ETag"])
    try:
        with open(filesystem_for(uri)[1], "rb") as handle:
            body = handle.read()
    except FileNotFoundError:
        return None
    return Versioned(body, _digest(body))


def replace_if(uri: str, body: bytes, version: str, endpoint_override: str | None = None) -> str | None:
    """Write ``body`` to ``uri`` only if it still holds ``version``: the new version, or None."""
    if is_remote(uri):
        written = _s3_conditional(_s3_client(endpoint_override).put_object, uri, Body=body, IfMatch=version)
        return written["ETag"] if written is not None else None
    path = filesystem_for(uri)[1]
    with _folder_held(path):
        current = read_versioned(uri)
        if current is None or current.version != version:
            return None
        os.replace(_staged(path, body), path)
    return _digest(body)


def delete_if(uri: str, version: str, endpoint_override: str | None = None) -> bool:
    """Delete ``uri`` only if it still holds ``version``: whether it was deleted."""
    if is_remote(uri):
        return _s3_conditional(_s3_client(endpoint_override).delete_object, uri, IfMatch=version) is not None
    path = filesystem_for(uri)[1]
    with _folder_held(path):
        current = read_versioned(uri)
        if current is None or current.version != version:
            return False
        os.unlink(path)
    return True


@contextlib.contextmanager
def _folder_held(path: str) -> Iterator[None]:
    """flock on the folder of ``path``, for as long as the block runs."""
    folder = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)  # which releases the flock


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _staged(path: str, body: bytes) -> str:
    """``body`` in a new file beside ``path`` (same folder: what a link or a rename needs)."""
    staged = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(staged, "wb") as handle:
        handle.write(body)
    return staged


def _bucket_and_key(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def _s3_client(endpoint_override: str | None):
    """A boto3 S3 client for the endpoint and region :func:`filesystem_for` would use."""
    import boto3
    import botocore.config

    endpoint, region = _s3_endpoint_and_region(endpoint_override)
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        config=botocore.config.Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 3}),
    )


def _s3_conditional(request, uri: str, **kwargs) -> dict | None:
    """Send a conditional ``request`` (a boto3 client's method) for ``uri``: its answer, or
    None where its condition did not hold."""
    import botocore.exceptions

    bucket, key = _bucket_and_key(uri)
    try:
        return request(Bucket=bucket, Key=key, **kwargs)
    except botocore.exceptions.ClientError as err:
        if err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in S3_CONDITION_NOT_MET:
            return None
        raise
