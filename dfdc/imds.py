"""The EC2 instance metadata service, the way AWS documents IMDSv2: `PUT /latest/api/token` with a
TTL header, then GETs that carry the token. Where it is (`AWS_EC2_METADATA_SERVICE_ENDPOINT`, the
setting botocore reads) and how long to wait for it follow botocore, so a machine that is not on EC2
answers "not here" within about a second. Used by the spot watcher and the cost meter."""

from __future__ import annotations

import os
import time

import urllib3

DEFAULT_ENDPOINT = "http://169.254.169.254"
TOKEN_TTL_S = 21600  # the longest AWS allows
SPOT_ACTION = "/latest/meta-data/spot/instance-action"
REBALANCE = "/latest/meta-data/events/recommendations/rebalance"
INSTANCE_TYPE = "/latest/meta-data/instance-type"
LIFE_CYCLE = "/latest/meta-data/instance-life-cycle"  # "spot" or "on-demand"
IDENTITY = "/latest/dynamic/instance-identity/document"  # JSON: region, instanceType, ...


class MetadataUnavailable(OSError):
    """No instance metadata service answered (not on EC2, IMDS off, or the hop limit too low)."""


def endpoint() -> str:
    return os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


class Metadata:
    """One client with its token, renewed before it runs out and again when the service says 401."""

    def __init__(self, base: str | None = None, timeout_s: float = 1.0):
        self.base = (base or endpoint()).rstrip("/")
        self.http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
                                        retries=urllib3.Retry(total=1, backoff_factor=0.1, allowed_methods=None))
        self._token: str | None = None
        self._expires = 0.0

    def _new_token(self) -> str:
        try:
            r = self.http.request("PUT", f"{self.base}/latest/api/token",
                                  headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)})
        except urllib3.exceptions.HTTPError as e:
            raise MetadataUnavailable(f"no instance metadata service at {self.base}: {e}") from e
        if r.status != 200:
            raise MetadataUnavailable(f"the instance metadata service at {self.base} refused a token: HTTP {r.status}")
        self._token, self._expires = r.data.decode(), time.monotonic() + TOKEN_TTL_S - 60
        return self._token

    def get(self, path: str) -> str | None:
        """The text at `path`, or None where the service says 404 (for spot/instance-action: no notice)."""
        for attempt in range(2):
            token = self._token if self._token and time.monotonic() < self._expires else self._new_token()
            try:
                r = self.http.request("GET", f"{self.base}{path}", headers={"X-aws-ec2-metadata-token": token})
            except urllib3.exceptions.HTTPError as e:
                raise MetadataUnavailable(f"instance metadata {self.base}{path}: {e}") from e
            if r.status == 401 and attempt == 0:  # the token ran out or the service restarted
                self._token = None
                continue
            if r.status == 404:
                return None
            if r.status != 200:
                raise MetadataUnavailable(f"instance metadata {self.base}{path}: HTTP {r.status}")
            return r.data.decode()
        raise MetadataUnavailable(f"instance metadata {self.base}{path}: a new token was refused too (HTTP 401)")
