"""Where every stage reads and writes: local folders and s3:// URIs through fsspec.

S3 settings are the standard AWS ones (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_PROFILE, ...), read
by botocore itself, so the same code talks to AWS, rclone's or moto's S3 server unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import shutil
import tempfile

# botocore >= 1.36 asks for and checks CRC checksums on every request; S3-compatible servers such
# as rclone's do not send them on ranged reads, and multipart parts then lack a content length.
# AWS itself is fine either way. Set before any botocore client exists; the user's value wins.
os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")

import fsspec  # noqa: E402
from fsspec import AbstractFileSystem  # noqa: E402


# Settings that say where the data is and how to talk to it, handed to Ray workers. Never who
# you are: keys, session tokens and profile names stay out of runtime envs (they would sit in job
# and task specs, and temporary keys expire during a long job); every worker resolves its own
# credentials through botocore's chain (env of its node, AWS_PROFILE there, instance role).
WORKER_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_RESPONSE_CHECKSUM_VALIDATION",
                   "AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS")
SECRET_SETTINGS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def worker_env() -> dict[str, str]:
    """This process's non-secret S3 settings, for the env of Ray workers."""
    return {k: os.environ[k] for k in WORKER_SETTINGS if k in os.environ}


class StorageError(Exception):
    """Storage could not be used: a failure to fix or retry, never a verdict on the data.

    One line that names the URI, the cause and the fix."""

    def __init__(self, uri: str, cause: str, detail: str, fix: str):
        super().__init__(uri, cause, detail, fix)
        self.uri, self.cause, self.detail, self.fix = uri, cause, detail, fix

    def __reduce__(self):  # OSError (NotFound's base) keeps only two args: rebuild from ours, across Ray too
        return type(self), (self.uri, self.cause, self.detail, self.fix)

    def __str__(self) -> str:
        return f"{self.uri}: {self.cause} ({self.detail}); {self.fix}"


class NotFound(StorageError, FileNotFoundError):
    """The object is not there (callers that expect that catch FileNotFoundError)."""

    def __str__(self) -> str:
        return f"{self.uri}: not found ({self.detail}); {self.fix}"


def _endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL") or "the AWS S3 endpoint"


FIXES = {
    "no credentials": "give this process credentials: AWS_PROFILE, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or an "
                      "instance role; for the local stack run `dfdc local up` and `eval \"$(dfdc local env)\"`",
    "credentials refused": "the keys are wrong, expired, meant for another endpoint, or not allowed this bucket: renew "
                           "them, check AWS_PROFILE and AWS_ENDPOINT_URL, or grant the S3 actions (see infra/cloudformation/)",
    "access denied": "these credentials may not do this: grant the S3 actions (see infra/cloudformation/) or use another role",
    "connection refused": "nothing listens at {endpoint}: start the server (`dfdc local up` for the local stack) or "
                          "fix AWS_ENDPOINT_URL",
    "unreachable": "{endpoint} cannot be reached: check the network, AWS_ENDPOINT_URL and AWS_REGION",
    "throttled": "S3 kept answering SlowDown after retries: run again later, or raise AWS_MAX_ATTEMPTS",
    "server error": "the S3 server failed after retries: run again later",
    "storage failure": "reading or writing failed below the data itself: run again; if it persists, check the "
                       "network, AWS_ENDPOINT_URL and the credentials (or the disk, for a local path)",
    "not found": "check the URI",
}
_REFUSED_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException", "InvalidToken",
                  "TokenRefreshRequired", "InvalidClientTokenId", "UnrecognizedClientException"}
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "InvalidObjectState"}
_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_THROTTLED_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "503"}


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _cause(exc: BaseException) -> str | None:
    """What went wrong with storage, in a few words; None when `exc` is not a storage failure."""
    names = {c.__name__ for e in _chain(exc) for c in type(e).__mro__}
    text = " ".join(str(e) for e in _chain(exc))
    codes = set()
    for e in _chain(exc):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            err = response.get("Error") or {}
            codes |= {str(err.get("Code")), str((response.get("ResponseMetadata") or {}).get("HTTPStatusCode"))}
    if names & {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError", "NoAuthTokenError"}:
        return "no credentials"
    if codes & _REFUSED_CODES or any(c in text for c in _REFUSED_CODES):
        return "credentials refused"
    if codes & _DENIED_CODES:
        return "access denied"
    if "403" in codes:  # HEAD answers carry no error code: bad keys and a denying policy look the same
        return "credentials refused"
    if "PermissionError" in names:
        return "access denied"
    if codes & _NOT_FOUND_CODES or "FileNotFoundError" in names:
        return "not found"
    if codes & _THROTTLED_CODES or "SlowDown" in text:
        return "throttled"
    if "ConnectionRefusedError" in names or "Connection refused" in text:
        return "connection refused"
    if names & {"gaierror", "EndpointConnectionError", "ConnectTimeoutError", "ConnectionError", "TimeoutError",
                "ClientConnectorError", "ServerDisconnectedError", "ConnectionClosedError", "ReadTimeoutError",
                "ClientPayloadError", "ClientOSError", "HTTPClientError", "ResponseStreamingError", "IncompleteRead",
                "IncompleteReadError", "ProtocolError"}:
        return "unreachable"
    if any(c.startswith("5") and len(c) == 3 for c in codes) or "InternalError" in codes:
        return "server error"
    return None


# errno values of a local or network filesystem failing, not of a file's content.
_FAILING_DISK = {errno.EIO, errno.ENOTCONN, errno.ESTALE, errno.ETIMEDOUT, errno.EHOSTDOWN, errno.EHOSTUNREACH,
                 errno.ENETUNREACH, errno.ECONNRESET, errno.ENODEV, errno.ENXIO}


def _os_failure(exc: BaseException, uri: str) -> OSError | None:
    """An OSError below the data that `_cause` did not name: from an s3:// file object any OSError
    is the service's or the network's (content errors there are ValueError, EOFError, BadZipFile...);
    on a local path only errno values of a failing disk or network mount."""
    for e in _chain(exc):
        if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
            if is_remote(uri) or e.errno in _FAILING_DISK:
                return e
    return None


def explain(exc: BaseException, uri: str) -> StorageError | None:
    """`exc` as a StorageError naming `uri`, or None when it is not a storage failure (for example a
    file whose content cannot be parsed)."""
    if isinstance(exc, StorageError):
        return exc
    cause, source = _cause(exc), exc
    if cause is None and (failing := _os_failure(exc, uri)) is not None:
        cause, source = "storage failure", failing
    if cause is None:
        return None
    detail = f"{type(source).__name__}: {source}".strip().rstrip(":")
    local_fix = "check the path and its permissions" if cause != "storage failure" else FIXES[cause]
    fix = FIXES[cause].format(endpoint=_endpoint()) if is_remote(uri) else local_fix
    return (NotFound if cause == "not found" else StorageError)(uri, cause, detail[:300], fix)


@contextlib.contextmanager
def named(uri: str):
    """Turn storage failures inside the block into a StorageError (NotFound for a missing object)."""
    try:
        yield
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001  anything that is not a storage failure goes on as it was
        err = explain(e, uri)
        if err is None:
            raise
        raise err from e


def filesystem(uri: str) -> tuple[AbstractFileSystem, str]:
    """The filesystem of `uri` and the path inside it."""
    options = {}
    if uri.startswith("s3://"):
        # Several processes write the same prefix: never answer from a stale listing.
        options["use_listings_cache"] = False
    return fsspec.core.url_to_fs(uri, **options)


def join(uri: str, *parts: str) -> str:
    return posixpath.join(uri.rstrip("/"), *parts) if uri else posixpath.join(*parts)


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def child(root: str, rel: str) -> str:
    """`rel` (a path read from stored data: a manifest's shard URL, a record's name) joined below
    `root`; ValueError when it could name anything outside `root`: an absolute path, a URL or fsspec
    chain, `.`/`..`/empty segments, backslashes or NUL. S3 takes `..` in a key literally, but a local
    disk, presigned URLs (urllib3 drops dot segments) and some S3 servers do not."""
    bad = (not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or "\0" in rel or "::" in rel
           or _SCHEME.match(rel) or any(seg in ("", ".", "..") for seg in rel.split("/")))
    if bad:
        raise ValueError(f"{rel!r} is not a relative path inside {root}")
    return join(root, rel)


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    with named(uri):
        return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with named(uri):
        return fs.cat_file(path)


def open_input(uri: str, block_size: int = 8 * 1024 * 1024):
    """A file object to read `uri` from, in blocks (ranged GETs on S3). Failures while opening are
    StorageErrors; failures while reading come from the file object (use `named` around them)."""
    fs, path = filesystem(uri)
    with named(uri):
        return fs.open(path, "rb", block_size=block_size) if is_remote(uri) else fs.open(path, "rb")


def _replace_atomically(path: str, write) -> None:
    """On a local disk: `write(tmp)` a temporary file beside `path`, then rename it over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    os.close(fd)
    write(tmp)
    os.replace(tmp, path)


def write_bytes(uri: str, data: bytes) -> None:
    """Write an object so that readers see either nothing or all of it: an S3 PUT (and a multipart
    upload, at its completion) is atomic; on a local disk, a temporary file renamed."""
    fs, path = filesystem(uri)
    with named(uri):
        if is_remote(uri):
            fs.pipe_file(path, data)
        else:
            _replace_atomically(path, lambda tmp: fs.pipe_file(tmp, data))


def put_file(local_path: str, uri: str) -> None:
    """Upload a finished local file to `uri`, atomically as `write_bytes` does."""
    fs, path = filesystem(uri)
    with named(uri):
        if is_remote(uri):
            fs.put_file(local_path, path)
        else:
            _replace_atomically(path, lambda tmp: shutil.copyfile(local_path, tmp))


def list_files(uri: str) -> dict[str, int]:
    """Every file below `uri`, as {path relative to uri: size in bytes}."""
    fs, root = filesystem(uri)
    root = root.rstrip("/")
    with named(uri):
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
    with named(uri):
        if fs.exists(path):
            fs.rm(path, recursive=True)
