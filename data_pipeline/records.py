"""The plain records that flow between the pipeline's steps."""

from __future__ import annotations

import struct
import zipfile
import zlib
from dataclasses import dataclass, field

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")

# Every reason a video (or a metadata file) can be set aside for, and what it means. The summary
# counts each; `tests/test_ingest_bad_input.py` makes one of each.
QUARANTINE_REASONS = {
    "empty_file": "the file has zero bytes",
    "unreadable_video": "not a video, or a container that cannot be opened (truncated mp4s usually land here)",
    "truncated_video": "the video opens but breaks off while decoding",
    "no_frames": "the video opens but no frame could be decoded at the sampled times",
    "no_face": "no face was found in any sampled frame",
    "missing_file": "metadata names a video whose file is not in the source",
    "no_metadata_entry": "a video file that no metadata entry labels",
    "malformed_metadata": "a metadata file (metadata.json, labels.csv, split list) that cannot be parsed, or a bad entry in it",
    "unreadable_zip": "a zip part that cannot be opened as a zip",
    "unreadable_zip_member": "a video inside a zip part that cannot be read (bad CRC, bad compression)",
    "unrecognised_path": "a video whose path does not fit the dataset's naming, so its label is unknown",
}


# What zipfile raises for a zip's own bytes (quarantine, not retry): damaged, truncated, too short,
# a member missing, an unsupported compression method (NotImplementedError), an encrypted member
# (RuntimeError). Storage failures are told apart before these are caught (dfdc.storage.named).
ZIP_CONTENT_ERRORS = (zipfile.BadZipFile, zlib.error, struct.error, KeyError, EOFError, ValueError, NotImplementedError,
                      RuntimeError)


def is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTENSIONS)


@dataclass(frozen=True)
class VideoRecord:
    uri: str  # the file, or the zip part holding it
    video: str  # path relative to the source root: unique across the corpus
    label: int  # 0 real, 1 fake
    group: str  # an original and all its fakes share one group; splits never cut a group
    dataset: str
    member: str | None = None  # path inside the zip at `uri`
    original: str | None = None  # `video` of the original a fake was made from
    split: str | None = None  # official split where the dataset has one
    method: str | None = None  # manipulation method where known


@dataclass(frozen=True)
class Quarantined:
    video: str
    reason: str
    detail: str = ""
    # Known for videos set aside during ingest (not while listing): evaluation scores them 0.5.
    label: int | None = None
    split: str | None = None
    dataset: str | None = None
    method: str | None = None

    def __post_init__(self):
        if self.reason not in QUARANTINE_REASONS:
            raise ValueError(f"unknown quarantine reason {self.reason!r}")


@dataclass
class Scan:
    """What a source layout yields: the usable videos and what was set aside while listing."""

    records: list[VideoRecord] = field(default_factory=list)
    quarantine: list[Quarantined] = field(default_factory=list)
    left_out: int = 0  # videos ingest.include did not ask for
