"""What a run costs, as it goes: node-hours, GPU-hours and estimated dollars, from a dated price
table (cluster/aws/prices.yaml, or `cost.prices`) and the instance type and market (spot or
on-demand) of every node the run is on, which each node reads from its instance metadata (or
`cost.instance_type` / `cost.market` where there is none). The table is for one region; a node
in another region (its instance identity document says which) has no price in it.

A node without a price (type unknown, not in the table, another region) is charged $0, and said
so, unless the run has a budget (`budget.dollars`): then it is charged the table's dearest
on-demand rate, so that a budget never fails open.

The estimate charges whole nodes: a node that also runs other work is charged to this run in
full. It counts from when the training workers have built their engine; the totals are saved with
every checkpoint, so a resumed run goes on from the last checkpoint's figure (the time between that
checkpoint and a failure, or a spot notice's deadline, is not counted: the estimate is low)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dfdc import imds, storage
from dfdc.config import load_yaml

DEFAULT_PRICES = Path(__file__).resolve().parent.parent / "cluster" / "aws" / "prices.yaml"
MARKETS = ("spot", "on_demand")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Node:
    node_id: str
    instance_type: str
    market: str  # spot | on_demand
    source: str  # where the type came from: "instance metadata", "config" or "unknown"
    region: str | None = None  # from the instance identity document; None where not known


@dataclass
class Prices:
    date: str
    source: str
    per_hour: dict[str, dict[str, float]]  # instance type -> {"spot": $, "on_demand": $}
    size: dict[str, dict[str, int]] = field(default_factory=dict)  # instance type -> {"gpus": n, "vcpus": n}
    region: str | None = None  # the region the prices are of

    def of(self, node: Node) -> float | None:
        if node.region and self.region and node.region != self.region:
            return None  # another region's prices differ: not priced at this table's silently
        return self.per_hour.get(node.instance_type, {}).get(node.market)

    def dearest(self) -> float | None:
        """The highest on-demand rate in the table: what an unpriced node costs a run with a budget."""
        return max((p["on_demand"] for p in self.per_hour.values()), default=None)


def load_prices(uri: str | None) -> Prices:
    """The price table at `uri` (a path or s3://), or the one shipped; errors name the file and the entry."""
    where = uri or str(DEFAULT_PRICES)
    try:
        data = load_yaml(storage.read_bytes(where) if uri else DEFAULT_PRICES.read_bytes())
    except yaml.YAMLError as e:
        raise ValueError(f"price table {where} is not valid YAML: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("instances"), dict) or not data.get("date"):
        raise ValueError(f"price table {where} needs a date and an instances: mapping (see {DEFAULT_PRICES})")
    per_hour, size = {}, {}
    for name, entry in data["instances"].items():
        try:
            per_hour[name] = {m: float(entry[m]) for m in MARKETS}
            size[name] = {k: int(entry.get(k, 0)) for k in ("gpus", "vcpus")}
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ValueError(f"price table {where}: {name} needs numbers for spot and on_demand, got {entry!r}") from None
    return Prices(str(data["date"]), str(data.get("source", "")), per_hour, size, data.get("region"))


def identify(node_id: str, instance_type: str | None, market: str) -> Node:
    """This node: the type and market the config names, else what the instance metadata says."""
    if instance_type:
        return Node(node_id, instance_type, market, "config")
    try:
        md = imds.Metadata()
        found = md.get(imds.INSTANCE_TYPE)
        life = md.get(imds.LIFE_CYCLE)
        identity = md.get(imds.IDENTITY)
    except imds.MetadataUnavailable as e:
        log.warning("node %s: no instance type (%s), so no price: charged $0, or the table's dearest rate when the run has "
                    "a budget. Set cost.instance_type where there is no instance metadata.", node_id, e)
        return Node(node_id, "unknown", market, "unknown")
    try:
        region = json.loads(identity or "{}").get("region")
    except ValueError:
        region = None
    return Node(node_id, found or "unknown", "spot" if life == "spot" else "on_demand", "instance metadata", region)


class Meter:
    """Running totals for a run on `nodes` holding `gpus` GPUs, from `saved` (a checkpoint's) on."""

    def __init__(self, nodes: list[Node], gpus: float, prices: Prices, saved: dict | None = None, clock=time.monotonic,
                 budget: float | None = None):
        self.nodes = {n.node_id: n for n in nodes}  # one entry per machine, however many ranks it hosts
        self.gpus, self.prices, self.clock = gpus, prices, clock
        self.unpriced = sorted({f"{n.instance_type} ({n.market}{', ' + n.region if n.region else ''})"
                                for n in self.nodes.values() if prices.of(n) is None})
        # With a budget, a node without a price is charged the dearest rate: the budget fails closed.
        self.fallback = 0.0
        if budget is not None and self.unpriced:
            if prices.dearest() is None:
                raise ValueError(f"no price for {', '.join(self.unpriced)} and an empty price table: budget.dollars cannot hold")
            self.fallback = prices.dearest()
        self.dollars_per_hour = sum(p if (p := prices.of(n)) is not None else self.fallback for n in self.nodes.values())
        self.saved = {k: float((saved or {}).get(k, 0.0)) for k in ("seconds", "dollars", "gpu_hours", "node_hours")}
        # every "type market" the run has been charged for, this attempt's and earlier ones'
        self.kinds = sorted(set((saved or {}).get("node_types", [])) | {f"{n.instance_type} {n.market}" for n in self.nodes.values()})
        self.start = clock()
        if self.unpriced:
            log.warning("no price for %s in the price table of %s (%s): %s", ", ".join(self.unpriced), prices.date,
                        prices.region, self._charged())

    def _charged(self) -> str:
        if self.fallback:
            return f"charged ${self.fallback:g}/h each, the table's dearest on-demand rate (the run has a budget)"
        return "charged $0"

    def totals(self) -> dict:
        """What a checkpoint saves: the four running totals and the node types charged so far."""
        hours = (self.clock() - self.start) / 3600
        return {
            "node_types": self.kinds,
            "seconds": self.saved["seconds"] + hours * 3600,
            "dollars": self.saved["dollars"] + hours * self.dollars_per_hour,
            "gpu_hours": self.saved["gpu_hours"] + hours * self.gpus,
            "node_hours": self.saved["node_hours"] + hours * len(self.nodes),
        }

    def metrics(self) -> dict[str, float]:
        t = self.totals()
        return {"cost_dollars": t["dollars"], "cost_gpu_hours": t["gpu_hours"], "cost_node_hours": t["node_hours"]}

    def over(self, budget: float | None) -> bool:
        return budget is not None and self.totals()["dollars"] > budget

    def summary(self) -> str:
        """The run's cost in one line: what the tag dfdc.cost holds."""
        t = self.totals()
        line = (f"${t['dollars']:.4f} estimated: {t['gpu_hours']:.3f} GPU-hours, {t['node_hours']:.3f} node-hours on "
                f"{', '.join(self.kinds)} (prices of {self.prices.date}: {self.prices.source})")
        return line + (f"; no price for {', '.join(self.unpriced)}, {self._charged()}" if self.unpriced else "")
