"""What every Ray Train worker runs, in the pieces others hook into: `train_step` (bench/ times the
same function), `validate`, `checkpoint_now` and `interrupts` (the places that decide to checkpoint,
agreed by every rank: the schedule, a spot notice, the budget) and `train_func` (epochs of steps,
validation, checkpoints; MLflow and the cost meter on rank 0)."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import Counter

import torch
import torch.distributed as dist

from dfdc import storage
from dfdc.config import Config, OptimConfig, config_from_dict
from data_pipeline import manifest as mf
from train import checkpoint, cost, objective, tracking
from train.checkpoint import TrainState
from train.data.loader import resampled_loader, sbi_gallery_rows, sizes_of_epochs, train_loader, unreadable_total, val_loader
from train.data.ledger import Ledger, start_attempt
from train.data.order import batches_left
from train.data.index import train_set_of
from train.data.workers import fork_server
from train.engine import build_engine, clip_gradients, input_dtype, to_device
from train.evaluation import aggregate, metrics
from train.model import build_model, trainable


def plan_epochs(manifest: dict, cfg: Config, world: int, sizes: list[int] | None = None) -> tuple[int, float | None]:
    """Batches per rank in the shortest epoch (`sizes`: samples in each epoch of the run; by default
    one pass over every train sample; in whole optimizer steps: an epoch, and its checkpoint, never
    ends inside a gradient accumulation), and the fake-class loss weight that balances real and fake
    (None when not balancing), counting the expected self-blended pseudo-fakes (data.sbi) as fakes."""
    train = manifest["splits"].get("train")
    if not train or not train["samples"]:
        raise ValueError(f"dataset {cfg.data.dataset} has no train samples")
    shortest = min(sizes) if sizes else train["samples"]
    batches = batches_left(shortest, 0, cfg.data.batch_size, world, cfg.optim.grad_accum)
    if not batches:
        raise ValueError(f"dataset {cfg.data.dataset} has {shortest} train samples in an epoch, fewer than one optimizer step "
                         f"takes (data.batch_size x ray.num_workers x optim.grad_accum = "
                         f"{cfg.data.batch_size * world * cfg.optim.grad_accum})"
                         + (f" (data.samples_per_epoch={cfg.data.samples_per_epoch})" if cfg.data.samples_per_epoch else ""))
    # A real crop drawn for SBI trains as itself (its real counterpart) and its pseudo-fake.
    real, fake = train["real"], (train["fake"] if cfg.data.fakes else 0) + train["real"] * cfg.data.sbi
    if cfg.data.balance == "loss":
        pos_weight = real / max(1.0, fake)
    elif cfg.data.balance == "none":
        pos_weight = None
    else:
        raise ValueError(f"data.balance must be 'loss' or 'none', got {cfg.data.balance!r}")
    return batches, pos_weight


def planned_steps(sizes: list[int] | int, cfg: Config, world: int, saved: TrainState | None) -> int:
    """Optimizer steps of the whole run, for the learning-rate schedule: the steps a resumed run
    already took (at whatever world size) plus those left at this world size. The scheduler's step
    count comes back from the checkpoint, so after a change of world size the cosine still ends at
    the last step. `sizes`: samples in each epoch of the run (an int: the same in every epoch)."""
    accum = cfg.optim.grad_accum
    sizes = [sizes] * cfg.optim.epochs if isinstance(sizes, int) else sizes
    first, position, done = (saved.epoch, saved.position, saved.step // accum) if saved else (0, 0, 0)
    left = sum(batches_left(sizes[e], position if e == first else 0, cfg.data.batch_size, world, accum) // accum
               for e in range(first, cfg.optim.epochs))
    return max(1, done + left)


def train_step(engine, images: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor | None = None,
               optim: OptimConfig | None = None) -> torch.Tensor:
    """One micro-batch: forward, loss (train/objective.py; `optim` adds a recipe's terms), backward,
    and the gradients clipped (train/engine.py: here at ZeRO-0, else by DeepSpeed) and the optimizer
    step once `optim.grad_accum` micro-batches are in. Inputs already on the
    engine's device (engine.to_device). Returns the loss as a device tensor: reading it waits for the
    accelerator, so callers read it only now and then."""
    logits = engine(images).squeeze(1).float()
    loss = objective.loss(logits, labels, engine.module, optim, pos_weight)
    engine.backward(loss)
    clip_gradients(engine)
    engine.step()
    return loss.detach()


def checkpoint_now(state: TrainState, last: bool, cfg: Config) -> bool:
    """Whether every rank checkpoints after this step by the schedule (`ray.checkpoint_every_steps`,
    the same on every rank); epoch ends always checkpoint, and so do interrupts (`interrupts`)."""
    every = cfg.ray.checkpoint_every_steps * cfg.optim.grad_accum
    return bool(every) and state.step % every == 0 and not last  # `last`: the epoch's end checkpoints anyway


def interrupts(state: TrainState, cfg: Config, meter: cost.Meter | None, device):
    """Every `ray.interrupt_check_steps` optimizer steps, on every rank: (Ray Train's preemption
    info or None, whether the run's cost passed `budget.dollars`). Ray Train agrees the first for
    all ranks (a spot notice drained one node: cluster/spot.py); rank 0 alone keeps the meter, so a
    MAX all-reduce makes its answer every rank's. Saving is collective: both must be the same everywhere."""
    every = cfg.ray.interrupt_check_steps * cfg.optim.grad_accum
    if not every or state.step % every:
        return None, False
    import ray.train  # noqa: PLC0415

    notice = ray.train.get_preemption_info()
    if cfg.budget.dollars is None:
        return notice, False
    flag = torch.tensor([int(meter is not None and meter.over(cfg.budget.dollars))], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return notice, bool(flag.item())


def sync_buffers(module: torch.nn.Module) -> None:
    """Average every rank's buffers (timm's `--dist-bn reduce`). DeepSpeed, unlike DDP, does not
    sync buffers after start-up, so each rank's BatchNorm running statistics drift with its own
    batches; then ranks validate with different models and the checkpoint (rank 0's buffers) is not
    the model that was validated. Called before each validation and checkpoint."""
    world = dist.get_world_size()
    for buf in module.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(world)
        else:  # counters such as num_batches_tracked: equal on every rank anyway
            dist.broadcast(buf, 0)


def validate(engine, shards: dict[str, int], cfg: Config, rank: int, world: int, crop_margin: float = 0.3) -> dict[str, float]:
    """Video-level log loss and AUC on the val split, the same on every rank, and how many val
    shards (and samples) could not be read: each shard's samples are counted against the manifest's
    `shards` ({url: samples}). Ranks with fewer batches run dummy ones, so that every collective
    (ZeRO-3 gathers parameters in forward) is matched on all ranks."""
    engine.eval()
    device = engine.device
    dummy = torch.zeros(1, 3, cfg.data.image_size, cfg.data.image_size, device=device, dtype=input_dtype(engine))
    videos, labels, probs, seen = [], [], [], Counter()
    it = iter(val_loader(list(shards), cfg.data, rank, world, pin_memory=device.type == "cuda", crop_margin=crop_margin))
    with torch.no_grad():
        while True:
            batch = next(it, None)
            more = torch.tensor([int(batch is not None)], device=device)
            dist.all_reduce(more, op=dist.ReduceOp.MAX)
            if not more.item():
                break
            images = to_device(batch.images, batch.labels, engine)[0] if batch is not None else dummy
            p = torch.sigmoid(engine(images).squeeze(1).float()).cpu()
            if batch is not None:
                videos += batch.videos
                labels += batch.labels.int().tolist()
                probs += p.tolist()
                seen.update(batch.shards)
    gathered = [None] * world
    dist.all_gather_object(gathered, (videos, labels, probs, dict(seen)))
    videos = [v for g in gathered for v in g[0]]
    labels = [y for g in gathered for y in g[1]]
    probs = [p for g in gathered for p in g[2]]
    seen = sum((Counter(g[3]) for g in gathered), Counter())
    short = {url: n - seen[url] for url, n in shards.items() if seen[url] < n}
    out = val_metrics(videos, labels, probs, cfg.eval.aggregate, cfg.eval.clip) if videos else {}
    return out | {"unreadable_shards": float(len(short)), "missing_samples": float(sum(short.values()))}


def val_metrics(videos: list[str], labels: list[int], probs: list[float], rule: str, clip: float) -> dict[str, float]:
    scores = aggregate.by_video(videos, probs, rule)
    label_of = dict(zip(videos, labels))
    y, p = [label_of[v] for v in scores], list(scores.values())
    return {
        "frame_log_loss": metrics.log_loss(labels, probs, clip),
        "frame_auc": metrics.roc_auc(labels, probs),
        "video_log_loss": metrics.log_loss(y, p, clip),
        "video_auc": metrics.roc_auc(y, p),
        "video_ap": metrics.average_precision(y, p),
        "videos": float(len(y)),
    }


def _use_device() -> None:
    """On GPU workers, the GPU Ray Train gave this rank (NCCL and all_gather_object use the current device)."""
    if torch.cuda.is_available():
        import ray.train.torch  # noqa: PLC0415

        torch.cuda.set_device(ray.train.torch.get_device())


def train_func(config: dict) -> None:
    import ray.train  # noqa: PLC0415

    cfg = config_from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    _use_device()
    if cfg.data.num_workers:
        fork_server()  # its imports overlap DeepSpeed's start instead of delaying the first batch
    torch.manual_seed(cfg.optim.seed)
    torch.set_num_threads(max(1, int(cfg.ray.cpus_per_worker)))

    manifest = mf.load(cfg.data.dataset)
    train_urls = mf.shard_urls(cfg.data.dataset, manifest, "train")
    counts = [s["samples"] for s in manifest["shards"] if s["split"] == "train"]
    train_set = (train_set_of(cfg.data.dataset, manifest, cfg.data.pairing, cfg.data.fakes, cfg.data.index_cache) if cfg.data.order != "resampled"
                 else None)
    samples = train_set.samples if train_set else sum(counts)  # in a pass
    # Samples in each epoch: a pass, or with data.samples_per_epoch its part (train/data/order.py)
    epoch_samples = (sizes_of_epochs(train_set, cfg.data, cfg.optim.seed, range(cfg.optim.epochs)) if train_set
                     else [min(samples, cfg.data.samples_per_epoch or samples)] * cfg.optim.epochs)
    val_shards = {storage.child(cfg.data.dataset, s["url"]): s["samples"] for s in manifest["shards"] if s["split"] == "val"}
    batches, pos_weight = plan_epochs(manifest, cfg, world, epoch_samples)
    global_batch = cfg.data.batch_size * world

    digest = mf.digest(manifest)
    found = checkpoint.find(cfg, world, digest)  # before the engine: a checkpoint of another world size changes its config
    total_steps = planned_steps(epoch_samples, cfg, world, found.state if found else None)
    model = build_model(cfg.model)
    sizes = trainable.counts(model)  # before the engine: ZeRO-3 partitions the parameters
    engine, ds_config = build_engine(model, cfg, world, total_steps, universal=found is not None and found.universal)
    torch.manual_seed(cfg.optim.seed * 1_000_003 + rank)  # the same init everywhere; from here on, per rank
    device = engine.device
    weight = torch.tensor(pos_weight, device=device) if pos_weight is not None else None

    resumed = checkpoint.load(engine, found, cfg) if found else None
    state, reload = resumed if resumed else (TrainState(), None)
    if found and not found.recorded and state.epoch >= cfg.optim.epochs:
        # Nothing left to train: the run's last checkpoint is in its folder but not in Ray Train's
        # record (the controller was lost first). Without a report the run's result would be the
        # record's older checkpoint (a resume of a finished run in the elastic test ended so).
        checkpoint.report_again(found, rank)
        return
    saved_world = state.world_size
    state.config, state.world_size = tracking.loggable(cfg), world  # only changes check_resume allows
    state.dataset_digest, state.dataset_samples = digest, samples
    ledger = _open_ledger(cfg, rank, world, state, reload) if cfg.data.ledger else None
    meter = _meter(cfg, config.get("driver_node"), state, rank, world)
    noticed = None  # the preemption this attempt already checkpointed for
    run = tracking.open_run(cfg, run_id=state.mlflow_run_id, name=cfg.ray.run_name, system_metrics=cfg.tracking.system_metrics)
    with run if rank == 0 else contextlib.nullcontext() as active:
        if rank == 0:
            _log_start(active, state, reload, saved_world, world, cfg, ds_config, sizes)
            if cfg.data.sbi and not reload:
                _log_sbi_gallery(train_set, cfg)
        first = True
        pin = device.type == "cuda"
        # One stream of batches for every epoch left: its loader workers read the next epoch while this one validates.
        stream = iter(train_loader(train_set, cfg.data, cfg.optim.seed, state.epoch, state.position, cfg.optim.epochs, rank,
                                   world, cfg.optim.grad_accum, pin_memory=pin, sizes=epoch_samples)) if train_set else None
        for epoch in range(state.epoch, cfg.optim.epochs):
            start = state.position if epoch == state.epoch else 0
            state.epoch, state.position = epoch, start
            batches = batches_left(epoch_samples[epoch], start, cfg.data.batch_size, world, cfg.optim.grad_accum)
            if ledger:  # an attempt that loaded a checkpoint says where it took the epoch up
                ledger.begin_epoch(epoch, resumed_from=start if first and reload else None)
            first = False
            loader = (itertools.islice(stream, batches) if stream else
                      resampled_loader(train_urls, cfg.data, batches, cfg.optim.seed, epoch * 100_003 + start, rank, pin_memory=pin))
            engine.train()
            window, epoch_loss = _Window(), torch.zeros((), device=device)
            skipped: dict[int, int] = {}
            for done, batch in enumerate(loader, start=1):
                if train_set and batch.position != state.position + rank * cfg.data.batch_size:
                    raise RuntimeError(f"rank {rank} got the batch at position {batch.position} of epoch {epoch}, expected "
                                       f"{state.position + rank * cfg.data.batch_size}: the loader's order is broken")
                window.got_batch()
                images, labels = to_device(batch.images, batch.labels, engine)
                loss = train_step(engine, images, labels, weight, cfg.optim)
                window.add(loss)
                epoch_loss += loss
                state.step += 1
                state.position += global_batch
                window.step_done()
                if ledger:
                    ledger.add(batch.position, batch.keys, batch.skipped)
                unreadable = unreadable_total(skipped, batch)  # this epoch's skipped reads on this rank
                if rank == 0 and state.step % cfg.tracking.log_every == 0:
                    tracking.log_metrics(window.flush(global_batch) | meter.metrics() | {
                        "lr": engine.get_lr()[0], "train_unreadable_reads": unreadable}, step=state.step)
                notice, over_budget = interrupts(state, cfg, meter, device)
                fresh = notice is not None and notice != noticed
                if checkpoint_now(state, done == batches, cfg) or fresh or over_budget:
                    seen = time.time()
                    sync_buffers(engine.module)
                    if ledger:
                        ledger.flush()  # before the checkpoint: every batch before its position is on record
                    report = {"epoch": epoch, "step": state.step, "position": state.position,
                              "train_loss": float(epoch_loss) / done, **_cost(meter, state), **_unscored(cfg),
                              **({"budget_stopped": 1.0} if over_budget else {})}
                    checkpoint.save(engine, state, report, rank, cfg.data.image_size)
                    window.restart()
                    if fresh:
                        noticed = notice
                        if rank == 0:
                            _log_preemption(notice, seen, state.step)
                    if over_budget:
                        if rank == 0:
                            _log_budget_stop(meter, cfg, state.step)
                        return
            if ledger:
                ledger.flush()
            sync_buffers(engine.module)
            val = validate(engine, val_shards, cfg, rank, world, mf.crop_margin(manifest))
            state.epoch, state.position = epoch + 1, 0
            report = {"epoch": epoch + 1, "step": state.step, "position": 0,
                      "train_loss": float(epoch_loss) / batches if batches else float("nan"),
                      "train_unreadable_reads": float(sum(skipped.values())), **{f"val_{k}": v for k, v in val.items()},
                      **_cost(meter, state)}
            if rank == 0:
                tracking.log_metrics({f"val_{k}": v for k, v in val.items()} | {"epoch": epoch + 1}, step=state.step)
                _print_epoch(report, cfg, val)
            checkpoint.save(engine, state, report, rank, cfg.data.image_size)
        if rank == 0:
            tracking.log_metrics(meter.metrics(), step=state.step)
            tracking.set_tags({"dfdc.cost": meter.summary()})


def _unscored(cfg: Config) -> dict[str, float]:
    """A mid-epoch checkpoint has no val metric: NaN for the one eval.select ranks checkpoints by, so
    that Ray ranks it below every epoch end (and logs no missing key)."""
    from dfdc.config import SELECT  # noqa: PLC0415

    return {SELECT[cfg.eval.select][0]: float("nan")} if cfg.eval.select in SELECT else {}


def _meter(cfg: Config, driver: dict | None, state: TrainState, rank: int, world: int) -> cost.Meter | None:
    """Rank 0's cost meter over the nodes of every rank and of the driver (collective: each rank
    names its node); other ranks get None."""
    import ray  # noqa: PLC0415

    here = cost.identify(ray.get_runtime_context().get_node_id(), cfg.cost.instance_type, cfg.cost.market)
    nodes = [None] * world
    dist.all_gather_object(nodes, here)
    if rank != 0:
        return None
    if driver:
        nodes.append(cost.Node(**driver))
    return cost.Meter(nodes, world * cfg.ray.gpus_per_worker, cost.load_prices(cfg.cost.prices), saved=state.cost,
                      budget=cfg.budget.dollars)


def _cost(meter: cost.Meter | None, state: TrainState) -> dict[str, float]:
    """Rank 0, at a checkpoint: the cost so far, as MLflow metrics (a sweep's budget reads the last
    ones), as report metrics, and into the state the checkpoint saves."""
    if meter is None:
        return {}
    state.cost = meter.totals()
    tracking.log_metrics(meter.metrics(), step=state.step)
    return meter.metrics()


def _log_preemption(notice, seen: float, step: int) -> None:
    """Rank 0, after the checkpoint a preemption notice asked for: how long it took and how much
    time was left, as metrics and a tag, so the run's page in MLflow shows the preemption."""
    took = time.time() - seen
    left = notice.deadline_ms / 1000 - time.time() if notice.deadline_ms else float("nan")
    tracking.log_metrics({"preemption_checkpoint_s": took, "preemption_deadline_margin_s": left}, step=step)
    line = (f"node(s) {', '.join(notice.preempted_node_ids)} (ranks {notice.preempted_ranks}) being preempted; "
            f"checkpoint at step {step} took {took:.1f} s" + (f", {left:.0f} s before the deadline" if notice.deadline_ms else ""))
    tracking.set_tags({f"dfdc.preemption.step_{step}": line})
    print(f"preemption notice: {line}", flush=True)


def _log_budget_stop(meter: cost.Meter, cfg: Config, step: int) -> None:
    line = f"budget.dollars={cfg.budget.dollars:g} passed at step {step}: {meter.summary()}; stopped after a checkpoint"
    tracking.set_tags({"dfdc.stopped": "budget", "dfdc.cost": meter.summary()})
    print(line, flush=True)


def _open_ledger(cfg: Config, rank: int, world: int, state: TrainState, reload: dict | None) -> Ledger:
    """Number this start of the run on rank 0 and tell every rank."""
    info = [None]
    if rank == 0:
        info[0] = start_attempt(checkpoint.run_uri(cfg), {
            "world_size": world, "batch_size": cfg.data.batch_size, "grad_accum": cfg.optim.grad_accum,
            "seed": cfg.optim.seed, "dataset": cfg.data.dataset, "fakes": cfg.data.fakes, "pairing": cfg.data.pairing,
            "order": cfg.data.order, "block_samples": cfg.data.block_samples, "window_blocks": cfg.data.window_blocks,
            "streams": cfg.data.streams, "samples_per_epoch": cfg.data.samples_per_epoch, "epoch": state.epoch,
            "position": state.position,
            "resumed_from": reload["resumed_from"] if reload else None})
    dist.broadcast_object_list(info, src=0)
    return Ledger(checkpoint.run_uri(cfg), info[0], rank)


class _Window:
    """Loss and time spent waiting for data vs. stepping, over the steps since the last log line."""

    def __init__(self):
        self.restart()

    def restart(self) -> None:
        self.loss, self.steps, self.wait, self.busy = 0.0, 0, 0.0, 0.0
        self.t_end = time.perf_counter()

    def got_batch(self) -> None:
        self.t_got = time.perf_counter()
        self.wait += self.t_got - self.t_end

    def add(self, loss: torch.Tensor) -> None:
        self.loss = loss + self.loss  # stays on the device until flushed
        self.steps += 1

    def step_done(self) -> None:
        self.t_end = time.perf_counter()
        self.busy += self.t_end - self.t_got

    def flush(self, samples_per_step: int) -> dict[str, float]:
        wall = max(1e-9, self.wait + self.busy)
        out = {"train_loss": float(self.loss) / max(1, self.steps), "samples_per_s": samples_per_step * self.steps / wall,
               "data_wait_fraction": self.wait / wall}
        self.restart()
        return out


def _log_sbi_gallery(train_set, cfg: Config) -> None:
    """A grid of the first self-blended pseudo-fakes (original, mask, result), so that a person can
    see what the detector learns from."""
    import mlflow  # noqa: PLC0415

    from train.data.sbi import gallery  # noqa: PLC0415

    rows = sbi_gallery_rows(train_set, cfg.data, cfg.optim.seed)
    if rows:
        mlflow.log_image(gallery(rows), artifact_file="sbi_gallery.png")
    print(f"data.sbi={cfg.data.sbi}: {len(rows)} self-blended samples of epoch 0 logged to MLflow as sbi_gallery.png", flush=True)


def _log_start(active, state: TrainState, reload: dict | None, saved_world: int, world: int, cfg: Config, ds_config: dict,
               sizes: dict[str, int]) -> None:
    import mlflow  # noqa: PLC0415

    if state.mlflow_run_id is None:  # a new run
        mlflow.log_params(tracking.flat(tracking.loggable(cfg)) | sizes)
        print(f"model {cfg.model.name}: {sizes['trainable_params']:,} of {sizes['total_params']:,} parameters train "
              f"(model.trainable={cfg.model.trainable})", flush=True)
        mlflow.log_dict(tracking.loggable(cfg), "config.json")
        mlflow.log_dict(ds_config, "deepspeed_config.json")
    state.mlflow_run_id = active.info.run_id
    if reload:
        tracking.log_metrics({"resumed_at_step": state.step, "resumed_at_position": state.position,
                              "resumed_from_world_size": saved_world, "resumed_on_world_size": world,
                              "reload_max_abs_diff": reload["reload_max_abs_diff"]}, step=state.step)
        if reload.get("converted"):
            how = ("converted it once (rank 0), stored beside the checkpoints" if reload.get("converted_here")
                   else "reused its conversion stored beside the checkpoints")
            mlflow.set_tag(f"resumed_at_step_{state.step}", f"a {saved_world}-rank checkpoint in DeepSpeed's universal format, "
                                                            f"loaded on {world} ranks: {how}")
        print(f"resumed from {reload['resumed_from']} at epoch {state.epoch}, position {state.position}, step {state.step}"
              f"{f' (written by {saved_world} ranks, now {world})' if saved_world != world else ''}", flush=True)


def _print_epoch(report: dict, cfg: Config, val: dict) -> None:
    unreadable = f", {val['unreadable_shards']:.0f} val shards unreadable ({val['missing_samples']:.0f} samples)" \
        if val.get("unreadable_shards") else ""
    if report["train_unreadable_reads"]:
        unreadable += f", {report['train_unreadable_reads']:.0f} unreadable train reads skipped (rank 0)"
    print(f"epoch {report['epoch']}/{cfg.optim.epochs}: step {report['step']}, train loss {report['train_loss']:.4f}, "
          f"val video log loss {val.get('video_log_loss', float('nan')):.4f}, "
          f"val video AUC {val.get('video_auc', float('nan')):.4f}{unreadable}", flush=True)
