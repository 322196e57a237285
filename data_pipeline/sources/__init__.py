"""Source layouts: each module turns a listing of a corpus into `VideoRecord`s.

A module has `NAME`, `matches(files) -> bool` and `scan(source_uri, files) -> Scan`, where `files`
maps every path below the source (relative) to its size.
"""

from __future__ import annotations

from dfdc import storage
from data_pipeline.records import Scan
from data_pipeline.sources import celebdf, dfdc, faceforensics

LAYOUTS = {m.NAME: m for m in (dfdc, faceforensics, celebdf)}

EXPECTED = (
    "DFDC (dfdc_train_part_N/metadata.json beside mp4s, dfdc_train_part_NN.zip, or labels.csv beside mp4s), "
    "FaceForensics++ (original_sequences/ and manipulated_sequences/) or "
    "Celeb-DF v2 (Celeb-real/, YouTube-real/, Celeb-synthesis/)"
)


class SourceError(ValueError):
    """A source that cannot be listed or whose layout is not one we know."""


def detect(files: dict[str, int]) -> str | None:
    found = [name for name, layout in LAYOUTS.items() if layout.matches(files)]
    return found[0] if len(found) == 1 else None


def discover(source: str, dataset: str | None = None) -> tuple[str, Scan]:
    """List `source` (a folder or an s3:// prefix) and scan it with its layout."""
    if dataset is not None and dataset not in LAYOUTS:
        raise SourceError(f"--dataset {dataset!r} is not one of {', '.join(LAYOUTS)}")
    files = storage.list_files(source)
    if not files:
        raise SourceError(f"source {source} is empty or does not exist")
    if dataset is None:
        dataset = detect(files)
        if dataset is None:
            sample = ", ".join(sorted(files)[:5])
            kinds = [name for name, layout in LAYOUTS.items() if layout.matches(files)]
            why = f"it looks like several ({', '.join(kinds)}): pass --dataset" if kinds else f"found e.g. {sample}"
            raise SourceError(f"source {source} matches no single known layout; expected {EXPECTED}; {why}")
    elif not LAYOUTS[dataset].matches(files):
        raise SourceError(f"source {source} does not look like {dataset}: expected {EXPECTED}")
    scan = LAYOUTS[dataset].scan(source, files)
    seen = set()
    for r in scan.records:
        if r.video in seen:
            raise SourceError(f"source {source}: two videos map to the same name {r.video!r}")
        seen.add(r.video)
    scan.records.sort(key=lambda r: r.video)
    return dataset, scan
