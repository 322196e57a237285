"""Many byte ranges of objects at once: the training loader's one GET per sample.

Through s3fs every GET runs botocore's whole request pipeline (build, sign, parse): about 0.8-0.95 ms
of CPU per GET on the 2-core bench machine, as much as decoding a 128 px crop, and on the same cores.
Here each object's URL is presigned once every few minutes (by s3fs, so the endpoint, the bucket's
region and the credential chain are those of every other read) and the ranges go out as plain
HTTP GETs with a Range header on kept-alive connections: by libcurl (`CurlRangeReads`, the default,
about 0.04 ms of CPU a GET) or by urllib3, the HTTP library under botocore, from a thread pool
(`RangeReads`, about 0.45 ms): bench/get_cpu.py. Other filesystems go through fsspec's cat_ranges
(train/data/reader.py).

A presigned URL holds credentials (the session token, with temporary keys), so it is never logged
and never put in an error: errors name the s3:// URI and the byte range only.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

import urllib3


# Signed for 15 minutes, re-signed after 5: a URL in use never outlives its signature, and
# temporary keys (instance roles) that roll over in between are picked up.
URL_EXPIRES_S, URL_REUSE_S = 900, 300
CONCURRENCY = 32  # GETs in flight per loader worker: S3 answers in tens of ms, so many must wait at once
QUICK_TRIES = 3  # a range that fails with 5xx or a broken connection is tried again at once (0.2, 0.4 s),
# and once after 400/403 with a new signature; what still fails goes back to the caller, which
# retries it later (train/data/reader.py)


class RangeReadError(OSError):
    """A ranged GET that failed below the data. `response` has botocore's shape, so that
    dfdc.storage.explain names the cause as it does for s3fs's errors."""

    def __init__(self, uri: str, start: int, end: int, detail: str, code: str = "", status: int = 0):
        super().__init__(f"GET {uri} bytes {start}-{end - 1}: {detail}")
        self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
        # 503 (SlowDown) and 429: the server asks for fewer requests. Not tried again at once, which
        # would add to the load: the reader backs off (train/data/reader.py).
        self.throttled = status in (429, 503)
        self.transient = status >= 500 and not self.throttled
        self.resign = status in (400, 403)  # an expired URL or token: S3 answers 400 ExpiredToken or 403


class RangeConnectionError(RangeReadError, ConnectionError):
    """The server could not be reached or the connection broke."""

    def __init__(self, uri: str, start: int, end: int, detail: str):
        super().__init__(uri, start, end, detail)
        self.transient = True


def _scrub(text: str) -> str:
    """Drop query strings (a presigned URL's credentials) from an HTTP library's message."""
    return re.sub(r"\?\S*", "?…", text)


class _ScrubQueries(logging.Filter):
    """urllib3 logs request URLs (at DEBUG, and on retries): never with a presigned URL's query."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = _scrub(record.getMessage()), ()
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_ScrubQueries())


def _error_code(body: bytes) -> str:
    try:
        return ET.fromstring(body).findtext("Code") or ""
    except ET.ParseError:
        return ""


def _try_again(got: bytes | Exception, attempt: int) -> bool:
    """Whether a range's answer is worth another quick try: a transient failure, or a refusal on the
    first try (perhaps an expired signature; the URL was dropped, so the next try signs it anew)."""
    return getattr(got, "transient", False) or (attempt == 0 and getattr(got, "resign", False))


class SignedRanges:
    """What both HTTP clients share: each object's presigned URL, reused for a few minutes, and the
    reading of an answer. One per process (per loader worker: connections and signatures are reused)."""

    def __init__(self):
        self._signed: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._signer = None

    def cat_ranges(self, uris: list[str], starts: list[int], ends: list[int]) -> list[bytes | Exception]:
        """Each range's bytes (s3:// objects), or the exception of a storage failure, in order."""
        raise NotImplementedError

    def _url(self, uri: str) -> str:
        import s3fs  # noqa: PLC0415

        # SigV4 (s3fs presigns with the legacy SigV2 otherwise, which new regions and rclone refuse),
        # and on AWS each bucket's own region: a presigned URL is not redirected to another region.
        # (Other S3 servers, named by AWS_ENDPOINT_URL(_S3), have one region and no answer to s3fs's
        # lookup, which s3fs then repeats before every signature.) s3fs keeps one such client per
        # process; a new one (clear_instance_cache after the endpoint or the keys changed) makes
        # every URL signed by the old one stale.
        custom = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        signer = s3fs.S3FileSystem(cache_regions=not custom,
                                   config_kwargs={"signature_version": "s3v4"})
        now = time.monotonic()
        with self._lock:
            if signer is not self._signer:
                self._signer, self._signed = signer, {}
            signed = self._signed.get(uri)
        if signed and now - signed[0] < URL_REUSE_S:
            return signed[1]
        url = signer.url(uri.removeprefix("s3://"), expires=URL_EXPIRES_S)
        with self._lock:
            self._signed[uri] = (now, url)
        return url

    def _result(self, uri: str, start: int, end: int, status: int, got: str | None, body: bytes) -> bytes | Exception:
        """The range's bytes from an HTTP answer, or the error it amounts to."""
        if status in (200, 206):
            if got is not None:  # rclone answers a ranged GET with 200 and a Content-Range; S3 with 206
                if got.split("/")[0].strip() == f"bytes {start}-{end - 1}" and len(body) == end - start:
                    return body
            elif status == 200 and len(body) >= end:
                return body[start:end]  # a server that ignores Range sends the whole object
            return RangeReadError(uri, start, end, f"HTTP {status} with {len(body)} bytes and Content-Range "
                                  f"{got!r} for the range", status=status)
        if 400 <= status < 500:  # perhaps an expired signature or token: sign again before the next try
            with self._lock:
                self._signed.pop(uri, None)
        code = _error_code(body)
        return RangeReadError(uri, start, end, f"HTTP {status} {code}".strip(), code=code, status=status)


class RangeReads(SignedRanges):
    """The GETs over urllib3 from a thread pool (`data.range_reads: presigned`)."""

    def __init__(self):
        super().__init__()
        # Certificates as botocore checks them: AWS_CA_BUNDLE, else certifi's. HTTP(S) proxies are
        # not used here: `data.range_reads: s3fs` for networks that need one.
        import certifi  # noqa: PLC0415

        self._http = urllib3.PoolManager(maxsize=CONCURRENCY, retries=False,
                                         ca_certs=os.environ.get("AWS_CA_BUNDLE") or certifi.where(),
                                         timeout=urllib3.Timeout(connect=10, read=60))
        self._pool = ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="range-get")

    def cat_ranges(self, uris: list[str], starts: list[int], ends: list[int]) -> list[bytes | Exception]:
        return list(self._pool.map(self._get, uris, starts, ends))

    def _get(self, uri: str, start: int, end: int) -> bytes | Exception:
        for attempt in range(QUICK_TRIES):
            if attempt:
                time.sleep(0.1 * 2 ** attempt)
            got = self._get_once(uri, start, end)
            if not _try_again(got, attempt):
                break
        return got

    def _get_once(self, uri: str, start: int, end: int) -> bytes | Exception:
        try:
            resp = self._http.request("GET", self._url(uri), headers={"Range": f"bytes={start}-{end - 1}"})
        except urllib3.exceptions.HTTPError as e:
            reason = getattr(e, "reason", None) or e
            return RangeConnectionError(uri, start, end, f"{type(reason).__name__}: {_scrub(str(reason))}")
        except Exception as e:  # noqa: BLE001  signing failed (no credentials...): botocore's error, no URL in it
            return e
        return self._result(uri, start, end, resp.status, resp.headers.get("Content-Range"), resp.data)


class CurlRangeReads(SignedRanges):
    """The same GETs, URLs and answers through libcurl's multi interface (pycurl): every range of a
    call in flight at once from the calling thread, with libcurl doing the HTTP in C. About 0.045 ms
    of CPU a GET against urllib3's 0.42 on the bench machine (bench/get_cpu.py), so a loader worker's
    cores go to decoding. `data.range_reads: curl`, the default. One call at a time: a curl handle
    is not for two threads (a loader worker fetches from one thread anyway)."""

    def __init__(self):
        import certifi  # noqa: PLC0415
        import pycurl  # noqa: PLC0415

        super().__init__()
        self._one_call = threading.Lock()
        self._multi = pycurl.CurlMulti()
        self._idle = []
        for _ in range(CONCURRENCY):
            h = pycurl.Curl()
            h.setopt(pycurl.CAINFO, os.environ.get("AWS_CA_BUNDLE") or certifi.where())
            h.setopt(pycurl.PROXY, "")  # as the urllib3 client: no HTTP proxy (`data.range_reads: s3fs` has them)
            h.setopt(pycurl.CONNECTTIMEOUT, 10)
            h.setopt(pycurl.LOW_SPEED_LIMIT, 1)  # a read that stalls for 60 s fails, like urllib3's read timeout
            h.setopt(pycurl.LOW_SPEED_TIME, 60)
            h.setopt(pycurl.NOSIGNAL, 1)
            self._idle.append(h)

    def cat_ranges(self, uris: list[str], starts: list[int], ends: list[int]) -> list[bytes | Exception]:
        out: list = [None] * len(uris)
        todo = list(range(len(uris)))
        with self._one_call:
            for attempt in range(QUICK_TRIES):  # RangeReads._get's retries, for all the ranges at once
                if attempt:
                    time.sleep(0.1 * 2 ** attempt)
                for i, got in zip(todo, self._perform([(uris[i], starts[i], ends[i]) for i in todo])):
                    out[i] = got
                todo = [i for i in todo if _try_again(out[i], attempt)]
                if not todo:
                    break
        return out

    def _perform(self, reads: list[tuple[str, int, int]]) -> list[bytes | Exception]:
        import io  # noqa: PLC0415

        import pycurl  # noqa: PLC0415

        out: list = [None] * len(reads)
        running: dict = {}  # handle -> (index, body buffer, headers)
        pending = list(range(len(reads)))[::-1]
        try:
            while pending or running:
                while pending and self._idle:
                    i = pending.pop()
                    uri, start, end = reads[i]
                    try:
                        url = self._url(uri)
                    except Exception as e:  # noqa: BLE001  signing failed (no credentials...): botocore's error
                        out[i] = e
                        continue
                    h, body, headers = self._idle.pop(), io.BytesIO(), []
                    h.setopt(pycurl.URL, url)
                    h.setopt(pycurl.RANGE, f"{start}-{end - 1}")
                    h.setopt(pycurl.WRITEFUNCTION, body.write)
                    h.setopt(pycurl.HEADERFUNCTION, headers.append)
                    self._multi.add_handle(h)
                    running[h] = (i, body, headers)
                while self._multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
                    pass
                while True:
                    queued, ok, failed = self._multi.info_read()
                    for h in ok:
                        i, body, headers = running.pop(h)
                        self._multi.remove_handle(h)
                        self._idle.append(h)
                        uri, start, end = reads[i]
                        out[i] = self._result(uri, start, end, h.getinfo(pycurl.RESPONSE_CODE),
                                              _content_range(headers), body.getvalue())
                    for h, _code, message in failed:
                        i, _, _ = running.pop(h)
                        os_errno = h.getinfo(pycurl.OS_ERRNO)  # curl 8 words a refused connection "Could not connect"
                        self._multi.remove_handle(h)
                        self._idle.append(h)
                        uri, start, end = reads[i]
                        why = f" ({os.strerror(os_errno)})" if os_errno else ""
                        out[i] = RangeConnectionError(uri, start, end, f"curl: {_scrub(message)}{why}")
                    if not queued:
                        break
                if running:
                    self._multi.select(1.0)
        finally:
            for h in running:  # an exception above: leave the handles ready for the next call
                self._multi.remove_handle(h)
                self._idle.append(h)
        return out


def _content_range(lines: list[bytes]) -> str | None:
    for line in lines:
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-range":
            return value.strip()
    return None


_reads: tuple[tuple[int, str], SignedRanges] | None = None


def range_reads(client: str = "curl") -> SignedRanges:
    """This process's client of that kind, `curl` or `presigned` (urllib3); a process started by
    fork gets its own."""
    global _reads
    if _reads is None or _reads[0] != (os.getpid(), client):
        _reads = ((os.getpid(), client), CurlRangeReads() if client == "curl" else RangeReads())
    return _reads[1]
