"""Source layouts: each module turns a listing of a corpus into `VideoRecord`s.

A module has `NAME`, `matches(files) -> bool` and `scan(source_uri, files) -> Scan`, where `files`
maps every path below the source (relative) to its size.
"""

from __future__ import annotations

import dataclasses
import fnmatch

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


def discover(source: str, dataset: str | None = None, include: list[str] | tuple = ()) -> tuple[str, Scan]:
    """List `source` (a folder or an s3:// prefix) and scan it with its layout. `include`
    (ingest.include): glob patterns over the videos' paths below the source; when given, only the
    videos matching one are kept, and the others are counted in `scan.left_out`, not quarantined."""
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
    if include:
        _keep_included(scan, include)
    scan.records.sort(key=lambda r: r.video)
    return dataset, scan


def _keep_included(scan: Scan, include) -> None:
    """A subset of the corpus, e.g. FF++'s c23 videos of its four methods: `*` matches across
    folders (fnmatch). A kept fake whose original was left out has no original to reuse or group by."""
    wanted = lambda video: any(fnmatch.fnmatchcase(video, p) for p in include)  # noqa: E731
    kept = [r for r in scan.records if wanted(r.video)]
    names = {r.video for r in kept}
    scan.left_out = len(scan.records) - len(kept) + sum(1 for q in scan.quarantine if not wanted(q.video))
    scan.records = [r if r.original is None or r.original in names else dataclasses.replace(r, original=None) for r in kept]
    scan.quarantine = [q for q in scan.quarantine if wanted(q.video)]
