"""The contract between ingest and training: `manifest.json` at the dataset root, written last.

Readers trust only the shards it lists. While ingest runs, `_ingest/plan.json` says what the run
will do and `_ingest/units/<unit>.json` says what each finished unit wrote; the manifest is built
from those once every unit is done.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import platform
from collections import Counter

from dfdc import storage

FORMAT = "dfdc-scale/face-shards"
VERSION = 1
MANIFEST = "manifest.json"
PLAN = "_ingest/plan.json"


class ManifestError(ValueError):
    pass


def unit_record_path(unit_name: str) -> str:
    return f"_ingest/units/{unit_name}.json"


def write_json(uri: str, data: dict) -> None:
    storage.write_bytes(uri, json.dumps(data, indent=1, sort_keys=True).encode())


def read_json(uri: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(uri))
    except FileNotFoundError:
        return None


def software_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("dfdc-scale", "torch", "av", "webdataset", "facenet-pytorch", "ray", "s3fs", "numpy", "pillow"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def build(plan: dict, units: list[dict], scan_quarantine: list[dict]) -> dict:
    """The manifest from the plan, every unit's record and what listing the source set aside."""
    shards = sorted((s for u in units for s in u["shards"]), key=lambda s: s["url"])
    for s in shards:  # unit records are read back from storage
        _check_shard("a unit record of this ingest", s)
    quarantine = sorted(scan_quarantine + [q for u in units for q in u["quarantine"]], key=lambda q: (q["video"], q["reason"]))
    splits: dict[str, dict] = {}
    for s in shards:
        t = splits.setdefault(s["split"], {"shards": 0, "samples": 0, "real": 0, "fake": 0, "bytes": 0, "videos": 0})
        t["shards"] += 1
        t["samples"] += s["samples"]
        t["real"] += s["labels"]["real"]
        t["fake"] += s["labels"]["fake"]
        t["bytes"] += s["bytes"]
    for u in units:
        splits.setdefault(u["split"], {"shards": 0, "samples": 0, "real": 0, "fake": 0, "bytes": 0, "videos": 0})
        splits[u["split"]]["videos"] += u["videos_ok"]
    return {
        "format": FORMAT,
        "version": VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": plan["source"],
        "dataset": plan["dataset"],
        "plan": plan["digest"],
        "config": plan["config"],
        "shards": shards,
        "splits": splits,
        "videos": {
            "listed": plan["videos"] + len(scan_quarantine),
            "ingested": sum(u["videos_ok"] for u in units),
            "quarantined": len(quarantine),
        },
        "frames": sum(u["frames"] for u in units),
        "faces_detected_videos": sum(u["videos_detected"] for u in units),
        "quarantine": quarantine,
        "quarantine_counts": dict(sorted(Counter(q["reason"] for q in quarantine).items())),
        "versions": software_versions(),
    }


def digest(manifest: dict) -> str:
    """A hash of a manifest's content: a run saves it, and refuses to resume on a dataset whose
    manifest changed under the same URI (re-ingested, or shards added)."""
    import hashlib  # noqa: PLC0415

    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


def load(dataset_uri: str) -> dict:
    """The manifest of a dataset, checked to be one of ours."""
    uri = storage.join(dataset_uri, MANIFEST)
    data = read_json(uri)
    if data is None:
        raise ManifestError(f"{uri} does not exist: the dataset is not ingested (or its ingest has not finished)")
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise ManifestError(f"{uri} is not a {FORMAT} v{VERSION} manifest (format={data.get('format')!r}, version={data.get('version')!r})")
    for s in data.get("shards", []):
        _check_shard(uri, s)
    return data


def _check_shard(where: str, shard: dict) -> None:
    """A shard entry names a tar below the dataset's root: nothing this project writes names another
    place, so a manifest that does (an absolute path, another bucket, `..`) is refused, never read."""
    url = shard.get("url")
    try:
        storage.child("", url)
    except ValueError:
        raise ManifestError(f"{where}: shard url {url!r} is not a path inside the dataset (refused: manifests name "
                            "only their own shards)") from None
    if not url.endswith(".tar"):
        raise ManifestError(f"{where}: shard url {url!r} is not a .tar file")


def crop_margin(manifest: dict) -> float:
    """The margin the dataset's crops were cut with around each face box (ingest.margin): where the
    box lies in a crop. Manifests that do not record it were ingested at the default, 0.3."""
    return float(manifest.get("config", {}).get("ingest", {}).get("margin", 0.3))


def check_face_margin(widest: float, manifest: dict, dataset: str, what: str) -> None:
    """Crops hold `margin` of the face box's longer side beyond the box on every side (a square of
    side x (1 + 2 margin)): a cut with a wider margin than that would be clipped, so it is refused."""
    margin = crop_margin(manifest)
    if widest > margin + 1e-9:
        raise ManifestError(f"{what} asks for up to {widest:g} of the face box around it, but {dataset} was ingested with "
                            f"ingest.margin={margin:g}: its crops hold no more. Ingest with ingest.margin >= {widest:g} "
                            f"or lower {what}")


def check_difference_masks(manifest: dict, dataset: str) -> None:
    """data.diff_cutout reads each fake's `diff_kept` (ingest.difference_masks). Without them every
    real crop drawn would be cut and no fake: a cutout that gives the label away, so it is refused."""
    if not manifest.get("config", {}).get("ingest", {}).get("difference_masks"):
        raise ManifestError(f"data.diff_cutout needs shards ingested with ingest.difference_masks=true; {dataset} was not: "
                            f"ingest it again with it, or set data.diff_cutout=0")


def check_face_outlines(manifest: dict, dataset: str) -> None:
    """data.hull_cutout reads each crop's `outline` (ingest.face_outlines): without them it would
    never cut, silently, so it is refused."""
    if not manifest.get("config", {}).get("ingest", {}).get("face_outlines"):
        raise ManifestError(f"data.hull_cutout needs shards ingested with ingest.face_outlines=true; {dataset} was not: "
                            f"ingest it again with it, or set data.hull_cutout=0")


def face_cut_pixels(manifest: dict, face_margin: float) -> float:
    """The side, in pixels, of the cut that `face_margin` a side makes around the face box's longer
    side in the dataset's crops (ingest.crop_size pixels for the box's side x (1 + 2 ingest.margin))."""
    crop = float(manifest.get("config", {}).get("ingest", {}).get("crop_size", 256))
    return crop * (1 + 2 * face_margin) / (1 + 2 * crop_margin(manifest))


def shard_urls(dataset_uri: str, manifest: dict, split: str) -> list[str]:
    """The URLs of a split's shards ("all": every shard), each checked to lie below `dataset_uri`."""
    return [storage.child(dataset_uri, s["url"]) for s in manifest["shards"] if split == "all" or s["split"] == split]


def print_summary(manifest: dict, console) -> None:
    """The manifest as a table of splits, then videos ingested and set aside (on a rich Console)."""
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=f"{manifest['dataset']} shards from {manifest['source']}")
    for col in ("split", "shards", "samples", "real", "fake", "videos", "MB"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for split, t in sorted(manifest["splits"].items()):
        table.add_row(split, str(t["shards"]), str(t["samples"]), str(t["real"]), str(t["fake"]), str(t["videos"]), f"{t['bytes'] / 1e6:.1f}")
    console.print(table)
    v = manifest["videos"]
    console.print(f"videos: {v['ingested']} ingested, {v['quarantined']} quarantined")
    for reason, n in manifest["quarantine_counts"].items():
        console.print(f"  {reason}: {n}")
