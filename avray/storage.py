"""Where bytes live: local paths and ``s3://`` URIs, read and written through ``pyarrow.fs``.

Credentials follow the standard AWS chain (environment, ``~/.aws``, instance role);
``endpoint_override`` (or ``AWS_ENDPOINT_URL``) points at an S3-compatible server (MinIO,
SeaweedFS, ...), which pyarrow itself would not look for.
"""

from __future__ import annotations

import os
import posixpath
from urllib.parse import urlparse

import pyarrow.fs as pafs


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
        endpoint = endpoint_override or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kwargs: dict = {}
        if endpoint:
            endpoint_url = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
            kwargs["endpoint_override"] = endpoint_url.netloc
            kwargs["scheme"] = endpoint_url.scheme
            # S3-compatible servers rarely care about the region, but pyarrow must not
            # go looking for the bucket's region on AWS.
            kwargs["region"] = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        elif os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"):
            kwargs["region"] = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return pafs.S3FileSystem(**kwargs), f"{parsed.netloc}{parsed.path}".rstrip("/")
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else uri
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    raise SourceError(f"unsupported data location {uri!r}: use a local path, a manifest file or s3://bucket/prefix")


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


def read_file(uri: str) -> bytes | None:
    """The bytes of the file ``uri`` (local or s3://), or None where there is no such file."""
    fs, path = filesystem_for(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as handle:
        return handle.read()


def write_file(uri: str, data: bytes) -> None:
    """``data`` as the file ``uri`` (local or s3://), replacing it whole: object stores do not append."""
    fs, path = filesystem_for(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(os.path.dirname(path), recursive=True)
    with fs.open_output_stream(path) as handle:
        handle.write(data)
