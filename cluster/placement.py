"""Whether a request for Ray resources can ever be placed on the cluster, decided before anything
waits for it.

Ray Train waits for its worker group and Tune for a trial's resources without end: a request the
cluster can never hold (two 1-CPU workers and a trial's process on a 2-CPU machine) shows up as
"worker group startup timed out", retried for ever. `check` refuses such a request at once, in one
line naming what was asked and what the cluster can have.

What the cluster can have, by where Ray says it:
- Ray's autoscaler v2 (KubeRay, and VMs where it is switched on) reports its node groups: each
  group's resources times its most nodes;
- `ray up`'s autoscaler (v1) does not report them, but keeps its config on the head, where job
  drivers run: `~/ray_bootstrap_config.yaml`, its node types filled in with their CPUs and GPUs;
- a cluster with no autoscaler (`ray start` by hand, the demo, the tests: Ray's "readonly" provider,
  which gives every node a type of its own) has the nodes alive now;
- anything else (an autoscaler whose limits Ray does not say): unknown, and nothing is refused.

A request is a list of bundles that must be placed together. It is refused when one bundle fits no
node type, or when the bundles together need more of a resource than the cluster can have. That
is not a full bin-packing (bundles that fit each node and the total may still not pack onto whole
nodes), so a request that passes may still wait; one that is refused can never run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dfdc.config import ConfigError

LAUNCHER_CONFIG = Path("~/ray_bootstrap_config.yaml")
# Ray adds these to every node; they say nothing about what a request needs.
_IMPLICIT = ("node:", "accelerator_type:")


class Unplaceable(ConfigError):
    """The cluster can never hold the request."""


@dataclass(frozen=True)
class Capacity:
    shapes: list[dict[str, float]]  # what one node of each kind has
    total: dict[str, float]  # the most of each resource the cluster can have at once
    source: str  # where these figures come from, said in a refusal


def _clean(resources: dict) -> dict[str, float]:
    return {k: float(v) for k, v in resources.items() if v and not k.startswith(_IMPLICIT)}


def from_node_types(types: list[tuple[dict, int]], source: str) -> Capacity:
    """(resources of one node, most nodes of that type) pairs."""
    shapes = [_clean(res) for res, count in types if count > 0]
    total: dict[str, float] = {}
    for res, count in types:
        for key, value in _clean(res).items():
            total[key] = total.get(key, 0.0) + value * count
    return Capacity(shapes, total, source)


def from_launcher_config(config: dict, source: str) -> Capacity:
    """The autoscaler config `ray up` writes to the head: every node type at its max_workers (the
    head type once more, for the head itself), capped by the cluster's max_workers."""
    cap = config.get("max_workers", 2)
    head = config.get("head_node_type")
    types = []
    for name, spec in config.get("available_node_types", {}).items():
        count = min(spec.get("max_workers", 0 if name == head else cap), cap) + (1 if name == head else 0)
        types.append((spec.get("resources", {}), count))
    return from_node_types(types, source)


def _alive_nodes() -> Capacity:
    import ray  # noqa: PLC0415

    nodes = [n for n in ray.nodes() if n["Alive"]]
    return from_node_types([(n["Resources"], 1) for n in nodes],
                           f"the {len(nodes)} node(s) alive now; this cluster has no autoscaler")


def _fixed() -> bool:
    """True when Ray's autoscaler is the readonly one, which never adds a node: every node's type
    is the node itself (ray/autoscaler/_private/monitor.py, BASE_READONLY_CONFIG)."""
    import json  # noqa: PLC0415

    try:  # Ray's private modules: if they move, the cluster counts as one whose limits are unknown
        from ray.autoscaler._private.util import format_readonly_node_type  # noqa: PLC0415
        from ray.experimental.internal_kv import _internal_kv_get  # noqa: PLC0415
    except ImportError:
        return False
    raw = _internal_kv_get(b"__autoscaling_status")
    if not raw:
        return False
    mapping = (json.loads(raw).get("autoscaler_report") or {}).get("node_type_mapping") or {}
    return bool(mapping) and all(kind == format_readonly_node_type(node) for node, kind in mapping.items())


def capacity() -> Capacity | None:
    """What the connected cluster can ever have, or None where Ray does not say."""
    from ray._private.state import state  # noqa: PLC0415

    config = state.get_cluster_config()
    if config is not None and config.node_group_configs:
        return from_node_types([(dict(g.resources), g.max_count if g.max_count >= 0 else 10**6)
                                for g in config.node_group_configs], "the node groups Ray's autoscaler reports")
    launcher = LAUNCHER_CONFIG.expanduser()
    if launcher.is_file():
        import yaml  # noqa: PLC0415

        return from_launcher_config(yaml.safe_load(launcher.read_text()), f"{launcher}, the autoscaler's node types")
    if os.environ.get("RAY_ADDRESS", "").startswith("ray://"):
        return None  # a Ray Client: the state above is the client's, not the cluster's
    return _alive_nodes() if _fixed() else None


def _text(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items())) + "}"


def problem(parts: list[tuple[str, dict[str, float], int]], cap: Capacity) -> str | None:
    """Why `parts` ((what, resources of one bundle, how many)) can never be placed together on a
    cluster of `cap`, or None."""
    asked = "; ".join(f"{what}: {n} x {_text(res)}" if n != 1 else f"{what}: {_text(res)}" for what, res, n in parts)
    for what, res, _ in parts:
        res = _clean(res)
        if not any(all(shape.get(k, 0.0) >= v for k, v in res.items()) for shape in cap.shapes):
            shapes = ", ".join(_text({k: shape.get(k, 0.0) for k in res}) for shape in cap.shapes) or "none"
            return f"{asked}; no node can hold one {what} {_text(res)}: the cluster's nodes are {shapes} ({cap.source})"
    need: dict[str, float] = {}
    for _, res, n in parts:
        for k, v in _clean(res).items():
            need[k] = need.get(k, 0.0) + v * n
    short = {k: v for k, v in need.items() if v > cap.total.get(k, 0.0) + 1e-9}
    if short:
        has = {k: cap.total.get(k, 0.0) for k in short}
        return f"{asked}; together they need {_text(short)}, and the cluster has at most {_text(has)} ({cap.source})"
    return None


def worker_group(cfg) -> tuple[str, dict[str, float], int]:
    """The training's worker group at its smallest (an elastic run starts with its min)."""
    r = cfg.ray
    res = {"CPU": r.cpus_per_worker} | ({"GPU": r.gpus_per_worker} if r.gpus_per_worker > 0 else {}) | r.worker_resources
    return ("workers", res, r.workers()[0])


def check(what: str, parts: list[tuple[str, dict[str, float], int]]) -> None:
    """Raise Unplaceable (one line) when the connected cluster can never hold `parts`."""
    cap = capacity()
    if cap is not None and (why := problem(parts, cap)):
        raise Unplaceable(f"{what} can never be placed: {why}")
