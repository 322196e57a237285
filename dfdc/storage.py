"""Where every stage reads and writes: local folders and s3:// URIs through fsspec.

S3 settings are the standard AWS ones (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_PROFILE, ...), read
by botocore itself, so the same code talks to AWS, rclone's or moto's S3 server unchanged.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile

# botocore >= 1.36 asks for and checks CRC checksums on every request; S3-compatible servers such
# as rclone's do not send them on ranged reads, and multipart parts then lack a content length.
# AWS itself is fine either way. Set before any botocore client exists; the user's value wins.
os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")

import fsspec  # noqa: E402
from fsspec import AbstractFileSystem  # noqa: E402


# What S3 clients in other processes (Ray workers) need to reach the same store as this one.
AWS_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_RESPONSE_CHECKSUM_VALIDATION", "AWS_REQUEST_CHECKSUM_CALCULATION")


def worker_env() -> dict[str, str]:
    """This process's S3 settings, to hand to Ray workers (a cluster with instance roles sets none)."""
    return {k: os.environ[k] for k in AWS_SETTINGS if k in os.environ}


def filesystem(uri: str) -> tuple[AbstractFileSystem, str]:
    """The filesystem of `uri` and the path inside it."""
    options = {}
    if uri.startswith("s3://"):
        # Several processes write the same prefix: never answer from a stale listing.
        options["use_listings_cache"] = False
    return fsspec.core.url_to_fs(uri, **options)


def join(uri: str, *parts: str) -> str:
    return posixpath.join(uri.rstrip("/"), *parts) if uri else posixpath.join(*parts)


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    return fs.cat_file(path)


def write_bytes(uri: str, data: bytes) -> None:
    """Write an object so that readers see either nothing or all of it.

    An S3 PUT (and a multipart upload, at its completion) is atomic; on a local disk we write a
    temporary file beside the target and rename it.
    """
    fs, path = filesystem(uri)
    if is_remote(uri):
        fs.pipe_file(path, data)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def put_file(local_path: str, uri: str) -> None:
    """Upload a finished local file to `uri`, atomically as `write_bytes` does."""
    fs, path = filesystem(uri)
    if is_remote(uri):
        fs.put_file(local_path, path)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
    os.close(fd)
    shutil.copyfile(local_path, tmp)
    os.replace(tmp, path)


def list_files(uri: str) -> dict[str, int]:
    """Every file below `uri`, as {path relative to uri: size in bytes}."""
    fs, root = filesystem(uri)
    root = root.rstrip("/")
    if not fs.exists(root):
        return {}
    found = fs.find(root, detail=True)
    out = {}
    for path, info in found.items():
        if info.get("type") == "directory":
            continue
        rel = posixpath.relpath(path, root) if path != root else posixpath.basename(path)
        out[rel] = int(info.get("size") or 0)
    return out


def remove(uri: str) -> None:
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)
