"""Ingest speed, side by side in one run: sampled frames per second for

  decode-all   decoding every frame of each video (what sampling by seeking avoids)
  seek-decode  data_pipeline.frames.sample_frames: the same sampled frames, by seeking (PyAV; FFmpeg's
               decoder threads), in one process, and in one process per core (the machine's
               decode-only limit, which ingest is held to: it runs one task per core)
  torchcodec   the same frames by torchcodec's VideoDecoder (needs FFmpeg's shared libraries on the
               machine, e.g. Debian's libavcodec59 and friends; without them the row says why not)
  MTCNN        the face detector alone on the sampled frames (decoded beforehand): its share of extract
  extract      seek-decode + MTCNN + crop + JPEG, one process, detection on every video
               (ingest lets fakes reuse their original's boxes, so it detects on the reals only)
  ingest       the whole `dfdc ingest` on a local S3 server with Ray tasks (all cores), shards included,
               timed after a warm-up run

Videos are synthetic (DFDC-like layout) at a size set by --width/--height/--seconds; DFDC's own are
1920x1080, 10 s at 30 fps. Ratios are against decode-all; the last lines give ingest's against
seek-decode on every core and extract's against seek-decode in one process (issue 27's target:
ingest >= 0.5x decode-only). `--set KEY=VALUE` changes a setting as `dfdc ingest
--set` does, e.g. a recipe's detector: --set 'detector.thresholds=[0.85,0.95,0.95]'.
Usage: python bench/ingest.py [--videos 12] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import time

from dfdc import storage
from dfdc.config import load_config


def torchcodec_rate(videos: list[bytes], n: int, sampled: int) -> float | str:
    """Sampled frames/s of torchcodec on the frames sample_frames picks (evenly spaced, by index), or
    why it could not run."""
    import numpy as np  # noqa: PLC0415

    try:
        from torchcodec.decoders import VideoDecoder  # noqa: PLC0415

        VideoDecoder(videos[0])
    except (ImportError, OSError, RuntimeError) as e:
        return f"torchcodec did not load ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
    got, t = 0, time.perf_counter()
    for v in videos:
        decoder = VideoDecoder(v, seek_mode="exact")
        count = decoder.metadata.num_frames
        wanted = np.unique(np.linspace(0, count - 1, min(n, count)).round().astype(int)).tolist()
        got += len(decoder.get_frames_at(wanted).data)
    rate = got / (time.perf_counter() - t)
    if got != sampled:
        return f"torchcodec returned {got} frames, PyAV {sampled}"
    return rate


def _seek(job: tuple[bytes, int]) -> int:
    from data_pipeline.frames import sample_frames  # noqa: PLC0415

    data, n = job
    return len(sample_frames(data, n))


def seek_rate_every_core(videos: list[bytes], n: int) -> float:
    """Sampled frames/s of seek-decode with one process per core, each video whole to one process."""
    from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415
    from multiprocessing import get_context  # noqa: PLC0415

    cores = os.cpu_count() or 1
    with ProcessPoolExecutor(cores, mp_context=get_context("spawn")) as pool:  # spawn: torch is loaded here
        list(pool.map(_seek, [(v, n) for v in videos[:cores]]))  # warm-up: imports in every process
        t = time.perf_counter()
        got = sum(pool.map(_seek, [(v, n) for v in videos]))
        return got / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=12)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--frames", type=int, default=16, help="frames sampled per video")
    ap.add_argument("--gop", type=int, default=30, help="frames between keyframes in the synthetic videos")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a config setting for extract and ingest (repeatable)")
    args = ap.parse_args()

    import torch  # noqa: PLC0415  (slow: after --help)

    from cluster.local.s3_server import temporary_server
    from data_pipeline.extract import extract
    from data_pipeline.faces import build_detector
    from data_pipeline.frames import decode_all, sample_frames
    from data_pipeline.ingest import ingest
    from data_pipeline.sources import discover
    from data_pipeline.synth import synth

    cfg = load_config(None, [f"synth.videos={args.videos}", f"synth.width={args.width}", f"synth.height={args.height}",
                             f"synth.seconds={args.seconds}", f"synth.fps={args.fps}", f"synth.keyframe_interval={args.gop}", f"ingest.frames_per_video={args.frames}",
                             "ingest.faces_per_frame=1", "ingest.videos_per_task=3", "detector.min_face_size=40", *args.overrides])
    with temporary_server("bench"):
        synth("s3://bench/raw", cfg.synth, log=lambda *_: None)
        _, scan = discover("s3://bench/raw")
        videos = [storage.read_bytes(r.uri) for r in scan.records]
        counts: dict[str, int] = {}
        sampled = sum(len(sample_frames(v, args.frames, counts)) for v in videos)  # also warms caches
        total = sum(decode_all(v) for v in videos)
        reals = sum(r.label == 0 for r in scan.records)
        print(f"{len(videos)} videos {args.width}x{args.height} ({reals} real: ingest detects on these), {total} frames "
              f"in all, {sampled} sampled ({args.frames} a video); {os.cpu_count()} cores")
        # Seeking cannot beat decode-all by more than the frames it still decodes allow (plus the
        # RGB conversion of the frames it does not keep)
        print(f"seek-decode decoded {counts['decoded']} frames for its {sampled}: decode-all decodes "
              f"{total / counts['decoded']:.2f}x as many")

        rows = {}
        t = time.perf_counter()
        for v in videos:
            decode_all(v)
        rows["decode-all"] = sampled / (time.perf_counter() - t)

        t = time.perf_counter()
        for v in videos:
            sample_frames(v, args.frames)
        rows["seek-decode"] = sampled / (time.perf_counter() - t)
        every_core = f"seek-decode, {os.cpu_count()} processes"
        rows[every_core] = seek_rate_every_core(videos, args.frames)

        rows["seek-decode, torchcodec"] = torchcodec_rate(videos, args.frames, sampled)

        detector = build_detector(cfg.detector)
        decoded = [[f.image for f in sample_frames(v, args.frames)] for v in videos]
        t = time.perf_counter()
        for images in decoded:
            detector.detect(images)
        detect = time.perf_counter() - t
        rows["MTCNN alone"] = sampled / detect
        t = time.perf_counter()
        for r, v in zip(scan.records, videos):
            extract(r, v, detector, cfg.ingest)
        extract_s = time.perf_counter() - t
        rows["extract (1 process)"] = sampled / extract_s
        mtcnn_share = detect / extract_s

        # Warm Ray up first, one unit per core (start, worker imports, model load): paid once per run.
        warm = load_config(None, [f"{k}={v}" for k, v in (("synth.videos", 3 * (os.cpu_count() or 2)), ("synth.width", 160), ("synth.height", 120))])
        synth("s3://bench/warm", warm.synth, log=lambda *_: None)
        ingest("s3://bench/warm", "s3://bench/warm-faces", cfg, progress=False, log=lambda *_: None)
        t = time.perf_counter()
        summary = ingest("s3://bench/raw", "s3://bench/faces", cfg, progress=False, log=lambda *_: None)
        ingest_row = f"ingest (Ray, S3, {os.cpu_count()} cores)"
        rows[ingest_row] = summary.manifest["frames"] / (time.perf_counter() - t)

    base = rows["decode-all"]
    print(f"{'stage':32} {'sampled frames/s':>17} {'vs decode-all':>14}")
    for name, fps in rows.items():
        if isinstance(fps, str):
            print(f"{name:32} {'not measured: ' + fps}")
        else:
            print(f"{name:32} {fps:17.1f} {fps / base:13.2f}x")
    print(f"ingest is {rows[ingest_row] / rows[every_core]:.2f}x seek-decode, both on every core.")
    print(f"MTCNN takes {mtcnn_share:.0%} of extract's time (MTCNN alone over extract, same frames).")
    print(f"extract is {rows['extract (1 process)'] / rows['seek-decode']:.2f}x seek-decode (both one process; torch threads: {torch.get_num_threads()}); detector: "
          f"thresholds {cfg.detector.thresholds}, min_face_size {cfg.detector.min_face_size}, max_side {cfg.detector.max_side}")
    print(f"keyframe every {args.gop} frames; ingest timed after a warm-up (Ray start, worker imports, MTCNN load).")


if __name__ == "__main__":
    main()
