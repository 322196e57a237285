"""The function every Ray Train worker runs: data, model, DeepSpeed engine, steps, validation,
checkpoints, MLflow (rank 0)."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from dfdc.config import Config, config_from_dict
from data_pipeline import manifest as mf
from train import aggregate, checkpoint, metrics, tracking
from train.data import train_loader, val_loader
from train.engine import build_engine
from train.model import build_model


def plan_epochs(manifest: dict, cfg: Config, world: int) -> tuple[int, float | None]:
    """Batches per rank per epoch (one pass over the train samples in all), and the fake-class
    loss weight that balances real and fake (None when not balancing)."""
    train = manifest["splits"].get("train")
    if not train or not train["samples"]:
        raise ValueError(f"dataset {cfg.data.dataset} has no train samples")
    batches = max(1, train["samples"] // (cfg.data.batch_size * world))
    if cfg.data.balance == "loss":
        pos_weight = train["real"] / max(1, train["fake"])
    elif cfg.data.balance == "none":
        pos_weight = None
    else:
        raise ValueError(f"data.balance must be 'loss' or 'none', got {cfg.data.balance!r}")
    return batches, pos_weight


def train_func(config: dict) -> None:
    import ray.train  # noqa: PLC0415

    cfg = config_from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.optim.seed)
    torch.set_num_threads(max(1, int(cfg.ray.cpus_per_worker)))

    manifest = mf.load(cfg.data.dataset)
    train_urls = mf.shard_urls(cfg.data.dataset, manifest, "train")
    val_urls = mf.shard_urls(cfg.data.dataset, manifest, "val")
    batches, pos_weight = plan_epochs(manifest, cfg, world)
    total_steps = max(1, batches * cfg.optim.epochs // cfg.optim.grad_accum)

    engine, ds_config = build_engine(build_model(cfg.model), cfg, world, total_steps)
    device = engine.device
    weight = torch.tensor(pos_weight, device=device) if pos_weight is not None else None

    state = checkpoint.load(engine, cfg.data.image_size) or {"epoch": 0, "batch_in_epoch": 0, "step": 0, "samples_per_rank": 0, "mlflow_run_id": None}
    run_id = None
    if rank == 0:
        import mlflow  # noqa: PLC0415

        run_id = tracking.start(cfg, state["mlflow_run_id"])
        if state["mlflow_run_id"] is None:
            mlflow.log_dict(cfg.to_dict(), "config.json")
            mlflow.log_dict(ds_config, "deepspeed_config.json")
        if "reload_max_abs_diff" in state:
            mlflow.log_metrics({"resumed_at_step": state["step"], "resumed_at_batch_in_epoch": state["batch_in_epoch"],
                                "reload_max_abs_diff": state["reload_max_abs_diff"]}, step=state["step"])
            print(f"resumed from {state['resumed_from']} at epoch {state['epoch']}, batch {state['batch_in_epoch']}, step {state['step']}", flush=True)

    step, samples = state["step"], state["samples_per_rank"]
    for epoch in range(state["epoch"], cfg.optim.epochs):
        start = state["batch_in_epoch"] if epoch == state["epoch"] else 0
        loader = train_loader(train_urls, cfg.data, batches - start, cfg.optim.seed, epoch * 100_003 + start, rank)
        engine.train()
        wait = busy = 0.0
        losses = []
        t_end = time.perf_counter()
        every = cfg.ray.checkpoint_every_steps * cfg.optim.grad_accum
        for done, (images, labels, _) in enumerate(loader, start=start + 1):
            t_got = time.perf_counter()
            logits = engine(images.to(device)).squeeze(1)
            loss = F.binary_cross_entropy_with_logits(logits, labels.to(device), pos_weight=weight)
            engine.backward(loss)
            engine.step()
            step += 1
            samples += len(labels)
            losses.append(loss.item())
            now = time.perf_counter()
            wait += t_got - t_end
            busy += now - t_got
            t_end = now
            if rank == 0 and step % cfg.tracking.log_every == 0:
                mlflow.log_metrics({
                    "train_loss": float(np.mean(losses[-cfg.tracking.log_every:])),
                    "lr": engine.get_lr()[0],
                    "samples_per_s": cfg.data.batch_size * world * cfg.tracking.log_every / max(1e-9, wait + busy),
                    "data_wait_fraction": wait / max(1e-9, wait + busy),
                }, step=step)
                wait = busy = 0.0
            if every and step % every == 0 and done < batches:
                sync_buffers(engine.module)
                # Mid-epoch: the loader's position is the batches this epoch has taken on every rank.
                position = {"epoch": epoch, "batch_in_epoch": done, "step": step, "samples_per_rank": samples,
                            "mlflow_run_id": run_id, "config": cfg.to_dict()}
                report = {"epoch": epoch, "step": step, "train_loss": float(np.mean(losses))}
                checkpoint.save(engine, position, report, rank, cfg.data.image_size)
                t_end = time.perf_counter()
        sync_buffers(engine.module)
        val = evaluate(engine, val_urls, cfg, rank, world)
        state = {"epoch": epoch + 1, "batch_in_epoch": 0, "step": step, "samples_per_rank": samples,
                 "mlflow_run_id": run_id, "config": cfg.to_dict()}
        report = {"epoch": epoch + 1, "step": step, "train_loss": float(np.mean(losses)) if losses else float("nan"), **val}
        if rank == 0:
            mlflow.log_metrics({f"val_{k}": v for k, v in val.items()} | {"epoch": epoch + 1}, step=step)
            print(f"epoch {epoch + 1}/{cfg.optim.epochs}: step {step}, train loss {report['train_loss']:.4f}, "
                  f"val video log loss {val.get('video_log_loss', float('nan')):.4f}, val video AUC {val.get('video_auc', float('nan')):.4f}",
                  flush=True)
        checkpoint.save(engine, state, report, rank, cfg.data.image_size)
    if rank == 0:
        mlflow.end_run()


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


def evaluate(engine, urls: list[str], cfg: Config, rank: int, world: int) -> dict[str, float]:
    """Frame probabilities on the val split, gathered on every rank; video-level log loss and AUC.
    Ranks with fewer val batches run dummy batches so that every collective (ZeRO-3 gathers
    parameters in forward) is matched on all ranks."""
    engine.eval()
    size = cfg.data.image_size
    videos, labels, probs = [], [], []
    it = iter(val_loader(urls, cfg.data, rank, world))
    with torch.no_grad():
        while True:
            batch = next(it, None)
            more = torch.tensor([0 if batch is None else 1])
            dist.all_reduce(more, op=dist.ReduceOp.MAX)
            if not more.item():
                break
            images = batch[0] if batch is not None else torch.zeros(1, 3, size, size)
            p = torch.sigmoid(engine(images.to(engine.device)).squeeze(1).float()).cpu()
            if batch is not None:
                videos += batch[2]
                labels += batch[1].int().tolist()
                probs += p.tolist()
    gathered = [None] * world
    dist.all_gather_object(gathered, (videos, labels, probs))
    videos = [v for g in gathered for v in g[0]]
    labels = [y for g in gathered for y in g[1]]
    probs = [p for g in gathered for p in g[2]]
    if not videos:
        return {}
    return val_metrics(videos, labels, probs, cfg.eval.aggregate, cfg.eval.clip)


def val_metrics(videos: list[str], labels: list[int], probs: list[float], rule: str, clip: float) -> dict[str, float]:
    scores = aggregate.by_video(videos, probs, rule)
    label_of = dict(zip(videos, labels))
    y, p = [label_of[v] for v in scores], list(scores.values())
    return {
        "frame_log_loss": metrics.log_loss(labels, probs, clip),
        "frame_auc": metrics.roc_auc(labels, probs),
        "video_log_loss": metrics.log_loss(y, p, clip),
        "video_auc": metrics.roc_auc(y, p),
        "videos": float(len(y)),
    }
