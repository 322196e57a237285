"""The ledger (`data.ledger: true`): which samples every rank trained on, batch by batch, so that
anyone can check that an epoch saw every train sample once, across failures, restarts and changes
of world size. A contract like the manifest; docs/training.md describes it.

Under `<run dir>/ledger/`:
- `attempt-<A>.json`, one per start of the run (A = 0, 1, ...): world size, batch size, grad_accum,
  the dataset, and where it resumed.
- `epoch-<E>/attempt-<A>-rank-<R>.jsonl`, one line per batch:
  `{"epoch": E, "attempt": A, "rank": R, "position": P, "keys": [...]}` (plus `"skipped": [...]`, the
  keys of samples whose own bytes could not be read), P being where the batch starts in the epoch's
  order. An attempt that resumes an epoch first writes `{"epoch": E, "attempt": A, "resumed_from": P}`.

S3 has no append: a rank keeps its lines of the epoch and rewrites its file before every checkpoint
and at the end of the epoch, so every batch before a checkpoint's position is in storage before
the checkpoint is. Lines past the position the next attempt resumed from are the work that attempt
redid; the reader drops them.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field

from dfdc import storage

DIR = "ledger"


def start_attempt(run_uri: str, info: dict) -> int:
    """Number this start of the run (on rank 0, before any batch) and record it."""
    names = storage.list_files(storage.join(run_uri, DIR))
    done = [int(m.group(1)) for name in names if (m := re.fullmatch(r"attempt-(\d+)\.json", name))]
    attempt = max(done, default=-1) + 1
    storage.write_bytes(storage.join(run_uri, DIR, f"attempt-{attempt}.json"),
                        json.dumps({"attempt": attempt, **info}, indent=1).encode())
    return attempt


class Ledger:
    """One rank's lines for the current epoch."""

    def __init__(self, run_uri: str, attempt: int, rank: int):
        self.run_uri, self.attempt, self.rank = run_uri, attempt, rank
        self.epoch, self.lines = -1, []

    def begin_epoch(self, epoch: int, resumed_from: int | None) -> None:
        self.epoch, self.lines = epoch, []
        if resumed_from is not None:
            self.lines.append(json.dumps({"epoch": epoch, "attempt": self.attempt, "resumed_from": resumed_from}))

    def add(self, position: int, keys: list[str], skipped: list[str]) -> None:
        line = {"epoch": self.epoch, "attempt": self.attempt, "rank": self.rank, "position": position, "keys": keys}
        if skipped:
            line["skipped"] = skipped
        self.lines.append(json.dumps(line))

    def flush(self) -> None:
        if self.lines:
            uri = storage.join(self.run_uri, DIR, f"epoch-{self.epoch}", f"attempt-{self.attempt}-rank-{self.rank}.jsonl")
            storage.write_bytes(uri, ("\n".join(self.lines) + "\n").encode())


@dataclass
class EpochCheck:
    epoch: int
    samples: int  # train samples in the epoch: the manifest's, or its slice's (data.samples_per_epoch)
    once: int = 0
    never: int = 0
    more_than_once: int = 0
    skipped: int = 0  # read but unreadable (counted as seen: their position was consumed)
    unknown: int = 0  # keys not in the manifest's train split
    end: int = 0  # the position the epoch's batches reached
    step: int = 0  # samples per optimizer step of the attempt that ended the epoch
    gaps: list[tuple[int, int]] = field(default_factory=list)  # position ranges no kept batch covers
    attempts: list[int] = field(default_factory=list)
    misplaced: int = 0  # batches whose keys are not the epoch's order at their position (recomputed)
    missing: bool = False  # the run's last checkpoint is past this epoch, and the ledger has none of it
    allow_skipped: bool = False  # unreadable samples pass (`dfdc ledger check --allow-skipped`)

    @property
    def ok(self) -> bool:
        """Every sample once, in the epoch's order, apart from the remainder of less than one
        optimizer step at the end; no sample skipped as unreadable unless that is allowed."""
        return (not self.missing and not self.more_than_once and not self.unknown and not self.gaps and not self.misplaced
                and (self.allow_skipped or not self.skipped)
                and self.samples - self.end < self.step and self.never == self.samples - self.end)


def read_attempts(run_uri: str) -> dict[int, dict]:
    out = {}
    for name in storage.list_files(storage.join(run_uri, DIR)):
        if m := re.fullmatch(r"attempt-(\d+)\.json", name):
            out[int(m.group(1))] = json.loads(storage.read_bytes(storage.join(run_uri, DIR, name)))
    return out


def kept_batches(run_uri: str, epoch: int) -> tuple[list[dict], list[int]]:
    """The batches of `epoch` that count, and the attempts that wrote for it. An attempt's batch
    counts when its position is below where every later attempt (that wrote for this epoch) took
    the epoch up: its `resumed_from`, or 0 when it began the epoch from the start."""
    prefix = storage.join(run_uri, DIR, f"epoch-{epoch}")
    by_attempt: dict[int, list[dict]] = {}
    resumed: dict[int, int] = {}
    for name in storage.list_files(prefix):
        if not (m := re.fullmatch(r"attempt-(\d+)-rank-(\d+)\.jsonl", name)):
            continue
        attempt = int(m.group(1))
        by_attempt.setdefault(attempt, [])
        for text in storage.read_bytes(storage.join(prefix, name)).decode().splitlines():
            line = json.loads(text)
            if "resumed_from" in line:
                resumed[attempt] = min(resumed.get(attempt, line["resumed_from"]), line["resumed_from"])
            else:
                by_attempt[attempt].append(line)
    attempts = sorted(by_attempt)
    kept = []
    for i, attempt in enumerate(attempts):
        later = [resumed.get(a, 0) for a in attempts[i + 1:]]
        limit = min(later) if later else None
        kept += [b for b in by_attempt[attempt] if limit is None or b["position"] < limit]
    return kept, attempts


def train_keys(dataset: str, fakes: bool = True) -> list[str]:
    """The keys of the dataset's train samples, from its shards' indexes; real ones only when the
    run left the fakes out (data.fakes=false)."""
    from data_pipeline import manifest as mf  # noqa: PLC0415
    from data_pipeline import shard_index  # noqa: PLC0415

    data = mf.load(dataset)
    counts = [s["samples"] for s in data["shards"] if s["split"] == "train"]
    keys = []
    for url, n in zip(mf.shard_urls(dataset, data, "train"), counts):
        index = shard_index.read(url, n)
        if not fakes and index and len(index[0]) < 5:
            raise ValueError(f"{shard_index.index_uri(url)} holds no labels: the run left the fakes out, so its samples "
                             f"cannot be told apart; delete the dataset's *{shard_index.SUFFIX} files to rebuild them")
        keys += [s[0] for s in index if fakes or s[3] != 1]  # as train/data/order.py: an unknown label stays in
    return keys


def order_keys(info: dict):
    """epoch -> the keys of that epoch's order, recomputed from the run's settings as an attempt
    recorded them (`info`) and the dataset's shard indexes: what the ledger is compared with."""
    from data_pipeline import manifest as mf  # noqa: PLC0415
    from data_pipeline import shard_index  # noqa: PLC0415
    from train.data.order import make_order  # noqa: PLC0415
    from train.data.index import train_set_of  # noqa: PLC0415

    data = mf.load(info["dataset"])
    train = train_set_of(info["dataset"], data, info.get("pairing", "none"), info.get("fakes", True))
    keys = [s[0] for url, n in zip(train.urls, train.counts) for s in shard_index.read(url, n)]

    def of(epoch: int) -> list[str]:
        order = make_order(info.get("order", "permutation"), train.counts, info["seed"], epoch, info["batch_size"],
                           info.get("block_samples", 32), info.get("window_blocks", 32), info.get("streams", 64),
                           train.units, train.paired, info.get("samples_per_epoch"))
        return [keys[i] for i in order.all()]

    return of


def check(run_uri: str, train_keys: list[str] | None, order_of=None, allow_skipped: bool = False,
          through: tuple[int, int] | None = None) -> list[EpochCheck]:
    """Per epoch in the ledger: how many train samples were seen once, never, more than once, and
    (with `order_of`, epoch -> keys in order: `order_keys`) how many batches hold other samples than
    the epoch's order has at their position. `train_keys` None: an epoch is a slice of a pass
    (data.samples_per_epoch), its samples those of its order (`order_of`, then required).
    `through`: (epoch, position) of the run's last checkpoint; epochs up to it that the ledger lacks
    are reported as missing."""
    attempts = read_attempts(run_uri)
    epochs = {int(m.group(1)) for name in storage.list_files(storage.join(run_uri, DIR))
              if (m := re.fullmatch(r"epoch-(\d+)/.*", name))}
    if train_keys is None and order_of is None:
        raise ValueError("an epoch that is a slice of a pass has its samples from its order: give order_of")

    def population(epoch: int) -> set[str]:
        return set(order_of(epoch)) if train_keys is None else set(train_keys)

    out = []
    if through is not None:
        for epoch in sorted(set(range(through[0] + (1 if through[1] else 0))) - epochs):
            n = len(population(epoch))
            out.append(EpochCheck(epoch, n, never=n, missing=True))
    for epoch in sorted(epochs):
        batches, wrote = kept_batches(run_uri, epoch)
        known = population(epoch)
        result = EpochCheck(epoch, len(known), attempts=wrote, allow_skipped=allow_skipped)
        if order_of is not None:
            expected = order_of(epoch)
            for b in batches:
                skipped = set(b.get("skipped", []))
                want = expected[b["position"]:b["position"] + len(b["keys"]) + len(skipped)]
                result.misplaced += [k for k in want if k not in skipped] != b["keys"] or not skipped <= set(want)
        seen = Counter(k for b in batches for k in b["keys"] + b.get("skipped", []))
        result.skipped = sum(len(b.get("skipped", [])) for b in batches)
        result.unknown = sum(n for k, n in seen.items() if k not in known)
        result.once = sum(1 for k in known if seen[k] == 1)
        result.never = sum(1 for k in known if seen[k] == 0)
        result.more_than_once = sum(1 for k in known if seen[k] > 1)
        covered = sorted((b["position"], b["position"] + len(b["keys"]) + len(b.get("skipped", []))) for b in batches)
        at = 0
        for start, end in covered:
            if start > at:
                result.gaps.append((at, start))
            at = max(at, end)
        result.end = at
        last = attempts.get(max(wrote), {}) if wrote else {}  # the attempt that ended the epoch sets the remainder
        result.step = last.get("batch_size", 0) * last.get("world_size", 0) * last.get("grad_accum", 1)
        out.append(result)
    return sorted(out, key=lambda r: r.epoch)
