"""One video in, face-crop samples out: read, sample frames, find (or reuse) faces, crop.

Scoring new videos uses the same function, so crops at training and at scoring time match.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass

import numpy as np

from dfdc import storage
from dfdc.config import IngestConfig
from data_pipeline.crops import crop_face, encode_jpeg, points_in_crop
from data_pipeline.diffs import difference, kept_counts
from data_pipeline.faces import Detector, Face, track
from data_pipeline.frames import VideoError, sample_frames
from data_pipeline.outlines import outline
from data_pipeline.records import ZIP_CONTENT_ERRORS, VideoRecord

Tracked = dict[int, list[tuple[int, Face]]]  # frame index -> [(track id, face)]
Crops = dict[tuple[int, int], np.ndarray]  # (frame index, track id) -> the crop, H x W x 3 uint8


@dataclass
class Sample:
    key: str
    jpg: bytes
    meta: dict


@dataclass
class VideoResult:
    samples: list[Sample]
    faces: Tracked
    frames: int
    reused: bool  # faces came from the original, not from the detector
    crops: Crops  # kept only when asked (a real video whose fakes get difference masks)


def sample_key(dataset: str, video: str, frame: int, face: int) -> str:
    # webdataset cuts a key at the first dot of the file name: escape dots (and the escape itself).
    safe = video.replace("%", "%25").replace(".", "%2E")
    return f"{dataset}/{safe}/f{frame:05d}-{face:02d}"


class VideoReader:
    """Reads videos' bytes, keeping the zip parts of one unit of work open between videos.

    A file that is not there, or whose bytes are not a readable zip, is the data's fault: a
    VideoError, and the video is set aside. Any other failure (credentials, network, throttling) is
    a StorageError: the unit fails and a rerun retries it."""

    def __init__(self):
        self._zips: dict[str, zipfile.ZipFile] = {}

    def read(self, record: VideoRecord) -> bytes:
        if record.member is None:
            try:
                return storage.read_bytes(record.uri)
            except storage.NotFound as e:
                raise VideoError("missing_file", f"{record.uri} does not exist") from e
        try:
            with storage.named(record.uri):
                if record.uri not in self._zips:
                    self._zips[record.uri] = zipfile.ZipFile(storage.open_input(record.uri))
                return self._zips[record.uri].read(record.member)
        except storage.NotFound as e:
            raise VideoError("missing_file", f"{record.uri} does not exist") from e
        except ZIP_CONTENT_ERRORS as e:
            raise VideoError("unreadable_zip_member", f"{record.member} in {record.uri}: {type(e).__name__}: {e}") from e

    def close(self) -> None:
        for z in self._zips.values():
            z.close()
        self._zips.clear()


def extract(record: VideoRecord, data: bytes, detector: Detector, cfg: IngestConfig, reuse: Tracked | None = None,
            original_crops: Crops | None = None, keep_crops: bool = False) -> VideoResult:
    """Crops of up to `faces_per_frame` faces in `frames_per_video` frames. `reuse`: the tracked
    faces of this fake's original, used instead of detecting when they cover the same frames.
    `original_crops`: the original's crops of those faces; with them each reused crop's metadata
    gets `diff_kept`, where it differs from the original's (data_pipeline/diffs.py). `keep_crops`:
    return the crops too, for this video's fakes."""
    try:
        frames = sample_frames(data, cfg.frames_per_video)
    except (VideoError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001  decoding bytes already in memory: only their content fails it
        raise VideoError("unreadable_video", f"unexpected {type(e).__name__} while decoding: {e}") from e
    indices = [f.index for f in frames]
    reused = reuse is not None and all(i in reuse for i in indices)
    if reused:
        faces = {i: reuse[i] for i in indices}
    else:
        found = detector.detect([f.image for f in frames])
        faces = dict(zip(indices, track(found, cfg.faces_per_frame, cfg.track_iou)))
    if not any(faces.values()):
        raise VideoError("no_face", f"no face in {len(frames)} sampled frames")
    samples, crops = [], {}
    for frame in frames:
        for track_id, face in faces[frame.index]:
            crop = crop_face(frame.image, face.box, cfg.margin, cfg.crop_size)
            if keep_crops:
                crops[(frame.index, track_id)] = crop
            meta = {
                "label": record.label,
                "video": record.video,
                "original": record.original,
                "group": record.group,
                "frame": frame.index,
                "t": round(frame.t, 4),
                "face": track_id,
                "box": [round(v, 1) for v in face.box],
                "score": round(face.score, 4),
                # fractions of the crop's side (train/data/sbi.py masks self-blended images with them)
                "landmarks": points_in_crop(face.landmarks, face.box, cfg.margin) if face.landmarks else None,
                "dataset": record.dataset,
                "method": record.method,
                "split": record.split,
            }
            if reused and original_crops and (frame.index, track_id) in original_crops:  # the same box: pixel-aligned
                meta["diff_kept"] = kept_counts(difference(original_crops[(frame.index, track_id)], crop))
            if cfg.face_outlines and (points := outline(crop)):
                meta["outline"] = points
            samples.append(Sample(sample_key(record.dataset, record.video, frame.index, track_id), encode_jpeg(crop, cfg.jpeg_quality), meta))
    return VideoResult(samples=samples, faces=faces, frames=len(frames), reused=reused, crops=crops)
