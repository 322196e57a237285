"""A stand-in for the EC2 instance metadata service on 127.0.0.1, speaking IMDSv2 as AWS documents it:
a token from `PUT /latest/api/token` (TTL header required), GETs that must carry it (401 otherwise),
404 for a spot notice until the test gives one."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StandIn:
    def __init__(self, instance_type: str = "g5.12xlarge", life_cycle: str = "spot", region: str = "us-east-1"):
        identity = {"region": region, "availabilityZone": f"{region}a", "instanceType": instance_type,
                    "instanceId": "i-0123456789abcdef0", "accountId": "123456789012"}
        self.values = {"/latest/meta-data/instance-type": instance_type, "/latest/meta-data/instance-life-cycle": life_cycle,
                       "/latest/dynamic/instance-identity/document": json.dumps(identity)}
        self.tokens: set[str] = set()
        self.polls: list[float] = []  # when spot/instance-action was asked
        self.notice_at: float | None = None  # when the test gave the notice
        self.lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self):
                if self.path != "/latest/api/token":
                    return self._send(404)
                if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    return self._send(400, "missing X-aws-ec2-metadata-token-ttl-seconds")
                token = f"token-{len(standin.tokens)}-{time.monotonic_ns()}"
                with standin.lock:
                    standin.tokens.add(token)
                self._send(200, token)

            def do_GET(self):
                if self.headers.get("X-aws-ec2-metadata-token") not in standin.tokens:
                    return self._send(401)
                with standin.lock:
                    if self.path == "/latest/meta-data/spot/instance-action":
                        standin.polls.append(time.time())
                    value = standin.values.get(self.path)
                self._send(200, value) if value is not None else self._send(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def give_notice(self, seconds: float = 120, action: str = "terminate") -> None:
        """What AWS does two minutes before it reclaims the instance."""
        when = datetime.fromtimestamp(time.time() + seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self.lock:
            self.notice_at = time.time()
            self.values["/latest/meta-data/spot/instance-action"] = json.dumps({"action": action, "time": when})

    def forget_tokens(self) -> None:
        """As after a restart of the service: every token given so far is refused."""
        with self.lock:
            self.tokens.clear()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
