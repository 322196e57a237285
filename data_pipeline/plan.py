"""Which split each video lands in, and how videos are cut into units of work.

Both are pure functions of the listing and the config, so a rerun makes the same plan and can skip
the units that are done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass

from data_pipeline.records import VideoRecord


def group_split(group: str, seed: int, val_fraction: float) -> str:
    """train or val for a group, from a hash of (seed, group): stable when the corpus grows, and the
    same for every video of the group."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


def assign_splits(records: list[VideoRecord], seed: int, val_fraction: float) -> list[VideoRecord]:
    """Official splits are kept; every other video takes its group's split."""
    return [r if r.split else dataclasses.replace(r, split=group_split(r.group, seed, val_fraction)) for r in records]


@dataclass
class Unit:
    id: int
    split: str
    videos: list[str]  # originals before their fakes, so fakes can reuse the original's face boxes

    @property
    def name(self) -> str:
        return f"{self.split}-{self.id:05d}"


def make_units(records: list[VideoRecord], videos_per_task: int) -> list[Unit]:
    """Whole groups of one split per unit, up to `videos_per_task` videos (a bigger group stays whole)."""
    order = sorted(records, key=lambda r: (r.split, r.group, r.label, r.video))
    units: list[Unit] = []
    for split, in_split in itertools.groupby(order, key=lambda r: r.split):
        current: list[str] = []
        for _, group in itertools.groupby(in_split, key=lambda r: r.group):
            names = [r.video for r in group]
            if current and len(current) + len(names) > videos_per_task:
                units.append(Unit(len(units), split, current))
                current = []
            current.extend(names)
        if current:
            units.append(Unit(len(units), split, current))
    return units


def plan_digest(source: str, dataset: str, records: list[VideoRecord], units: list[Unit], settings: str) -> str:
    """Identifies a plan: the same source listing, labels, splits, units and settings."""
    data = {
        "source": source.rstrip("/"),
        "dataset": dataset,
        "settings": settings,
        "records": sorted((r.video, r.label, r.split, r.group) for r in records),
        "units": [(u.id, u.split, u.videos) for u in units],
    }
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]
