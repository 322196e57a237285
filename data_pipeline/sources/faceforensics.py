"""FaceForensics++ (and Google's DeepFakeDetection inside it).

    original_sequences/youtube/<comp>/videos/000.mp4
    original_sequences/actors/<comp>/videos/01__walking.mp4            (DFD originals)
    manipulated_sequences/<method>/<comp>/videos/000_003.mp4           (target 000, face of 003)
    manipulated_sequences/DeepFakeDetection/<comp>/videos/01_02__walking__ABCD1234.mp4
    splits/{train,val,test}.json                                       ([["000", "003"], ...])

Both identities of a pair share a group (and so a split side); all compressions of a video too.
"""

from __future__ import annotations

import json
import posixpath
import re

from dfdc import storage
from data_pipeline.records import Quarantined, Scan, VideoRecord, is_video

NAME = "faceforensics"
_SPLITS = ("train", "val", "test")
_ORIGINAL = re.compile(r"^original_sequences/(youtube|actors)/([^/]+)/videos/([^/]+)$")
_FAKE = re.compile(r"^manipulated_sequences/([^/]+)/([^/]+)/videos/([^/]+)$")
_PAIR = re.compile(r"^(\d+)_(\d+)$")
_DFD_FAKE = re.compile(r"^(\d+)_(\d+)__(.+?)__[A-Za-z0-9]+$")
_DFD_REAL = re.compile(r"^(\d+)__(.+)$")


def matches(files: dict[str, int]) -> bool:
    return any(p.startswith(("original_sequences/", "manipulated_sequences/")) for p in files)


def scan(source: str, files: dict[str, int]) -> Scan:
    out = Scan()
    split_of = _official_splits(source, files, out)
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    pending = []  # (path, identity, label, original, method)
    for path in sorted(files):
        if not is_video(path):
            continue
        stem = posixpath.splitext(posixpath.basename(path))[0]
        if m := _ORIGINAL.match(path):
            source_kind, comp, _ = m.groups()
            if source_kind == "youtube":
                pending.append((path, f"yt:{stem}", 0, None, None))
            elif d := _DFD_REAL.match(stem):
                pending.append((path, f"actor:{d.group(1)}", 0, None, None))
            else:
                out.quarantine.append(Quarantined(path, "unrecognised_path", "actor video not named <actor>__<scene>"))
            continue
        m = _FAKE.match(path)
        if not m:
            out.quarantine.append(Quarantined(path, "unrecognised_path", "not under original_sequences/*/<comp>/videos or manipulated_sequences/<method>/<comp>/videos"))
            continue
        method, comp, _ = m.groups()
        if p := _PAIR.match(stem):
            target, donor = p.groups()
            union(f"yt:{target}", f"yt:{donor}")
            original = f"original_sequences/youtube/{comp}/videos/{target}.mp4"
            pending.append((path, f"yt:{target}", 1, original, method))
        elif d := _DFD_FAKE.match(stem):
            # DFD pairs many actors with each other: grouping by both would join nearly all of
            # them, so a fake goes with its target actor (whose original it was made from).
            target, _, scene = d.groups()
            original = f"original_sequences/actors/{comp}/videos/{target}__{scene}.mp4"
            pending.append((path, f"actor:{target}", 1, original, method))
        else:
            out.quarantine.append(Quarantined(path, "unrecognised_path", f"{method} video not named <target>_<source>.mp4"))
    for path, identity, label, original, method in pending:
        if original is not None and original not in files:
            original = None  # the original is not part of this corpus: nothing to reuse or group by
        out.records.append(
            VideoRecord(uri=storage.join(source, path), video=path, label=label, group=NAME + ":" + find(identity),
                        dataset=NAME, original=original, split=split_of.get(identity), method=method)
        )
    return out


def _official_splits(source: str, files: dict[str, int], out: Scan) -> dict[str, str]:
    split_of: dict[str, str] = {}
    for split in _SPLITS:
        path = f"splits/{split}.json"
        if path not in files:
            continue
        try:
            pairs = json.loads(storage.read_bytes(storage.join(source, path)))
            if not isinstance(pairs, list) or not all(isinstance(p, list) for p in pairs):
                raise ValueError("expected a list of [target, source] pairs")
        except ValueError as e:
            out.quarantine.append(Quarantined(path, "malformed_metadata", str(e)))
            continue
        for pair in pairs:
            for vid in pair:
                split_of[f"yt:{vid}"] = split
    return split_of
