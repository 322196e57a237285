"""One typed config for every stage.

The dataclass defaults below are the embedded defaults; a YAML file in `configs/` changes some of
them, and `--set a.b=c` changes single keys on top. Unknown keys are errors that name the key, so a
typo never silently leaves a default in place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


@dataclass
class DetectorConfig:
    # "mtcnn" (batched, data_pipeline/mtcnn.py), "mtcnn-facenet" (facenet-pytorch's own code: the reference),
    # or "package.module:factory" for a detector of your own (see data_pipeline/faces.py).
    name: str = "mtcnn"
    device: str = "cpu"
    batch_size: int = 16
    # Frames are shrunk so that their longer side is at most this before detection; boxes are
    # scaled back. DFDC frames are 1920x1080 and faces are large, so half size loses nothing.
    max_side: int = 960
    min_face_size: int = 40
    thresholds: list[float] = field(default_factory=lambda: [0.6, 0.7, 0.7])
    min_score: float = 0.9
    # Plug-in detectors ("package.module:factory") a model card may name when scoring: a card comes
    # from storage, so it never chooses code to import on its own.
    plugins: list[str] = field(default_factory=list)


@dataclass
class IngestConfig:
    frames_per_video: int = 32
    faces_per_frame: int = 2
    margin: float = 0.3  # added on each side, as a fraction of the face box's longer side
    crop_size: int = 256
    jpeg_quality: int = 95
    shard_bytes: int = 512 * 1024 * 1024
    # Shards spread over this many key prefixes (shards/<k>/<split>/..., k from the unit's name): S3
    # serves ~5,500 GET/s per prefix, so a cluster that reads faster wants more (`dfdc plan` says
    # how many). 1: shards/<split>/... Recorded in the manifest with the rest of this section.
    key_prefixes: int = 1
    val_fraction: float = 0.1
    seed: int = 0
    # Work unit of a Ray task: whole groups (an original and its fakes) up to this many videos.
    # A killed ingest redoes at most one unit per worker.
    videos_per_task: int = 256
    reuse_original_boxes: bool = True
    # Each fake crop cut with its original's boxes gets `diff_kept` in its metadata: where it differs
    # from the original's crop, what data.diff_cutout reads (the DFDC winner's difference masks,
    # data_pipeline/diffs.py). ~41 ms of CPU a 380 px fake crop.
    difference_masks: bool = False
    # Each crop gets `outline` in its metadata: 27 points around the face from dlib's 68-point shape
    # predictor, what data.hull_cutout reads (the DFDC winner's convex hull, data_pipeline/outlines.py).
    # Off: that model was trained on iBUG 300-W, whose licence excludes commercial use (docs/recipes.md).
    face_outlines: bool = False
    # Only the videos whose path below the source matches one of these globs (`*` crosses folders),
    # e.g. FF++'s c23 videos of its four methods; the rest are counted as left out. Empty: all.
    include: list[str] = field(default_factory=list)
    # Faces whose box overlaps a track's last box by at least this IoU continue that track.
    track_iou: float = 0.3

    def check(self) -> None:
        if self.difference_masks and not self.reuse_original_boxes:
            raise ConfigError("ingest.difference_masks needs ingest.reuse_original_boxes: a fake's crop is compared with its "
                              "original's crop of the same box")


@dataclass
class SynthConfig:
    videos: int = 120
    seed: int = 0
    parts: int = 2
    fakes_per_real: int = 2
    identities: int = 16
    width: int = 320
    height: int = 240
    fps: int = 15
    seconds: float = 2.0
    keyframe_interval: int = 15  # frames between keyframes (x264's default, 250, is longer than a clip)


@dataclass
class RayConfig:
    # None: join the cluster in RAY_ADDRESS if set, else start a local Ray for this process.
    address: str | None = None
    cpus_per_task: float = 1.0  # ingest tasks
    gpus_per_task: float = 0.0  # > 0 with detector.device=cuda: several tasks can share a GPU
    # Ray Train: a number of workers, or "min..max" for elastic training (Ray Train starts with as
    # many as fit, up to max, and restarts on fewer or more as nodes come and go; each restart goes on
    # from the last checkpoint's global position, converting its ZeRO state to the new world size).
    num_workers: int | str = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0  # 1 on GPU nodes
    # Custom Ray resources each training worker also needs, e.g. {"spot_gpu": 1} to keep workers on
    # the nodes that advertise it.
    worker_resources: dict[str, float] = field(default_factory=dict)
    storage_path: str = "s3://dfdc/runs"  # checkpoints and run state: s3:// or a folder
    # None: a new run with a name of its own (printed); a name that has checkpoints resumes that run.
    run_name: str | None = None
    # The driver holds <run>/driver.lock (train/run_lock.py) while it runs, renewed every third of
    # this; a second driver of the same run is refused until it ends, or this long after it died.
    lock_lease_s: float = 120.0
    num_to_keep: int = 2
    # Also checkpoint every this many optimizer steps inside an epoch (0: at epoch ends only), so a
    # run killed mid-epoch (a spot node lost) loses at most this many steps.
    checkpoint_every_steps: int = 0
    max_failures: int = 0  # whole-group restarts Ray Train may do on a worker failure (-1: no limit)
    # Restarts after nodes were preempted (spot), counted apart from max_failures (-1: no limit).
    max_preemption_failures: int = -1
    # Elastic runs: how often Ray Train considers growing a healthy group (seconds).
    elastic_resize_interval_s: float = 60.0
    # Every this many steps all ranks ask Ray Train whether a node of theirs is being preempted (a
    # spot notice drains it: cluster/spot.py) and checkpoint at once if so; the budget is checked
    # at the same steps. Each check is one Ray collective. 0: never.
    interrupt_check_steps: int = 10

    def workers(self) -> tuple[int, int]:
        """(min, max) workers; equal unless elastic."""
        if isinstance(self.num_workers, int):
            low = high = self.num_workers
        else:
            low_text, sep, high_text = self.num_workers.partition("..")
            try:
                low, high = int(low_text), int(high_text if sep else low_text)
            except ValueError:
                raise ConfigError(f"ray.num_workers must be a number or min..max, got {self.num_workers!r}") from None
        if not 1 <= low <= high:
            raise ConfigError(f"ray.num_workers must be at least 1 (and min <= max), got {self.num_workers!r}")
        return low, high

    def check(self) -> None:
        self.workers()


@dataclass
class DataConfig:
    dataset: str = "s3://dfdc/faces/demo-synth"  # dataset root holding manifest.json
    image_size: int = 224
    batch_size: int = 32  # per rank
    num_workers: int = 2  # DataLoader workers per rank
    shuffle_buffer: int = 1000
    balance: str = "loss"  # loss: weight fakes by real/fake ratio; none
    augment: bool = True
    # An epoch is one pass over every train sample in a seeded order, the same for any number of
    # ranks (train/data/order.py): blocks (consecutive samples of a shard read together, one GET a
    # block) or permutation (one GET a sample: small datasets); resampled: shards drawn with
    # replacement (no exact epochs).
    order: str = "blocks"
    # Train samples per epoch, when a paper's "epoch" is less than a pass (the DFDC winner's: 2,500
    # iterations of 48): each pass is cut into round(pass / samples_per_epoch) epochs (the block order
    # at whole blocks), so every sample still trains once a pass (train/data/order.py). None: an epoch is a pass.
    samples_per_epoch: int | None = None
    # The block order: samples per block (one GET), blocks per window (a batch draws from that many
    # blocks at most) and canonical streams. The world size must divide `streams` (each rank then
    # reads its own streams' blocks whole); a loader worker holds a window of each of its streams.
    block_samples: int = 32
    window_blocks: int = 32
    streams: int = 64
    # A node-local folder for the train set's compact index (train/data/index.py), built once per
    # node and memory-mapped by its ranks and loader workers; "": <tmp>/dfdc-index.
    index_cache: str = ""
    # The loader skips (and counts) a sample (or, resampled, a shard) whose bytes cannot be read, but
    # stops with an error after this many in a row: a dataset that cannot be read fails the step.
    max_failed_reads: int = 16
    # Ranged reads that fail for storage reasons (after s3fs's own retries) are tried this many times
    # more, 1, 2, 4, ... s apart, before the step fails: never skipped, the run restarts or stops.
    read_retries: int = 4
    # Reads the storage throttles (503 SlowDown, 429) wait with jittered back-off, not counted as
    # failures, until this many seconds pass without any read getting through.
    slowdown_timeout_s: float = 1800.0
    # A rank reads each of its samples with a ranged GET; two of its ranges in one shard closer than
    # this many bytes are read as one (fewer requests, more bytes: each rank also reads the gap).
    merge_gap_bytes: int = 0
    # How the permutation order's ranged GETs go out: presigned URLs over libcurl (`curl`, the least
    # CPU a GET) or over urllib3 (`presigned`), neither through an HTTP proxy; or s3fs's cat_ranges
    # (botocore: proxies, and every setting botocore reads). bench/get_cpu.py compares them.
    range_reads: str = "curl"
    # Every rank appends one JSON line per batch (its position and sample keys) under
    # <run dir>/ledger/: the proof that an epoch saw every sample once (`dfdc ledger check`).
    ledger: bool = False
    # Input normalisation of the model's weights (per-channel mean and std of [0, 1] pixels), e.g.
    # OpenAI CLIP's for CLIP encoders; None: the model sees [0, 1] pixels. Saved in the model card.
    mean: list[float] | None = None
    std: list[float] | None = None
    # video: the epoch's order keeps each real crop next to the crops of the fakes made from it (same
    # original, frame and face), so they share a batch (train/data/order.py says what "once" means then).
    pairing: str = "none"
    # Probability that a real train crop trains as a pair (SBI, train/data/sbi.py): its real
    # counterpart and its self-blended pseudo-fake, side by side in the batch and augmented alike
    # (so a batch of data.batch_size crops holds up to twice as many images); drawn per sample from
    # the run's seed, the epoch and the sample. 1: every real crop, the paper's setting.
    sbi: float = 0.0
    # false: the epoch holds the dataset's real crops only (with data.sbi: the SBI paper's setting).
    fakes: bool = True
    # [low, high]: in training, each crop is cut again around its face box (each sample's metadata),
    # each side with its own random margin in this range, a fraction of the box's width or height
    # (SBI's [0.05, 0.2]); then resized to data.image_size. None: the ingested square crop as it is.
    face_margin: list[float] | None = None
    # The same cut with one margin on every side for validation, `dfdc evaluate` and `dfdc score`
    # (SBI's 0.125); kept in the model card. None: the ingested crop.
    eval_face_margin: float | None = None
    # Probability that a train crop with landmarks loses its eyes, mouth or nose to a black band (the
    # DFDC winner's landmark cutout, his 0.7; train/data/cutout.py). 0: off.
    landmark_cutout: float = 0.0
    # Probability, for a train crop not drawn for the landmark cutout, of the winner's difference-mask
    # cutout: black outside one of six halves (or pairs of opposite quarters), a fake's only among
    # those still holding more than 20 px of its difference from its original (5 tries, then none).
    # Needs shards ingested with ingest.difference_masks. His chain: landmarks 0.7, else the convex
    # hull 0.2 (data.hull_cutout), else this 0.1; without the hull, 0.08 (0.8 x 0.1) keeps his
    # frequency (train/data/cutout.py). 0: off.
    diff_cutout: float = 0.0
    # Probability, for a train crop not drawn for the landmark cutout, of the winner's convex-hull
    # cutout (his 0.2): one half of the face's outline (above, below, left or right of its centroid)
    # goes black. Drawn before data.diff_cutout, as his chain: with it on, data.diff_cutout is his
    # 0.1. Needs shards ingested with ingest.face_outlines. 0: off.
    hull_cutout: float = 0.0

    def check(self) -> None:
        if self.samples_per_epoch is not None and self.samples_per_epoch < self.batch_size:
            raise ConfigError(f"data.samples_per_epoch must be at least data.batch_size ({self.batch_size}), "
                              f"got {self.samples_per_epoch}")
        if self.face_margin is not None and (len(self.face_margin) != 2 or not 0 <= self.face_margin[0] <= self.face_margin[1] <= 1):
            raise ConfigError(f"data.face_margin takes [low, high] with 0 <= low <= high <= 1 (fractions of the face box), "
                              f"got {self.face_margin}")
        for key in ("landmark_cutout", "diff_cutout", "hull_cutout"):
            if getattr(self, key) and self.order == "resampled":
                raise ConfigError(f"data.{key} needs data.order=blocks or permutation (the resampled stream does not cut crops)")
        if self.face_margin is not None and self.order == "resampled":
            raise ConfigError("data.face_margin needs data.order=blocks or permutation (the resampled stream does not cut crops again)")
        if self.pairing not in ("none", "video"):
            raise ConfigError(f"data.pairing must be none or video, got {self.pairing!r}")
        if not self.fakes and not self.sbi > 0.0:
            raise ConfigError(f"data.fakes=false trains on real crops only: it needs data.sbi above 0 to make "
                              f"pseudo-fakes of them, got data.sbi={self.sbi}")
        if self.pairing != "none" and not self.fakes:
            raise ConfigError("data.pairing=video pairs real crops with fakes: it does nothing with data.fakes=false")
        if (self.pairing != "none" or self.sbi or not self.fakes) and self.order == "resampled":
            raise ConfigError("data.pairing, data.sbi and data.fakes=false need data.order=blocks or permutation "
                              "(they work on the epoch's order of samples)")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("data.mean and data.std go together: set both (3 numbers each) or neither")
        if self.mean is not None and (len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0):
            raise ConfigError(f"data.mean and data.std take 3 numbers each (std above 0), got {self.mean} and {self.std}")
        if self.range_reads not in ("curl", "presigned", "s3fs"):
            raise ConfigError(f"data.range_reads must be curl, presigned or s3fs, got {self.range_reads!r}")
        if self.order not in ("blocks", "permutation", "resampled"):
            raise ConfigError(f"data.order must be blocks, permutation or resampled, got {self.order!r}")
        if self.ledger and self.order == "resampled":
            raise ConfigError("data.ledger needs data.order=blocks or permutation (a resampled stream has no positions to prove)")


# model.trainable's values (train/model/trainable.py builds each).
TRAINABLE = ("all", "layernorm", "head", "svd")


@dataclass
class ModelConfig:
    name: str = "efficientnet_b0"  # any timm model name
    pretrained: str | None = None  # a state dict file (local path or s3://), or `hub`: timm's weights for `name` (train/model/weights.py)
    drop_rate: float = 0.2
    # More keyword arguments for timm.create_model, e.g. {img_size: 128} for a ViT at another input size.
    timm_args: dict = field(default_factory=dict)
    # What trains (train/model/trainable.py): all | layernorm (normalisation layers and the head) | head |
    # svd (a rank-`svd_rank` residual of each linear layer named by `svd_layers`, and the head).
    trainable: str = "all"
    # The classifier's input: the features as they are (linear), or L2-normalised first (l2norm:
    # GenD's head; optim.uniformity_weight and optim.alignment_weight act on those features).
    head: str = "linear"
    svd_rank: int = 1
    # Linear layers given an SVD residual: module names ending with one of these (timm ViTs'
    # attention projections, as Effort adapts CLIP's).
    svd_layers: list[str] = field(default_factory=lambda: ["attn.qkv", "attn.proj"])
    # Layers whose weight stacks several projections, split into that many residuals: timm's fused
    # q/k/v gets three, as Effort adapts CLIP's separate q, k and v.
    svd_parts: dict = field(default_factory=lambda: {"attn.qkv": 3})
    # Effort's orthogonality and singular-value losses (weights of their mean over the SVD layers);
    # off, as in Effort's released code.
    svd_orth_weight: float = 0.0
    svd_keepsv_weight: float = 0.0
    # Train the model through torch.compile (DeepSpeed's engine.compile, inductor): the first step
    # compiles (~40 s for a tiny model on this machine's CPU) and every worker start compiles again;
    # ~30% off the step on CPU (bench/zero_vs_ddp.py, docs/performance.md), not measured on a GPU.
    # Training only: evaluation and scoring run the model as it is.
    compile: bool = False

    def check(self) -> None:
        if self.trainable not in TRAINABLE:
            raise ConfigError(f"model.trainable must be {', '.join(TRAINABLE[:-1])} or {TRAINABLE[-1]}, got {self.trainable!r}")
        if self.head not in ("linear", "l2norm"):
            raise ConfigError(f"model.head must be linear or l2norm, got {self.head!r}")
        if not isinstance(self.svd_parts, dict) or not all(isinstance(n, int) and n >= 1 for n in self.svd_parts.values()):
            raise ConfigError(f"model.svd_parts maps layer names to how many projections each stacks (1 or more), got {self.svd_parts!r}")
        if not isinstance(self.timm_args, dict) or not all(isinstance(k, str) for k in self.timm_args):
            raise ConfigError(f"model.timm_args must be a mapping of timm.create_model's argument names to values, got {self.timm_args!r}")
        # Set elsewhere, or a place to read weights from: a model card (from storage) names its
        # architecture through these, and must not make evaluation read a file of its choosing.
        refused = sorted(k for k in self.timm_args if k in ("num_classes", "drop_rate", "pretrained")
                         or any(w in k for w in ("pretrained", "checkpoint", "cache", "path", "file", "url")))
        if refused:
            raise ConfigError(f"model.timm_args may not set {', '.join(refused)}: the head, dropout and weights come from "
                              "model.drop_rate and model.pretrained")
        # Values are plain settings (sizes, rates, flags, layer names), never a place: no mapping,
        # and no text that could name a file, a URL or a hub.
        for key, value in self.timm_args.items():
            items = value if isinstance(value, (list, tuple)) else [value]
            if not all(v is None or isinstance(v, (bool, int, float)) or (isinstance(v, str) and not set(v) & set("/\\:"))
                       for v in items):
                raise ConfigError(f"model.timm_args.{key}: {value!r} is not a plain setting (a number, a flag, a name "
                                  "without '/', '\\' or ':', or a list of them)")


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.01
    epochs: int = 10
    warmup_steps: int = 50
    grad_clip: float = 1.0
    grad_accum: int = 1
    seed: int = 0
    # After the warm-up: cosine to min_lr over the run (cosine), or restarted every cycle_epochs
    # (cyclic: GenD's cosine annealing with warm restarts), or held at lr (constant).
    schedule: str = "cosine"
    cycle_epochs: int = 10
    min_lr: float = 0.0
    # Binary targets pulled towards 0.5 by this much (the DFDC winner's 0.01): y (1 - s) + s / 2.
    label_smoothing: float = 0.0
    # GenD's metric-learning terms on the L2-normalised features (model.head: l2norm): weights of
    # the uniformity and the label-aware alignment losses (Wang & Isola, 2020); GenD uses 0.5 and 0.1.
    uniformity_weight: float = 0.0
    alignment_weight: float = 0.0

    def check(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"optim.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0.0 <= self.min_lr <= self.lr:
            raise ConfigError(f"optim.min_lr must be between 0 and optim.lr ({self.lr:g}), got {self.min_lr:g}")


SCHEDULES = ("cosine", "cyclic", "constant")
# eval.select: which checkpoint becomes the run's model -> (report metric, best is "max" or "min")
SELECT = {"best_video_auc": ("val_video_auc", "max"), "best_video_ap": ("val_video_ap", "max"),
          "best_video_log_loss": ("val_video_log_loss", "min")}


@dataclass
class DeepSpeedSection:
    zero_stage: int = 2  # 0, 1, 2 or 3
    offload: bool = False  # optimizer state (and parameters at stage 3) in CPU memory; ZeRO 1-3
    # fp32 | bf16 | fp16: bf16 and fp16 run the model under autocast (fp32 weights and BatchNorm
    # statistics; fp16 with a loss scaler).
    precision: str = "fp32"

    def check(self) -> None:
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"deepspeed.precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.offload and self.zero_stage == 0:
            raise ConfigError("deepspeed.offload needs deepspeed.zero_stage 1, 2 or 3 (stage 0 has no ZeRO state to offload)")


@dataclass
class TrackingConfig:
    uri: str | None = None  # MLFLOW_TRACKING_URI if set, else sqlite in $DFDC_HOME
    experiment: str = "dfdc"
    artifacts: str | None = None  # where a new experiment keeps artifacts (default $DFDC_HOME/mlartifacts)
    log_every: int = 10
    system_metrics: bool = True
    parent_run_id: str | None = None  # new runs are nested under this run (a sweep's parent run)
    # A Secrets Manager secret {"username", "password"}: the login of a tracking server with basic
    # auth (the infra stack's MLflow: output MlflowLoginSecret). Each process reads it itself.
    auth_secret: str | None = None
    # Where a registered model's files are copied (models:/NAME/N reads them there): a prefix no
    # lifecycle rule expires, unlike ray.storage_path's runs. Default: models/ beside ray.storage_path.
    registered_models: str | None = None


@dataclass
class EvalConfig:
    clip: float = 1e-15  # probabilities are clipped to [clip, 1 - clip] in log loss
    aggregate: str = "mean"  # frame scores -> video score: mean | median | confident (the DFDC winner's rule) | confident_few_frames
    split: str = "val"  # split evaluated: val | train | test | all
    # Cross-dataset protocol: dataset roots (with manifest.json) to evaluate on as well as the one
    # trained on, e.g. train on DFDC and test on Celeb-DF.
    datasets: list[str] = field(default_factory=list)
    # Dataset root -> the split to evaluate there instead of eval.split, e.g. Celeb-DF's official
    # test list (ingest's `test` split) or `all` for a dataset no training saw.
    splits: dict = field(default_factory=dict)
    # Load TorchScript model files (`dfdc export`'s output). Loading one runs the code inside it, and
    # whoever can write the runs' prefix could put code there: off unless asked (--torchscript).
    torchscript: bool = False
    fit_temperature: bool = True  # after training, fit temperature scaling on the val split and save it with the model
    # Bounds of the fitted temperature: below 1 sharpens, and a val split the model separates
    # perfectly would otherwise push T towards 0 (near-certain scores on unseen videos).
    temperature_range: list[float] = field(default_factory=lambda: [0.5, 20.0])
    batch_size: int = 64
    cpus_per_task: float = 1.0  # Ray tasks that score shards or videos
    gpus_per_task: float = 0.0
    bins: int = 15  # calibration bins (ECE, reliability diagram)
    out: str = "eval"  # local folder for metrics.json and plots (under $DFDC_HOME when relative)
    # The checkpoint that becomes the run's model file: the last one, or the epoch end with the best
    # val metric (best_video_auc | best_video_ap | best_video_log_loss; GenD keeps its best val video AP). Ray
    # keeps ray.num_to_keep checkpoints by that metric, and the latest, for resuming.
    select: str = "last"


@dataclass
class CostConfig:
    # The price table (path or s3://): per instance type, spot and on-demand $/hour, dated.
    # None: cluster/aws/prices.yaml.
    prices: str | None = None
    # None: each node reads its type and market from the EC2 instance metadata. Set it where
    # there is none (the local stack) to charge every node as this type.
    instance_type: str | None = None
    market: str = "spot"  # spot | on_demand: with instance_type

    def check(self) -> None:
        if self.market not in ("spot", "on_demand"):
            raise ConfigError(f"cost.market must be spot or on_demand, got {self.market!r}")


@dataclass
class BudgetConfig:
    # Stop the run (after a checkpoint) once its estimated cost passes this many dollars. None: no limit.
    dollars: float | None = None  # above 0 (RANGES)


@dataclass
class SweepConfig:
    """`dfdc sweep`: the rest of the file is the base recipe every trial starts from."""
    # None: a new sweep with a name of its own (printed); the name of a sweep that has state in
    # ray.storage_path/sweeps/ continues it (finished trials are not run again).
    name: str | None = None
    trials: int = 4
    max_concurrent_trials: int = 2
    metric: str = "val_video_log_loss"  # any metric the training reports at an epoch's end
    mode: str = "min"  # min | max
    scheduler: str = "asha"  # asha (stops bad trials early) | none
    grace_period: int = 1  # ASHA: epochs every trial runs before it may be stopped
    reduction_factor: int = 2  # ASHA: about 1 in this many trials goes on at each rung
    seed: int = 0  # the search's random draws
    # config key -> {choice: [a, b]} | {uniform: [low, high]} | {loguniform: [low, high]} | {randint: [low, high)}
    space: dict = field(default_factory=dict)
    # The best trial's model is registered in MLflow's model registry under this name (None: not registered).
    register_as: str | None = "dfdc-detector"
    # A trial's own process (it only waits on its training's workers) asks for one unit of this Ray
    # resource and no CPU: only nodes that advertise it host trials, and the cluster configs give it
    # to the on-demand head alone, so a reclaimed spot node never takes a trial's process with it.
    trial_host: str = "dfdc_trial_host"
    # Tune starts a failed trial again this many times; it resumes its run from its last checkpoint.
    trial_retries: int = 3

    def check(self) -> None:
        if self.mode not in ("min", "max"):
            raise ConfigError(f"sweep.mode must be min or max, got {self.mode!r}")
        if self.scheduler not in ("asha", "none"):
            raise ConfigError(f"sweep.scheduler must be asha or none, got {self.scheduler!r}")
        for key, spec in self.space.items():
            if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in ("choice", "uniform", "loguniform", "randint")
                    and isinstance(next(iter(spec.values())), list)):
                raise ConfigError(f"sweep.space.{key} must be one of {{choice: [...]}}, {{uniform: [low, high]}}, "
                                  f"{{loguniform: [low, high]}}, {{randint: [low, high]}}; got {spec!r}")
            kind, args = next(iter(spec.items()))
            if kind != "choice" and len(args) != 2:
                raise ConfigError(f"sweep.space.{key}: {kind} takes [low, high], got {args!r}")
            if kind == "choice" and not args:
                raise ConfigError(f"sweep.space.{key}: choice needs at least one value")
            if kind != "choice":  # YAML reads 1e-4 (no dot) as a string
                number = int if kind == "randint" else float
                try:
                    spec[kind] = [number(a) for a in args]
                except (TypeError, ValueError):
                    raise ConfigError(f"sweep.space.{key}: {kind} takes two numbers, got {args!r}") from None
                if not spec[kind][0] < spec[kind][1] or (kind == "loguniform" and spec[kind][0] <= 0):
                    raise ConfigError(f"sweep.space.{key}: {kind} needs low < high (and low > 0 for loguniform), got {args!r}")


@dataclass
class Config:
    ingest: IngestConfig = field(default_factory=IngestConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self, *sections: str, known: dict | None = None) -> str:
        """A short stable hash of some sections, to tell whether two runs used the same settings.
        `known`: the sections as an earlier run recorded them; a key they lack (added to the config
        since) is left out while it holds its default, so upgrading alone does not change the hash."""
        data = {}
        for name in sections:
            section = getattr(self, name)
            values = dataclasses.asdict(section)
            if known is not None and isinstance(known.get(name), dict):
                defaults = dataclasses.asdict(type(section)())
                values = {k: v for k, v in values.items() if k in known[name] or v != defaults[k]}
            data[name] = values
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# The range of every numeric key, checked at load (`check_ranges`): "lo..hi" closed, "[lo, hi)" half
# open, ">= x", "> x". Keys with rules of their own across keys (ray.num_workers, optim.min_lr,
# data.samples_per_epoch's lower bound, ...) also keep those in their section's check().
RANGES = {
    "ingest.frames_per_video": ">= 1", "ingest.faces_per_frame": ">= 1", "ingest.margin": ">= 0", "ingest.crop_size": ">= 1",
    "ingest.jpeg_quality": "1..100", "ingest.shard_bytes": ">= 1", "ingest.key_prefixes": ">= 1", "ingest.val_fraction": "[0, 1)",
    "ingest.seed": ">= 0", "ingest.videos_per_task": ">= 1", "ingest.track_iou": "0..1",
    "detector.batch_size": ">= 1", "detector.max_side": ">= 1", "detector.min_face_size": ">= 1", "detector.min_score": "0..1",
    "synth.videos": ">= 1", "synth.seed": ">= 0", "synth.parts": ">= 1", "synth.fakes_per_real": ">= 0", "synth.identities": ">= 1",
    "synth.width": ">= 16", "synth.height": ">= 16", "synth.fps": ">= 1", "synth.seconds": "> 0", "synth.keyframe_interval": ">= 1",
    "ray.cpus_per_task": ">= 0", "ray.gpus_per_task": ">= 0", "ray.cpus_per_worker": ">= 0", "ray.gpus_per_worker": ">= 0",
    "ray.lock_lease_s": "> 0", "ray.num_to_keep": ">= 1", "ray.checkpoint_every_steps": ">= 0", "ray.max_failures": ">= -1",
    "ray.max_preemption_failures": ">= -1", "ray.elastic_resize_interval_s": "> 0", "ray.interrupt_check_steps": ">= 0",
    "data.image_size": ">= 8", "data.batch_size": ">= 1", "data.num_workers": ">= 0", "data.shuffle_buffer": ">= 0",
    "data.samples_per_epoch": ">= 1", "data.block_samples": ">= 1", "data.window_blocks": ">= 1", "data.streams": ">= 1",
    "data.max_failed_reads": ">= 0", "data.read_retries": ">= 0", "data.slowdown_timeout_s": "> 0", "data.merge_gap_bytes": ">= 0",
    "data.sbi": "0..1", "data.eval_face_margin": "0..1", "data.landmark_cutout": "0..1", "data.diff_cutout": "0..1", "data.hull_cutout": "0..1",
    "model.drop_rate": "[0, 1)", "model.svd_rank": ">= 1", "model.svd_orth_weight": ">= 0", "model.svd_keepsv_weight": ">= 0",
    "optim.lr": "> 0", "optim.weight_decay": ">= 0", "optim.epochs": ">= 1", "optim.warmup_steps": ">= 0", "optim.grad_clip": ">= 0",
    "optim.grad_accum": ">= 1", "optim.seed": ">= 0", "optim.cycle_epochs": ">= 1", "optim.min_lr": ">= 0",
    "optim.label_smoothing": "[0, 1)", "optim.uniformity_weight": ">= 0", "optim.alignment_weight": ">= 0",
    "deepspeed.zero_stage": "0..3", "tracking.log_every": ">= 1",
    "eval.clip": "[0, 0.5)", "eval.batch_size": ">= 1", "eval.cpus_per_task": ">= 0", "eval.gpus_per_task": ">= 0", "eval.bins": ">= 1",
    "budget.dollars": "> 0",
    "sweep.trials": ">= 1", "sweep.max_concurrent_trials": ">= 1", "sweep.grace_period": ">= 1", "sweep.reduction_factor": ">= 2",
    "sweep.seed": ">= 0", "sweep.trial_retries": ">= 0",
}


def _in_range(value: float, rule: str) -> bool:
    if rule.startswith(">= "):
        return value >= float(rule[3:])
    if rule.startswith("> "):
        return value > float(rule[2:])
    if rule.startswith("["):
        low, high = (float(x) for x in rule[1:-1].split(","))
        return low <= value < high
    low, high = (float(x) for x in rule.split(".."))
    return low <= value <= high


def check_ranges(cfg: Config, sources: dict[str, str] | None = None) -> None:
    """Every numeric key within its range (RANGES); the error names the key, the rule, the value and
    where the value came from (`sources`: key -> the file or the --set that gave it)."""
    for key, rule in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is not None and not _in_range(value, rule):
            origin = (sources or {}).get(key)
            shown = f"in [{rule.replace('..', ', ')}]" if ".." in rule else f"in {rule}" if rule[0] == "[" else rule
            raise ConfigError(f"config key {key} must be {shown}, got {value!r}" + (f" (from {origin})" if origin else ""))


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader reading numbers as YAML 1.2 and people do: YAML 1.1 wants a dot in a
    float, so `3e-4` (how timm and Ray users write learning rates) came back as a string."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_yaml(text: str):
    """A YAML document as the project reads every config and price table."""
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506  a SafeLoader: no Python objects


def load_config(path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> Config:
    """The embedded defaults, then the YAML file at `path`, then `key.sub=value` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = load_yaml(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(loaded).__name__}")
        data = loaded or {}
    sources = {f"{section}.{key}": str(path) for section, keys in data.items() if isinstance(keys, dict) for key in keys}
    return with_overrides(data, overrides, sources)


def with_overrides(data: dict, overrides: typing.Iterable[str], sources: dict[str, str] | None = None) -> Config:
    """The config of the mapping `data` (a YAML file's, or Config.to_dict()) with `key.sub=value`
    overrides applied (in place) and every rule checked. `sources`: where each key of `data` came
    from, for the errors (the overrides add theirs)."""
    sources = dict(sources or {})
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = load_yaml(raw) if raw.strip() else None
        sources[key.strip()] = f"--set {item}"
    return config_from_dict(data, sources)


def config_from_dict(data: dict, sources: dict[str, str] | None = None) -> Config:
    cfg = _build(Config, data, "")
    check_ranges(cfg, sources)
    for section in dataclasses.fields(cfg):  # rules across keys, once, at load
        check = getattr(getattr(cfg, section.name), "check", None)
        if check:
            check()
    if cfg.eval.select not in ("last", *SELECT):
        raise ConfigError(f"eval.select must be last or one of {', '.join(SELECT)}, got {cfg.eval.select!r}")
    if (cfg.optim.uniformity_weight or cfg.optim.alignment_weight) and cfg.model.head != "l2norm":
        raise ConfigError("optim.uniformity_weight and optim.alignment_weight act on the L2-normalised features: they need model.head=l2norm")
    if cfg.budget.dollars is not None and not cfg.ray.interrupt_check_steps:
        raise ConfigError("budget.dollars needs ray.interrupt_check_steps above 0: the budget is checked at those steps")
    low, high = cfg.ray.workers()
    if low != high and cfg.data.order == "resampled":
        raise ConfigError(f"ray.num_workers={cfg.ray.num_workers!r} (elastic) needs data.order=blocks or permutation: a restart on "
                          f"another number of workers goes on from the epoch's global position, which a resampled stream lacks")
    if low != high and not cfg.ray.checkpoint_every_steps:
        raise ConfigError(f"ray.num_workers={cfg.ray.num_workers!r} (elastic) needs ray.checkpoint_every_steps above 0: a "
                          "resize restarts the group from the last checkpoint, so without mid-epoch ones it would redo "
                          "the epoch so far")
    if low == high and cfg.data.order == "blocks" and cfg.data.streams % low:
        allowed = [d for d in range(1, cfg.data.streams + 1) if cfg.data.streams % d == 0]
        raise ConfigError(f"ray.num_workers={low} does not divide data.streams={cfg.data.streams}: with data.order=blocks "
                          f"each rank reads whole blocks of its own streams only when the world size divides the stream "
                          f"count (world sizes {', '.join(map(str, allowed))}); change one of them (data.streams is fixed "
                          f"for a run: a resume must use one of those sizes)")
    return cfg


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"config section {where or '<root>'!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        names = ", ".join(f"{where}{k}" for k in unknown)
        raise ConfigError(f"unknown config key(s): {names} (known in {where.rstrip('.') or 'the root'}: {', '.join(sorted(known))})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}{name}")
    return cls(**kwargs)


def _coerce(value, hint, key: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value if value is not None else {}, key + ".")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for option in inner[:-1]:  # the first type the value fits
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
        return _coerce(value, inner[-1], key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key {key} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise ConfigError(f"config key {key} must be {hint.__name__}, got {value!r}")
