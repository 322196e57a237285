"""Sample N evenly spaced frames from a video, decoding only what is needed.

The packets are read once without decoding (cheap) to learn every frame's timestamp and where the
keyframes are. For each wanted frame we seek to the keyframe before it only when that keyframe lies
beyond where the decoder already is; otherwise decoding simply goes on. So sparse samples from a
long video decode a few frames per keyframe, and dense samples never decode a frame twice.

Between wanted frames the decoder skips non-reference frames (FFmpeg's skip_frame=NONREF, set per
packet): no other frame is decoded from them, so the wanted frames come out bit for bit the same,
and H.264 with B-frames has many (x264's defaults: 70 of 150 frames in a synthetic 1080p video).
"""

from __future__ import annotations

import bisect
import io
from dataclasses import dataclass

import av
import numpy as np


class VideoError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Frame:
    index: int  # frame number in the video (presentation order)
    t: float  # seconds from the start
    image: np.ndarray  # H x W x 3 uint8 RGB


def _open(data: bytes):
    if not data:
        raise VideoError("empty_file", "zero bytes")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError, EOFError) as e:
        raise VideoError("unreadable_video", str(e)) from e
    if not container.streams.video:
        container.close()
        raise VideoError("unreadable_video", "no video stream")
    return container


def _packet_index(container, stream) -> tuple[list[int], list[int]]:
    """Every frame's pts in presentation order, and the keyframes' pts."""
    pts, keys = [], []
    try:
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
    except av.FFmpegError as e:
        raise VideoError("truncated_video", f"demuxing failed after {len(pts)} packets: {e}") from e
    declared = stream.frames
    if declared and len(pts) < declared:
        raise VideoError("truncated_video", f"{len(pts)} of {declared} frames present")
    pts.sort()
    keys.sort()
    return pts, keys


def sample_frames(data: bytes, n: int, counts: dict[str, int] | None = None) -> list[Frame]:
    """`n` evenly spaced frames (fewer if the video has fewer), by seeking. `counts["decoded"]`, when
    given, grows by the frames the decoder handed back (those it skipped are not; frames a frame
    thread decoded ahead and a seek dropped are not either)."""
    container = _open(data)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        pts, keys = _packet_index(container, stream)
        if not pts:
            raise VideoError("no_frames", "the video stream holds no frames")
        wanted = np.unique(np.linspace(0, len(pts) - 1, min(n, len(pts))).round().astype(int))
        return _decode_at(container, stream, pts, keys, [int(i) for i in wanted], counts)
    finally:
        container.close()


def _decode_at(container, stream, pts, keys, wanted: list[int], counts: dict[str, int] | None = None) -> list[Frame]:
    base = stream.start_time if stream.start_time is not None else pts[0]
    wanted_pts = {pts[i] for i in wanted}
    tb = float(stream.time_base)
    frames: list[Frame] = []
    decoder = None
    position = None  # pts of the last decoded frame
    try:
        for index in wanted:
            target = pts[index]
            k = bisect.bisect_right(keys, target) - 1
            keyframe = keys[k] if k >= 0 else pts[0]
            if decoder is None or position is None or keyframe > position or target <= position:
                container.seek(keyframe, stream=stream, backward=True, any_frame=False)
                decoder = _decode_skipping(container.demux(stream), stream.codec_context, wanted_pts)
                position = None
            for frame in decoder:
                if counts is not None:
                    counts["decoded"] = counts.get("decoded", 0) + 1
                if frame.pts is None:
                    continue
                position = frame.pts
                if frame.pts >= target:
                    frames.append(Frame(index=index, t=(frame.pts - base) * tb, image=frame.to_ndarray(format="rgb24")))
                    break
            else:
                raise VideoError("truncated_video", f"the stream ended before frame {index} of {len(pts)}")
    except av.FFmpegError as e:
        raise VideoError("truncated_video", f"decoding failed after {len(frames)} frames: {e}") from e
    return frames


def _decode_skipping(packets, codec, wanted_pts: set[int]):
    """The frames decoded from `packets`, skipping the non-reference frames not asked for: the
    setting is changed before each packet goes in. With FFmpeg's frame threads holding several
    packets in flight the wanted frames still come out (tests/test_frames.py, 8 threads)."""
    for packet in packets:
        codec.skip_frame = "DEFAULT" if packet.pts is None or packet.pts in wanted_pts else "NONREF"
        yield from packet.decode()


def decode_all(data: bytes) -> int:
    """Decode every frame to RGB (the baseline that seeking beats); returns the frame count."""
    container = _open(data)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        count = 0
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            count += 1
        return count
    finally:
        container.close()
