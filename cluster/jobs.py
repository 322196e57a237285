"""Jobs through Ray's Jobs API, as `ray job submit` sends them: the runtime env carries where the
data is (endpoint, region) and never credentials; the job's driver and workers resolve their own."""

from __future__ import annotations

import time
from collections.abc import Callable

ENDED = ("SUCCEEDED", "FAILED", "STOPPED")


def client(dashboard_url: str):
    from ray.job_submission import JobSubmissionClient  # noqa: PLC0415

    return JobSubmissionClient(dashboard_url)


def submit_job(client, wait_s: float = 240.0, **job) -> str:
    """`client.submit_job(**job)`. A head that has just started answers "No available agent to submit
    job, please try again later" until its dashboard agent is up: that is retried for `wait_s` (90 s
    was once too short for the demo's head on this 2-core machine, in a fresh clone's `make test`)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def submit(dashboard_url: str, entrypoint: str, env: dict[str, str] | None = None):
    """(client, job id) of a new job running `entrypoint` on the cluster behind `dashboard_url`."""
    from dfdc.ray_tasks import runtime_env  # noqa: PLC0415

    c = client(dashboard_url)
    return c, submit_job(c, entrypoint=entrypoint, runtime_env=runtime_env(env))


def follow(client, job_id: str, show: Callable[[str], None] = lambda line: None, poll_s: float = 5.0,
           timeout_s: float | None = None) -> str:
    """Pass each new log line to `show` until the job ends (or `timeout_s` passes); its status."""
    start, printed = time.monotonic(), 0
    while True:
        status = client.get_job_status(job_id).value
        logs = client.get_job_logs(job_id)
        for line in logs[printed:].splitlines():
            show(line)
        printed = len(logs)
        if status in ENDED or (timeout_s is not None and time.monotonic() - start > timeout_s):
            return status
        time.sleep(poll_s)
