"""Joining Ray the same way from every driver (ingest, training, evaluation, scoring)."""

from __future__ import annotations

import os


def connect(address: str | None, log_to_driver: bool = False) -> None:
    """The cluster in `address` or RAY_ADDRESS; with neither, a private local Ray for this process
    (never a stale cluster some earlier `ray start` left in /tmp/ray)."""
    import ray  # noqa: PLC0415

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
    else:
        ray.init(address="local", include_dashboard=False, log_to_driver=log_to_driver)


def as_completed(pending: dict):
    """For {object ref: what it is for}, yield (what, result, None) as each task finishes, or
    (what, None, error) with the task's own exception (not Ray's wrapper) when it failed."""
    import ray  # noqa: PLC0415

    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        key = pending.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except Exception as e:  # noqa: BLE001  one failed task never costs the others
            yield key, None, getattr(e, "cause", None) or e
            continue
        yield key, result, None
