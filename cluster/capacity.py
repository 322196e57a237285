"""A capacity plan for a whole corpus (`dfdc plan`): how long and how much the ingest, one epoch and
a whole training recipe take on N spot nodes, and the S3 request rate that implies.

Arithmetic on measured rates, not a measurement: each rate says where it was measured, and the plan
assumes throughput grows linearly with nodes (not measured beyond one GPU and two cores). Prices and
node sizes come from the price table (cluster/aws/prices.yaml), with its date.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from train.cost import Prices

# S3 serves at least this many GET/HEAD requests per second per partitioned prefix (AWS's
# documented figure); more than that wants the shards spread over more prefixes.
S3_GETS_PER_PREFIX = 5_500
GET_DOLLARS_PER_1000 = 0.0004  # S3 Standard GET requests, us-east-1 (AWS's price page, read December 2026)


@dataclass(frozen=True)
class Corpus:
    name: str
    videos: int
    frames_per_video: int
    crops_per_frame: float  # faces kept per sampled frame, on average
    raw_bytes: float
    fake_fraction: float = 0.0  # of the videos: fakes (their crops get difference masks with ingest.difference_masks)


# DFDC's training set: 119,154 videos (~470 GB in 50 parts), 32 frames a video as the winner sampled.
# One face per frame on average is an assumption: DFDC videos show one or two people, and ingest keeps
# up to ingest.faces_per_frame (2 in configs/dfdc_b7.yaml); measure it from a manifest.
DFDC = Corpus("DFDC train", videos=119_154, frames_per_video=32, crops_per_frame=1.0, raw_bytes=470e9,
              fake_fraction=100_000 / 119_154)  # 19,154 originals


@dataclass(frozen=True)
class Rate:
    value: float
    measured: str  # where and how: the plan prints it beside every figure that uses it


# Recorded in docs/performance.md. `dfdc ingest` sampled frames/s per vCPU, by the detector settings
# that set MTCNN's work: (detector.thresholds, detector.min_face_size, detector.max_side).
INGEST_PER_VCPU = Rate(22.25, "`dfdc ingest` on 2 cores here: 44.5 sampled frames/s (bench/ingest.py, 2026-12-05; "
                              "1920x1080 synthetic videos of 10 s, 32 frames sampled, 2 of 12 real as in DFDC, so "
                              "detected; the default detector settings)")
# Keyed by the detector's name, thresholds, min_face_size and max_side. "mtcnn-facenet" is
# facenet-pytorch's own MTCNN code, which "mtcnn" ran before data_pipeline/mtcnn.py.
MEASURED_INGEST_PER_VCPU = {
    ("mtcnn", (0.6, 0.7, 0.7), 40, 960): INGEST_PER_VCPU,
    ("mtcnn", (0.85, 0.95, 0.95), 60, 960): Rate(21.25, "`dfdc ingest` on 2 cores here: 42.5 sampled frames/s (bench/ingest.py, "
                                                        "2026-12-05; 1920x1080 synthetic videos of 10 s, 32 frames sampled, 2 "
                                                        "of 12 real as in DFDC; the B7 recipe's detector settings on the CPU)"),
    ("mtcnn-facenet", (0.6, 0.7, 0.7), 40, 960): Rate(17.05, "`dfdc ingest` on 2 cores here: 34.1 sampled frames/s "
                                                             "(bench/ingest.py, 2026-12-05, before data_pipeline/mtcnn.py; "
                                                             "1920x1080 synthetic videos, a third real; default settings)"),
    ("mtcnn-facenet", (0.85, 0.95, 0.95), 60, 960): Rate(19.9, "`dfdc ingest` on 2 cores here: 39.8 sampled frames/s "
                                                               "(bench/ingest.py, 2026-12-05, before data_pipeline/mtcnn.py; "
                                                               "1920x1080 synthetic videos, a third real; the B7 recipe's "
                                                               "detector settings)"),
}


def ingest_rate(name: str, thresholds: list[float], min_face_size: int, max_side: int) -> Rate:
    """The ingest rate measured with this detector at these settings, or the default's with a note that it has none."""
    found = MEASURED_INGEST_PER_VCPU.get((name, tuple(thresholds), min_face_size, max_side))
    if found:
        return found
    return Rate(INGEST_PER_VCPU.value, f"no ingest rate measured with this detector at these settings ({name}, thresholds "
                                       f"{list(thresholds)}, min_face_size {min_face_size}, max_side {max_side}): the "
                                       f"default's, {INGEST_PER_VCPU.measured}; give --ingest-rate")


# CPU seconds for one fake crop's difference mask and counts (ingest.difference_masks), at 380 px;
# SSIM's cost grows with the pixels, so other crop sizes scale it by (crop_size / 380)^2.
DIFF_SECONDS_380 = Rate(0.041, "data_pipeline/diffs.py on one core here: median of 20 crops of 380 px (2026-12-04)")
# CPU seconds for one crop's face outline (ingest.face_outlines: dlib's detector and predictor), at 380 px.
OUTLINE_SECONDS_380 = Rate(0.016, "data_pipeline/outlines.py on one core here: median of 20 crops of 380 px (2026-12-04)")


# The training loader's GETs per sample, by data.order: the block order reads a block of
# data.block_samples samples per GET when the world size divides data.streams (bench/block_order.py:
# 1/32 at world sizes 1-64 on a DFDC-sized layout with the defaults); the permutation one per sample.
def gets_per_sample(order: str, block_samples: int) -> Rate:
    if order == "blocks":
        return Rate(1 / block_samples, f"the block order, one GET per {block_samples}-sample block (bench/block_order.py "
                                       "measured 1/32 at the defaults on a DFDC-sized layout, world sizes 1-64)")
    if order == "permutation":
        return Rate(1.0, "the permutation order, one GET per sample")
    return Rate(1 / 2048, "resampled shards streamed whole in 8 MiB reads (~2,000 crops a GET; not exact epochs)")


IMAGES_PER_GPU = Rate(183.7, "one H100, EfficientNet-B4 at 380 px, bf16, ZeRO-2, batch 32, streamed from S3 (2026-11-23)")
# Training images/s per GPU measured for a recipe's model, by (model.name, data.image_size,
# model.trainable); docs/performance.md has each run. A recipe not here gets IMAGES_PER_GPU, said so.
MEASURED_IMAGES_PER_GPU = {
    ("efficientnet_b4", 380, "all"): IMAGES_PER_GPU,
    ("vit_large_patch14_clip_quickgelu_224.openai", 224, "layernorm"): Rate(
        569.2, "one H200, GenD's CLIP ViT-L/14 recipe (LayerNorms + head), bf16, ZeRO-2, batch 64, streamed from S3 "
               "(2026-12-04; the recipe runs ZeRO-0 since, not measured on a GPU); on the plan's H100 nodes expect less "
               "(their memory bandwidth is lower)"),
}


def training_rate(model: str, image_size: int, trainable: str) -> Rate:
    """The recipe's own measured images/s per GPU, or the default with a note that it has none."""
    found = MEASURED_IMAGES_PER_GPU.get((model, image_size, trainable))
    if found:
        return found
    return Rate(IMAGES_PER_GPU.value, f"no rate measured for this recipe's model ({model} at {image_size} px, trainable "
                                      f"{trainable}): the default, {IMAGES_PER_GPU.measured}; give --gpu-rate")


@dataclass(frozen=True)
class Row:
    nodes: int
    hours: float
    dollars: float
    gets_per_s: float  # S3 GETs/s the whole cluster issues at that speed
    prefixes: int  # partitioned prefixes that many GETs want
    gets_per_prefix: float = 0.0  # GETs/s on each of the dataset's key prefixes (ingest.key_prefixes)
    get_dollars: float = 0.0  # S3 request charges of the GETs


def _size(prices: Prices, node_type: str, key: str) -> int:
    n = prices.size.get(node_type, {}).get(key, 0)
    if node_type not in prices.per_hour or n <= 0:
        known = ", ".join(t for t in prices.per_hour if prices.size.get(t, {}).get(key, 0) > 0)
        raise ValueError(f"{node_type!r} has no {key} and spot price in the price table ({prices.date}); known: {known}")
    return n


def ingest_plan(corpus: Corpus, rate: Rate, prices: Prices, node_type: str, nodes: list[int],
                diff_seconds: float = 0.0, outline_seconds: float = 0.0) -> list[Row]:
    """Ingest on N spot CPU nodes: every sampled frame decoded, detected or reused, cropped and
    encoded at `rate` frames/s per vCPU, plus `diff_seconds` of CPU per fake crop (difference
    masks) and `outline_seconds` per crop (face outlines). Its GETs read the raw videos: one ranged
    GET per 8 MiB block (s3fs's block size), a small rate beside training's."""
    vcpus = _size(prices, node_type, "vcpus")
    frames = corpus.videos * corpus.frames_per_video
    crops = frames * corpus.crops_per_frame
    cpu_seconds = frames / rate.value + crops * (corpus.fake_fraction * diff_seconds + outline_seconds)
    rows = []
    for n in nodes:
        seconds = cpu_seconds / (vcpus * n)
        gets = corpus.raw_bytes / (8 * 2**20) / seconds
        rows.append(Row(n, seconds / 3600, seconds / 3600 * n * prices.per_hour[node_type]["spot"], gets,
                        max(1, math.ceil(gets / S3_GETS_PER_PREFIX))))
    return rows


def epoch_samples(corpus: Corpus, samples_per_epoch: int | None = None) -> float:
    """Crops in one epoch: the corpus's, or with data.samples_per_epoch the share of a pass that
    training cuts into epochs (train/data/order.py slices_per_pass)."""
    from train.data.order import slices_per_pass  # noqa: PLC0415

    crops = corpus.videos * corpus.frames_per_video * corpus.crops_per_frame
    return crops / slices_per_pass(int(crops), samples_per_epoch, 1)


def epoch_plan(corpus: Corpus, rate: Rate, prices: Prices, node_type: str, nodes: list[int], epochs: int = 1,
               gets: Rate = Rate(1.0, "one GET per sample"), key_prefixes: int = 1, samples_per_epoch: int | None = None) -> list[Row]:
    """`epochs` epochs (`epoch_samples` each) on N spot GPU nodes at `rate` images/s per GPU. The
    training loader issues `gets` GETs per sample (`gets_per_sample`), spread over the dataset's
    `key_prefixes`."""
    gpus = _size(prices, node_type, "gpus")
    samples = epoch_samples(corpus, samples_per_epoch) * epochs
    rows = []
    for n in nodes:
        per_s = rate.value * gpus * n
        seconds = samples / per_s
        gets_per_s = per_s * gets.value
        rows.append(Row(n, seconds / 3600, seconds / 3600 * n * prices.per_hour[node_type]["spot"], gets_per_s,
                        max(1, math.ceil(gets_per_s / S3_GETS_PER_PREFIX)), gets_per_s / key_prefixes,
                        samples * gets.value / 1000 * GET_DOLLARS_PER_1000))
    return rows
