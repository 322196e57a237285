"""The Deepfake Detection Challenge layouts.

- Training parts as folders: `dfdc_train_part_N/metadata.json` beside the mp4s, where metadata maps
  `x.mp4 -> {"label": "REAL"|"FAKE", "split": ..., "original": "y.mp4"}` (REAL entries have no
  original).
- The same parts as Kaggle's zips (`dfdc_train_part_NN.zip`), read in place: the folder inside
  may sit at the zip's root or one level deeper.
- The public test set: `labels.csv` with `filename,label` (1 is fake) beside the mp4s.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import zipfile

from dfdc import storage
from data_pipeline.records import ZIP_CONTENT_ERRORS, Quarantined, Scan, VideoRecord, is_video

NAME = "dfdc"


def matches(files: dict[str, int]) -> bool:
    return any(posixpath.basename(p) in ("metadata.json", "labels.csv") or _is_part_zip(p) for p in files)


def _is_part_zip(path: str) -> bool:
    return path.lower().endswith(".zip")


def scan(source: str, files: dict[str, int]) -> Scan:
    out = Scan()
    videos_by_dir: dict[str, set[str]] = {}
    for path in files:
        if is_video(path):
            videos_by_dir.setdefault(posixpath.dirname(path), set()).add(posixpath.basename(path))
    labelled_dirs = set()
    for path in sorted(files):
        folder, name = posixpath.split(path)
        if name == "metadata.json":
            labelled_dirs.add(folder)
            text = _read_text(source, path, out)
            present = videos_by_dir.get(folder, set())
            _scan_metadata(text, path, folder, present, out, lambda n, f=folder: (storage.join(source, f, n), None))
        elif name == "labels.csv":
            labelled_dirs.add(folder)
            text = _read_text(source, path, out)
            _scan_labels_csv(text, path, folder, videos_by_dir.get(folder, set()), source, out)
        elif _is_part_zip(path):
            _scan_zip(source, path, out)
    for folder, names in sorted(videos_by_dir.items()):
        if folder not in labelled_dirs:
            for name in sorted(names):
                out.quarantine.append(Quarantined(_rel(folder, name), "no_metadata_entry", "no metadata.json or labels.csv beside it"))
    return out


def _rel(folder: str, name: str) -> str:
    return posixpath.join(folder, name) if folder else name


def _read_text(source: str, path: str, out: Scan) -> str | None:
    try:
        return storage.read_bytes(storage.join(source, path)).decode("utf-8")
    except UnicodeDecodeError as e:
        out.quarantine.append(Quarantined(path, "malformed_metadata", f"not UTF-8 text: {e}"))
        return None


def _scan_metadata(text, meta_path, folder, present, out: Scan, locate) -> None:
    """Records for one metadata.json; `locate(name)` gives (uri, member) of a video in `folder`."""
    try:
        meta = json.loads(text) if text is not None else None
        if meta is not None and not isinstance(meta, dict):
            raise ValueError(f"top level is {type(meta).__name__}, expected an object")
    except ValueError as e:
        out.quarantine.append(Quarantined(meta_path, "malformed_metadata", str(e)))
        meta = None
    if meta is None:
        for name in sorted(present):
            out.quarantine.append(Quarantined(_rel(folder, name), "no_metadata_entry", f"{meta_path} is unreadable"))
        return
    for name in sorted(present - set(meta)):
        out.quarantine.append(Quarantined(_rel(folder, name), "no_metadata_entry", f"not in {meta_path}"))
    for name, entry in sorted(meta.items()):
        video = _rel(folder, name)
        label = entry.get("label") if isinstance(entry, dict) else None
        if label not in ("REAL", "FAKE"):
            out.quarantine.append(Quarantined(video, "malformed_metadata", f"{meta_path}: label {label!r} is not REAL or FAKE"))
            continue
        if name not in present:
            out.quarantine.append(Quarantined(video, "missing_file", f"listed in {meta_path} but no such file"))
            continue
        original = entry.get("original") if label == "FAKE" else None
        original = _rel(folder, original) if original else None
        split = entry.get("split") if entry.get("split") in ("val", "test") else None  # DFDC says "train" for all
        uri, member = locate(name)
        out.records.append(
            VideoRecord(uri=uri, member=member, video=video, label=int(label == "FAKE"), group=original or video,
                        dataset=NAME, original=original, split=split)
        )


def _scan_labels_csv(text, csv_path, folder, present, source, out: Scan) -> None:
    try:
        rows = list(csv.DictReader(io.StringIO(text or "")))
        if text is None or not rows or not {"filename", "label"} <= set(rows[0]):
            raise ValueError("expected a header with filename,label")
    except (ValueError, csv.Error) as e:
        out.quarantine.append(Quarantined(csv_path, "malformed_metadata", str(e)))
        for name in sorted(present):
            out.quarantine.append(Quarantined(_rel(folder, name), "no_metadata_entry", f"{csv_path} is unreadable"))
        return
    listed = set()
    for row in rows:
        name, label = row["filename"], (row["label"] or "").strip()
        video = _rel(folder, name)
        listed.add(name)
        if label not in ("0", "1"):
            out.quarantine.append(Quarantined(video, "malformed_metadata", f"{csv_path}: label {label!r} is not 0 or 1"))
        elif name not in present:
            out.quarantine.append(Quarantined(video, "missing_file", f"listed in {csv_path} but no such file"))
        else:
            out.records.append(VideoRecord(uri=storage.join(source, folder, name), video=video, label=int(label),
                                           group=video, dataset=NAME, split="test"))
    for name in sorted(present - listed):
        out.quarantine.append(Quarantined(_rel(folder, name), "no_metadata_entry", f"not in {csv_path}"))


def _scan_zip(source: str, zip_path: str, out: Scan) -> None:
    uri = storage.join(source, zip_path)
    try:
        # Only the central directory and metadata.json are read here: ranged reads on S3. Storage
        # failures become StorageErrors (the listing fails, nothing is set aside); what is left is
        # the zip's own bytes.
        with storage.named(uri), storage.open_input(uri) as f, zipfile.ZipFile(f) as z:
            members = [i.filename for i in z.infolist() if not i.is_dir()]
            metas = sorted(m for m in members if posixpath.basename(m) == "metadata.json")
            texts = {}
            for m in metas:
                try:
                    texts[m] = z.read(m).decode("utf-8")
                except (*ZIP_CONTENT_ERRORS, UnicodeDecodeError) as e:
                    texts[m] = None
                    out.quarantine.append(Quarantined(f"{zip_path}/{m}", "malformed_metadata", f"cannot read it: {e}"))
    except storage.StorageError:
        raise
    except (*ZIP_CONTENT_ERRORS, OSError) as e:  # e.g. too short to hold a zip's end record (a local seek's EINVAL)
        out.quarantine.append(Quarantined(zip_path, "unreadable_zip", f"not a readable zip file: {type(e).__name__}: {e}"))
        return
    if not metas:
        out.quarantine.append(Quarantined(zip_path, "malformed_metadata", "no metadata.json inside the zip"))
    videos_by_dir: dict[str, set[str]] = {}
    for m in members:
        if is_video(m):
            videos_by_dir.setdefault(posixpath.dirname(m), set()).add(posixpath.basename(m))
    meta_dirs = {posixpath.dirname(m) for m in metas}
    for m in metas:
        inner = posixpath.dirname(m)
        # Name videos by the part folder that holds metadata.json, as if the zip were unpacked,
        # whether that folder sits at the zip's root or one level deeper.
        part = posixpath.basename(inner) or posixpath.splitext(posixpath.basename(zip_path))[0]
        _scan_metadata(texts[m], f"{zip_path}/{m}", part, videos_by_dir.get(inner, set()), out,
                       lambda n, i=inner: (uri, _rel(i, n)))
    for inner, names in sorted(videos_by_dir.items()):
        if inner not in meta_dirs:
            for name in sorted(names):
                out.quarantine.append(Quarantined(f"{zip_path}/{_rel(inner, name)}", "no_metadata_entry", "no metadata.json beside it in the zip"))
