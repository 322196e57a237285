"""Placement groups that Ray leaves behind when a driver is killed: found and removed before a run.

Ray removes a job's placement group once its job and the actor that created it are both dead. After
a SIGKILLed `dfdc sweep`, Ray 2.60 sometimes keeps one anyway (seen here in one of four runs of the
kill test; the CI failure that led here matches it): a Train worker group's, whose job had ended
and whose TrainController was dead, while GCS's record of the group still said both were alive, and
Ray Train's PlacementGroupCleaner had not removed it either (a race of that kind:
ray-project/ray#62753). The group held a CPU of the head for the life of the cluster, and every
later run needing that CPU waited forever. So `dfdc train` and `dfdc sweep` remove such groups when
they start, and name each one in their log.

A group is left behind when an actor made it, it is not detached, its job has ended, and that actor
is not alive: nothing can use it again. Inside a running sweep the job lives on, so Ray keeps the
worker group of every trial ASHA stopped until the sweep ends, and Ray Train's cleaner removes it
only where it reaches Ray's state API (on a private local Ray, where `dfdc sweep` runs without an
address, its monitor failed and the demo sweep's next trial waited forever). So each trial first
also removes groups of live jobs whose maker is dead and in which nothing is placed (`live_jobs`).
(Ray removes a group a driver or task made when its job ends; one a task of a live detached actor
made may still be in use: neither is taken.) GCS's own
records are read, through Ray's private state accessor, since the public state API does not say
which actor made a group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

# Actor states from which an actor can still use a group (gcs.proto's ActorTableData.ActorState).
LIVE_ACTOR_STATES = frozenset({"DEPENDENCIES_UNREADY", "PENDING_CREATION", "ALIVE", "RESTARTING"})


@dataclass(frozen=True)
class Group:
    id: str
    job: str
    creator_actor: str | None  # None: the driver made it
    detached: bool
    removed: bool
    resources: dict[str, float]  # summed over its bundles

    def describe(self) -> str:
        held = ", ".join(f"{v:g} {k}" for k, v in sorted(self.resources.items()))
        return f"placement group {self.id} of job {self.job} ({held or 'no resources'})"


def left_behind(groups: Iterable[Group], dead_jobs: set[str], live_actors: set[str], idle: set[str] | None = None) -> list[Group]:
    """The groups nothing can use again: made by an actor that is not alive, not detached, not
    removed, their job ended. With `idle` (ids of groups in which nothing is placed), also such a
    group of a live job: Ray keeps a group until its job ends too, however long a sweep runs."""
    return [g for g in groups if g.creator_actor is not None and g.creator_actor not in live_actors
            and not g.detached and not g.removed and (g.job in dead_jobs or (idle is not None and g.id in idle))]


def _idle(groups: Iterable[Group]) -> set[str]:
    """The groups whose every resource is free (Ray names a group's share `<resource>_group_<id>`)."""
    import ray  # noqa: PLC0415

    free = ray.available_resources()
    return {g.id for g in groups if g.resources and all(free.get(f"{k}_group_{g.id}", 0.0) >= v - 1e-9
                                                        for k, v in g.resources.items())}


def _groups(accessor) -> list[Group]:
    from ray.core.generated import gcs_pb2  # noqa: PLC0415

    nil = b"\xff"
    found = []
    for raw in accessor.get_placement_group_table():
        d = gcs_pb2.PlacementGroupTableData.FromString(raw)
        resources: dict[str, float] = {}
        for bundle in d.bundles:
            for name, amount in bundle.unit_resources.items():
                resources[name] = resources.get(name, 0.0) + amount
        actor = d.creator_actor_id
        found.append(Group(id=d.placement_group_id.hex(), job=d.creator_job_id.hex(),
                           creator_actor=None if not actor or actor == nil * len(actor) else actor.hex(),
                           detached=d.is_detached, removed=d.state == gcs_pb2.PlacementGroupTableData.REMOVED,
                           resources=resources))
    return found


def find(live_jobs: bool = False) -> list[Group]:
    """The groups left behind on the cluster this process is connected to; with `live_jobs`, also
    idle ones of jobs still running whose maker is dead."""
    from ray._private.state import state  # noqa: PLC0415

    groups = _groups(state._connect_and_get_accessor())
    dead_jobs = {job["JobID"] for job in state.job_table() if job["IsDead"]}
    idle = _idle([g for g in groups if not g.removed]) if live_jobs else None
    creators = {g.creator_actor for g in groups if g.creator_actor and (g.job in dead_jobs or (idle and g.id in idle))}
    live = {a for a in creators if state.actor_table(a).get("State") in LIVE_ACTOR_STATES}
    return left_behind(groups, dead_jobs, live, idle)


def remove(groups: Iterable[Group], log: Callable[[str], None] = print) -> None:
    import ray  # noqa: PLC0415
    from ray.util.placement_group import PlacementGroup, remove_placement_group  # noqa: PLC0415

    for group in groups:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group.id))))
        log(f"removed {group.describe()}: the actor that made it is gone, and nothing is placed in it (ray-project/ray#62753)")


def reclaim(log: Callable[[str], None] = print, live_jobs: bool = False) -> list[Group]:
    """Remove the groups left behind (`find`); the removed ones, each named in `log`. A failure to
    look (GCS busy, Ray's private API changed) is logged, never fatal: the run may still fit."""
    try:
        found = find(live_jobs)
        remove(found, log)
    except Exception as e:  # noqa: BLE001
        log(f"could not check the cluster for placement groups left behind by killed drivers: {e!r}")
        return []
    return found
