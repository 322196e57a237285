"""Sending work to Ray, the one way every stage does it (ingest, evaluation, scoring): join the
cluster, ask for resources, give workers the non-secret S3 settings, collect results as tasks
finish, and show one progress bar."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from dfdc import storage
from dfdc.progress import TaskProgress


def connect(address: str | None, log_to_driver: bool = False) -> None:
    """The cluster in `address` or RAY_ADDRESS; with neither, a private local Ray for this process
    (never a stale cluster some earlier `ray start` left in /tmp/ray)."""
    import ray  # noqa: PLC0415

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        from dfdc import reach  # noqa: PLC0415

        reach.gcs(address)  # one line in seconds, not Ray's minute of warnings and a traceback
        ray.init(address=address, log_to_driver=log_to_driver)
    else:  # this machine is the whole cluster: it also hosts sweep trials' processes (cluster/sweep.py)
        from cluster.local.ray_head import TRIAL_HOSTS  # noqa: PLC0415

        ray.init(address="local", include_dashboard=False, log_to_driver=log_to_driver, resources=TRIAL_HOSTS)


def runtime_env(extra: dict[str, str] | None = None) -> dict:
    """The runtime env of our tasks and workers: where the data is, never credentials."""
    return {"env_vars": storage.worker_env() | (extra or {})}


class RayTasks:
    """Run `fn` as Ray tasks and report progress.

        with RayTasks(score_shard, "evaluate", "shards", len(urls), address=..., cpus=1, faces=0) as work:
            for url, result, error in work.map({url: (model_uri, url) for url in urls}):
                work.advance(faces=len(result))

    `map` yields (key, result, None) as each task finishes, or (key, None, error) with the task's own
    exception (not Ray's wrapper) when it failed: one failed task never costs the others. Ray retries
    a task whose worker died (`retries`), never one that raised."""

    def __init__(self, fn: Callable, label: str, unit: str, total: int, *, address: str | None, cpus: float = 1.0,
                 gpus: float = 0.0, retries: int = 2, progress: bool = True, **counts: int):
        self.fn, self.address, self.cpus, self.gpus, self.retries = fn, address, cpus, gpus, retries
        self.bar = TaskProgress(label, total, unit, enabled=progress, **counts)

    def __enter__(self) -> RayTasks:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def map(self, calls: dict[Any, tuple]) -> Iterator[tuple[Any, Any, BaseException | None]]:
        import ray  # noqa: PLC0415

        connect(self.address)
        # "DEFAULT": not inside the caller's placement group (a sweep's trial holds one with a sliver
        # of a CPU, and Tune makes child tasks ask it first): the tasks ask the cluster for their own.
        task = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.retries)(self.fn).options(
            runtime_env=runtime_env(), scheduling_strategy="DEFAULT")
        pending = {task.remote(*args): key for key, args in calls.items()}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            key = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except Exception as e:  # noqa: BLE001  reported to the caller, who counts it
                yield key, None, getattr(e, "cause", None) or e
                continue
            yield key, result, None

    def advance(self, n: int = 1, **counts: int) -> None:
        self.bar.advance(n, **counts)

    def note(self, message: str) -> None:
        """A line above the bar (a failed task, an unreadable shard)."""
        self.bar.console.print(message, highlight=False, soft_wrap=True)
