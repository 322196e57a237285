"""An HTTP proxy in front of the S3 server that fails some requests the way S3 does under load:
503 SlowDown (also past a request rate, `capped`, as S3 answers past a prefix's ~5,500 GET/s), and
connections dropped before any answer. For testing retries, not a mock: every
request it lets through is served by the real server. It also counts the bytes it passes on
(bench/loader_order.py measures read amplification with it, failing nothing), and answers a ranged
GET with 206 where rclone answers 200, as S3 does (clients that insist on 206, obstore, can then
read through it: bench/s3_clients.py)."""

from __future__ import annotations

import http.client
import itertools
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class FlakyProxy:
    def __init__(self, upstream: str, fail_when):
        """`fail_when(method, path)` -> None (forward), "503" or "reset", asked once per request."""
        self.upstream = urlparse(upstream)
        self.fail_when = fail_when
        self.injected = {"503": 0, "reset": 0}
        self.forwarded = 0
        self.bytes_served = 0  # bodies of GET answers passed on: what readers fetched
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_):
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = proxy.fail_when(self.command, self.path)
                if fault == "reset":
                    proxy.injected["reset"] += 1
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault == "503":
                    proxy.injected["503"] += 1
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                proxy.forwarded += 1
                up = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                # The Host header is part of the request's signature: pass it on unchanged.
                up.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in self.headers.items():
                    up.putheader(k, v)
                up.endheaders(body or None)
                resp = up.getresponse()
                data = resp.read()
                status, reason = resp.status, resp.reason
                if status == 200 and self.command == "GET" and resp.getheader("Content-Range"):
                    status, reason = 206, "Partial Content"  # as S3 answers a ranged GET (rclone answers 200)
                self.send_response(status, reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                # A HEAD answer has no body but names the object's size.
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command == "GET":
                    proxy.bytes_served += len(data)
                if self.command != "HEAD":
                    self.wfile.write(data)
                up.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def every_third_read_fails(suffix: str):
    """Shard reads cycle: 503, dropped connection, served."""
    counter = itertools.count()

    def fail_when(method: str, path: str):
        if method == "GET" and path.split("?")[0].endswith(suffix):
            return (("503", "reset", None))[next(counter) % 3]
        return None

    return fail_when


def capped(rate: float, suffix: str = ".tar"):
    """GETs of `suffix` objects beyond `rate` a second (a token bucket holding one second's worth)
    are answered 503 SlowDown, as S3 answers requests past a prefix's rate."""
    lock = threading.Lock()
    state = {"tokens": rate, "at": time.monotonic()}

    def fail_when(method: str, path: str):
        if method != "GET" or not path.split("?")[0].endswith(suffix):
            return None
        with lock:
            now = time.monotonic()
            state["tokens"] = min(rate, state["tokens"] + (now - state["at"]) * rate)
            state["at"] = now
            if state["tokens"] >= 1:
                state["tokens"] -= 1
                return None
        return "503"

    return fail_when
