"""One driver per run name: a lock object `<run>/driver.lock` written by conditional PUT.

Two drivers of the same run (a resubmitted job, a second shell) would both resume from the same
checkpoint, write over each other's checkpoints and ledger, and log twice to one MLflow run. The
driver takes the lock with `If-None-Match: *` (S3 answers 412 when the object exists, and of two
racing PUTs only one gets 200) and renews it every `lease/3` seconds with `If-Match` on its own
ETag. A lock whose lease ran out (its driver died without releasing it), or whose driver was a
process of this host that is gone, is taken over with `If-Match` on that lock's ETag, so two
drivers taking over the same dead lock cannot both win.

What S3 costs: 1-3 requests at start, one PUT a renewal (every 40 s with the default 120 s lease:
~90 PUTs an hour, $0.0005), one DELETE at the end.

Servers that ignore conditional headers (rclone's S3 server, which the tests and the demo use,
answers 200 to a PUT with `If-None-Match: *` over an existing object) cannot hold the lock: the
driver finds out at start with a second conditional PUT that must fail, warns once, and runs
unlocked. moto and S3 honour the headers (tests/test_run_lock.py runs against moto).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

from dfdc import storage
from dfdc.processes import pid_alive

log = logging.getLogger(__name__)

LOCK_FILE = "driver.lock"


class RunLocked(RuntimeError):
    """Another driver holds the run (its lease ends at `expires`, when known)."""

    def __init__(self, message: str, expires: float | None = None):
        super().__init__(message)
        self.expires = expires


def _code(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if status is None and response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
        return 412
    return status


def _s3_error(exc: BaseException) -> BaseException:
    """The botocore error behind an s3fs error (s3fs re-raises some as OSError with it as cause)."""
    while exc is not None and getattr(exc, "response", None) is None and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


class RunLock:
    """The run's lock, held from `acquire()` to `release()`; a thread renews it meanwhile."""

    def __init__(self, run_uri: str, lease_s: float = 120.0, fs=None):
        self.uri = storage.join(run_uri, LOCK_FILE)
        self.fs, path = storage.filesystem(self.uri) if fs is None else (fs, self.uri.removeprefix("s3://"))
        self.bucket, _, self.key = path.partition("/")
        self.lease = lease_s
        self.owner = {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
        self.etag: str | None = None
        self.held = False  # False also where the server cannot hold a lock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _put(self, **condition) -> str:
        body = json.dumps(self.owner | {"expires": time.time() + self.lease, "lease_s": self.lease}).encode()
        out = self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=body, **condition)
        return out["ETag"]

    def _read(self) -> tuple[dict, str] | None:
        try:
            out = self.fs.call_s3("get_object", Bucket=self.bucket, Key=self.key)
        except FileNotFoundError:
            return None
        return json.loads(_body(self.fs, out)), out["ETag"]

    def acquire(self, wait_s: float = 0.0) -> RunLock:
        """Take the lock, or raise RunLocked naming who holds it and until when. `wait_s`: a lock
        whose lease ends within this many seconds is waited for and read again once it has ended:
        a live holder has renewed it by then (still RunLocked), a dead one has not (taken over)."""
        if not self.uri.startswith("s3://"):
            return self  # a local run directory: one machine, nothing to race over S3
        try:
            return self._acquire(wait_s)
        except RunLocked:  # another driver's lock: its own message (raised while handling the refused PUT)
            raise
        except Exception as e:  # noqa: BLE001  no credentials, no server: one line naming the lock's URI and the fix
            err = storage.explain(e, self.uri)
            if err is None:
                raise
            raise err from e

    def _acquire(self, wait_s: float) -> RunLock:
        try:
            self.etag = self._put(IfNoneMatch="*")
        except Exception as e:  # noqa: BLE001
            if _code(_s3_error(e)) != 412:
                raise
            try:
                self.etag = self._take_over()
            except RunLocked as locked:
                if locked.expires is None or not 0 < locked.expires - time.time() <= wait_s:
                    raise
                log.warning("%s: %s; waiting for it to end", self.uri, locked)
                time.sleep(max(0.0, locked.expires - time.time()) + 1.0)
                self.etag = self._take_over()
        # A server that ignores the condition accepts a second create of the same object.
        try:
            self._put(IfNoneMatch="*")
        except Exception as e:  # noqa: BLE001
            if _code(_s3_error(e)) != 412:
                raise
            self.held = True
        else:
            log.warning("%s: the storage ignores conditional writes (If-None-Match), so it cannot hold the run lock; "
                        "running without it: make sure no other driver runs this run", self.uri)
        if self.held:
            self._thread = threading.Thread(target=self._renew, name="run-lock", daemon=True)
            self._thread.start()
        return self

    def _take_over(self) -> str:
        found = self._read()
        if found is None:  # released meanwhile
            return self._put(IfNoneMatch="*")
        holder, etag = found
        dead_here = holder.get("host") == self.owner["host"] and not pid_alive(int(holder.get("pid", 0)))
        if holder.get("expires", 0) > time.time() and not dead_here:
            raise RunLocked(f"run lock {self.uri} is held by the driver on {holder.get('host')} (pid {holder.get('pid')}) until "
                            f"{time.strftime('%H:%M:%S', time.localtime(holder['expires']))} and renewed while it runs: another "
                            f"driver is running this run. Wait for it to end, or stop it; a lock whose driver died frees itself "
                            f"within {holder.get('lease_s', self.lease):.0f} s", expires=holder["expires"])
        try:
            return self._put(IfMatch=etag)
        except Exception as e:  # noqa: BLE001
            if _code(_s3_error(e)) == 412:
                raise RunLocked(f"run lock {self.uri}: another driver took over the expired lock first") from e
            raise

    def _renew(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                self.etag = self._put(IfMatch=self.etag)
            except Exception as e:  # noqa: BLE001  a failed renewal is logged; the next one may succeed
                if _code(_s3_error(e)) == 412:
                    log.error("%s: the run lock was taken by another driver (this driver's lease ran out): two drivers "
                              "may now run this run", self.uri)
                    return
                log.warning("%s: renewing the run lock failed (%s); trying again in %.0f s", self.uri, e, self.lease / 3)

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self.etag or self.held:  # also the unheld lock written where conditions are ignored
            found = self._read()
            if found and found[0].get("id") == self.owner["id"]:
                self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key)
            self.held, self.etag = False, None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _body(fs, out) -> bytes:
    async def read():
        try:
            return await out["Body"].read()
        finally:
            out["Body"].close()

    from fsspec.asyn import sync  # noqa: PLC0415

    return sync(fs.loop, read)
