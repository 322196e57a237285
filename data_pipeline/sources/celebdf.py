"""Celeb-DF v2.

    Celeb-real/id0_0000.mp4          real, celebrity id0
    YouTube-real/00000.mp4           real
    Celeb-synthesis/id0_id16_0000.mp4  fake: id0's video 0000 with id16's face
    List_of_testing_videos.txt       "<1 real | 0 fake> <path>" per line: the official test set

A fake goes with its target celebrity, so one person's real and fake videos share a split side.
"""

from __future__ import annotations

import posixpath
import re

from dfdc import storage
from data_pipeline.records import Quarantined, Scan, VideoRecord, is_video

NAME = "celebdf"
_TEST_LIST = "List_of_testing_videos.txt"
_REAL = re.compile(r"^(id\d+)_(\d+)$")
_FAKE = re.compile(r"^(id\d+)_(id\d+)_(\d+)$")


def matches(files: dict[str, int]) -> bool:
    return any(p.startswith(("Celeb-real/", "Celeb-synthesis/", "YouTube-real/")) for p in files)


def scan(source: str, files: dict[str, int]) -> Scan:
    out = Scan()
    test = _test_videos(source, files, out)
    for path in sorted(files):
        if not is_video(path):
            continue
        folder, name = posixpath.split(path)
        stem = posixpath.splitext(name)[0]
        split = "test" if path in test else None
        if folder == "YouTube-real":
            out.records.append(VideoRecord(uri=storage.join(source, path), video=path, label=0, group=f"{NAME}:yt:{stem}",
                                           dataset=NAME, split=split))
        elif folder == "Celeb-real" and (m := _REAL.match(stem)):
            out.records.append(VideoRecord(uri=storage.join(source, path), video=path, label=0, group=f"{NAME}:{m.group(1)}",
                                           dataset=NAME, split=split))
        elif folder == "Celeb-synthesis" and (m := _FAKE.match(stem)):
            target, _, clip = m.groups()
            original = f"Celeb-real/{target}_{clip}.mp4"
            out.records.append(VideoRecord(uri=storage.join(source, path), video=path, label=1, group=f"{NAME}:{target}",
                                           dataset=NAME, original=original if original in files else None,
                                           split=split, method="celeb-synthesis"))
        else:
            out.quarantine.append(Quarantined(path, "unrecognised_path", "expected Celeb-real/idN_NNNN, YouTube-real/NNNNN or Celeb-synthesis/idN_idM_NNNN"))
    return out


def _test_videos(source: str, files: dict[str, int], out: Scan) -> set[str]:
    if _TEST_LIST not in files:
        return set()
    test = set()
    text = storage.read_bytes(storage.join(source, _TEST_LIST)).decode("utf-8", errors="replace")
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in ("0", "1"):
            out.quarantine.append(Quarantined(f"{_TEST_LIST}:{n}", "malformed_metadata", f"expected '<0|1> <path>', got {line!r}"))
            continue
        test.add(parts[1])
    return test
