import av
import numpy as np
import pytest

from data_pipeline.frames import VideoError, decode_all, sample_frames
from data_pipeline.synth import encode_mp4
from tests.corpus import face_videos


def all_frames(data: bytes) -> list[np.ndarray]:
    import io

    with av.open(io.BytesIO(data)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def long_video(n=90, gop=10) -> bytes:
    """Frames that differ by index, with a keyframe every `gop` frames: seeking matters."""
    rng = np.random.default_rng(0)
    frames = [(rng.random((48, 64, 3)) * 40 + i * 2).astype(np.uint8) for i in range(n)]
    import io

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        s = out.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.options = {"g": str(gop), "keyint_min": str(gop), "bf": "2"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return buf.getvalue()


def smooth_video(n=90, gop=10) -> bytes:
    """Moving gradients, x264 at the synthetic corpus's settings: B-frames that no frame refers to
    (18 of 90), which sampling skips between wanted frames."""
    yy, xx = np.mgrid[0:48, 0:64]
    frames = [np.stack([(xx * 3 + i * 2) % 256, (yy * 4 + i) % 256, (xx + yy + i * 3) % 256], -1).astype(np.uint8) for i in range(n)]
    return encode_mp4(frames, 30, gop)


def test_the_smooth_video_has_frames_that_no_frame_refers_to():
    import io

    with av.open(io.BytesIO(smooth_video())) as c:
        stream = c.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        assert sum(1 for _ in c.decode(stream)) < 90


def test_sampling_counts_the_frames_it_decodes(monkeypatch):
    """The count bench/ingest.py bounds seeking's gain with: the wanted frames and the reference
    frames before them, fewer than the same seeks decode without skipping non-reference frames."""
    import data_pipeline.frames as frames_module

    data = smooth_video()
    counts: dict[str, int] = {}
    assert len(sample_frames(data, 5, counts)) == 5
    monkeypatch.setattr(frames_module, "_decode_skipping", lambda packets, codec, wanted: (f for p in packets for f in p.decode()))
    unskipped: dict[str, int] = {}
    sample_frames(data, 5, unskipped)
    assert 5 < counts["decoded"] < unskipped["decoded"] < 90, (counts, unskipped)


@pytest.mark.parametrize("video", [long_video, smooth_video])
@pytest.mark.parametrize("n", [1, 4, 7, 32])
def test_sampled_frames_equal_decoding_everything(n, video):
    data = video()
    everything = all_frames(data)
    frames = sample_frames(data, n)
    expected = np.unique(np.linspace(0, len(everything) - 1, min(n, len(everything))).round().astype(int))
    assert [f.index for f in frames] == expected.tolist()
    for f in frames:
        assert np.array_equal(f.image, everything[f.index]), f"frame {f.index} differs from sequential decoding"
    assert all(b.t > a.t for a, b in zip(frames, frames[1:]))


def test_more_samples_than_frames_gives_every_frame():
    data = face_videos(1)[0]
    frames = sample_frames(data, 1000)
    assert len(frames) == decode_all(data) == 12


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty_file"),
        (b"this is a text file, not a video" * 10, "unreadable_video"),
    ],
)
def test_bad_bytes(data, reason):
    with pytest.raises(VideoError) as e:
        sample_frames(data, 4)
    assert e.value.reason == reason


def test_truncated_video_is_an_error():
    data = long_video()
    with pytest.raises(VideoError) as e:
        sample_frames(data[: len(data) // 2], 8)
    assert e.value.reason in ("unreadable_video", "truncated_video")


def test_encode_then_sample_shape():
    frames = [np.zeros((40, 56, 3), np.uint8) for _ in range(5)]
    got = sample_frames(encode_mp4(frames, 10), 3)
    assert [f.index for f in got] == [0, 2, 4]
    assert got[0].image.shape == (40, 56, 3)


def test_truncated_faststart_video_is_truncated(tmp_path):
    # With the index at the front (as web-ready mp4s have it), a cut file still opens.
    path = str(tmp_path / "fs.mp4")
    rng = np.random.default_rng(0)
    with av.open(path, mode="w", format="mp4", options={"movflags": "faststart"}) as out:
        s = out.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for _ in range(60):
            for p in s.encode(av.VideoFrame.from_ndarray((rng.random((48, 64, 3)) * 255).astype(np.uint8), format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    data = open(path, "rb").read()
    assert len(sample_frames(data, 8)) == 8
    with pytest.raises(VideoError) as e:
        sample_frames(data[: len(data) // 2], 8)
    assert e.value.reason == "truncated_video"


def test_the_skip_holds_with_many_frame_threads(monkeypatch):
    """Ingest nodes have many cores: FFmpeg's frame threads hold several packets in flight, and each
    must still be decoded or skipped as it was sent."""
    from data_pipeline import frames

    opened = frames._open

    def with_threads(data):
        container = opened(data)
        container.streams.video[0].codec_context.thread_count = 8
        return container

    monkeypatch.setattr(frames, "_open", with_threads)
    data = smooth_video()
    everything = all_frames(data)
    for n in (7, 32):
        got = sample_frames(data, n)
        assert len(got) == n and all(np.array_equal(f.image, everything[f.index]) for f in got)
