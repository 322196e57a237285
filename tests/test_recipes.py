"""The detection recipes' parts on real services: paired batches and self-blended pseudo-fakes from
the loader (S3 server), and frozen encoders trained through Ray Train + DeepSpeed, checked on the
consolidated model against the initial weights. Tiny ViT, random init."""

from __future__ import annotations

from collections import Counter

import mlflow
import numpy as np
import torch

from data_pipeline import manifest as mf
from data_pipeline import shard_index
from dfdc.config import DataConfig
from tests.test_train import load_fp32, train_cfg
from train.data import ledger
from train.data.loader import epoch_loader, sbi_gallery_rows
from train.model import build_model
from train.model.file import read_card
from train.data.order import batches_left
from train.run import run
from train.data.index import train_set_of


def index_rows(dataset: str) -> dict[str, list]:
    m = mf.load(dataset)
    return {row[0]: row for url in mf.shard_urls(dataset, m, "train") for row in shard_index.read(url)}


def pair_key(row: list) -> str:
    return f"{row[4]}/{row[0].rsplit('/', 1)[-1]}"


def one_epoch(train, cfg: DataConfig, world: int, seed: int = 0) -> list:
    n = batches_left(train.samples, 0, cfg.batch_size, world)
    return sorted((b for r in range(world) for b in epoch_loader(train, cfg, seed, 0, 0, n, r, world)), key=lambda b: b.position)


def test_paired_batches_hold_each_real_crop_with_the_crops_of_its_fakes(shards):
    rows = index_rows(shards)
    size = Counter(pair_key(r) for r in rows.values())
    assert any(n > 1 and {rows[k][3] for k in rows if pair_key(rows[k]) == p} == {0, 1} for p, n in size.items()), \
        "the corpus has real crops with fakes of the same frame"
    train = train_set_of(shards, pairing="video")
    cfg = DataConfig(image_size=32, batch_size=6, num_workers=1, augment=False, pairing="video")
    batches = one_epoch(train, cfg, world=2)
    keys = [k for b in batches for k in b.keys]
    assert len(keys) == len(set(keys)) and len(rows) - len(keys) < 12  # every sample once, but the remainder
    for b in batches:
        units = [pair_key(rows[k]) for k in b.keys]
        inner = [u for u in dict.fromkeys(units)][1:-1]  # only the batch's first and last unit may be cut
        assert all(units.count(u) == size[u] for u in inner), units
        for u in inner:  # a whole unit: the real crop and the fakes made from its video, same frame and face
            assert sorted(int(y) for y, k in zip(b.labels, b.keys) if pair_key(rows[k]) == u) == \
                sorted(rows[k][3] for k in rows if pair_key(rows[k]) == u)


def _with_and_without(train, **cut) -> tuple[dict, dict, set]:
    """One epoch's images by key without augmentation, plain (world size 1) and with the settings
    `cut` (world sizes 1 and 2, which must give the same images), and the keys all three hold."""
    plain = DataConfig(image_size=64, batch_size=4, num_workers=1, augment=False)
    with_cut = DataConfig(image_size=64, batch_size=4, num_workers=1, augment=False, **cut)
    before = {k: im for b in one_epoch(train, plain, 1) for k, im in zip(b.keys, b.images)}
    after = {w: {k: im for b in one_epoch(train, with_cut, w) for k, im in zip(b.keys, b.images)} for w in (1, 2)}
    shared = before.keys() & after[1].keys() & after[2].keys()
    assert len(shared) > 20 and all(torch.equal(after[1][k], after[2][k]) for k in shared)
    return before, after, shared


def test_the_winners_landmark_cutout_blacks_out_a_part_of_most_train_crops(shards):
    """data.landmark_cutout: 1.0 on crops that carry MTCNN's landmarks: 7 in 8 lose a band to black,
    the rest of each crop untouched; the draw is the sample's own (the same at any world size)."""
    before, after, shared = _with_and_without(train_set_of(shards), landmark_cutout=1.0)
    changed = [k for k in shared if not torch.equal(before[k], after[1][k])]
    assert 0.7 < len(changed) / len(shared) < 1.0, (len(changed), len(shared))
    for k in changed:
        differs = (before[k] != after[1][k]).any(0)
        assert (after[1][k][:, differs] == 0).all() and 0.01 < differs.float().mean() < 0.3


def test_the_winners_diff_cutout_keeps_part_of_each_fakes_difference(shards, tmp_path):
    """Ingested with ingest.difference_masks (the session's corpus): each fake crop cut with its
    original's boxes carries where it differs (`diff_kept`), no real crop does. data.diff_cutout=1.0:
    every real crop keeps one of the six parts and loses the rest to black; a fake is cut only to a
    part that holds more than 20 px of its difference; the same at any world size."""
    from data_pipeline.diffs import keeps
    from tests.test_ingest import read_samples

    meta = {s["key"]: s for s in read_samples(shards, mf.load(shards), tmp_path)}
    fakes = [m for m in meta.values() if m["label"] == 1]
    assert fakes and all(len(m["diff_kept"]) == 6 for m in fakes) and not any("diff_kept" in m for m in meta.values() if m["label"] == 0)
    assert sum(max(m["diff_kept"]) > 20 for m in fakes) > 0.9 * len(fakes)  # the swapped face differs from its original
    before, after, shared = _with_and_without(train_set_of(shards), diff_cutout=1.0)
    parts = torch.from_numpy(keeps(64, 64))
    cut_fakes = 0
    for k in shared:
        black = (after[1][k] != before[k]).any(0)  # the crop's own black pixels may stay as they were
        if not black.any():
            assert meta[k]["label"] == 1, k  # a real crop is always cut
            continue
        [part] = [i for i in range(6) if not (black & parts[i]).any() and (black | parts[i]).float().mean() > 0.97]
        assert (after[1][k][:, ~parts[part]] == 0).all()
        if meta[k]["label"] == 1:
            assert meta[k]["diff_kept"][part] > 20, (k, part, meta[k]["diff_kept"])
            cut_fakes += 1
    assert cut_fakes > 0


def _pairs(batches) -> list[tuple]:
    """(key, real image, its pseudo-fake or None) per sample, in order. In a real-only epoch a label-1
    image is the pseudo-fake of the image before it; the batch's keys name its samples, one each."""
    out = []
    for b in batches:
        keys = iter(b.keys)
        for image, label in zip(b.images, b.labels):
            if int(label) == 1:
                assert out and out[-1][2] is None, "a pseudo-fake without its real counterpart before it"
                out[-1] = (*out[-1][:2], image)
            else:
                out.append((next(keys), image, None))
        assert next(keys, None) is None
    return out


def _corners(image: torch.Tensor) -> torch.Tensor:
    """The crop's corners, where the face mask never reaches (a 0.3 margin around the face box)."""
    k = image.shape[-1] // 8
    return torch.stack([image[:, :k, :k], image[:, :k, -k:], image[:, -k:, :k], image[:, -k:, -k:]])


def test_self_blended_pairs_are_drawn_per_sample_whatever_the_world_size_and_augmented_alike(shards):
    rows = index_rows(shards)
    train = train_set_of(shards, fakes=False)
    assert train.samples == sum(r[3] == 0 for r in rows.values())
    cfg = DataConfig(image_size=32, batch_size=4, num_workers=1, augment=False, fakes=False, sbi=0.5)
    drawn = {}
    for world in (1, 2):
        pairs = _pairs(one_epoch(train, cfg, world, seed=5))
        assert all(rows[k][3] == 0 for k, _, _ in pairs), "no fake crop of the dataset in a real-only epoch"
        assert len({k for k, _, _ in pairs}) == len(pairs)  # each sample once, its pair with it
        drawn[world] = {k: fake is not None for k, _, fake in pairs}
        # The real counterpart and its pseudo-fake differ only under the face mask: same corners
        assert all(torch.equal(_corners(real), _corners(fake)) and not torch.equal(real, fake)
                   for _, real, fake in pairs if fake is not None)
    shared = drawn[1].keys() & drawn[2].keys()
    assert len(shared) > 20 and all(drawn[1][k] == drawn[2][k] for k in shared)
    assert 0.25 < np.mean(list(drawn[1].values())) < 0.75  # about half trained as pairs
    # With augmentation, one draw for both: their corners still agree (but for the noise, drawn per
    # pixel), while the augmentation differs from pair to pair.
    augmented = _pairs(one_epoch(train, DataConfig(image_size=32, batch_size=4, num_workers=1, augment=True, fakes=False,
                                                   sbi=1.0), 1, seed=5))
    assert all(fake is not None for _, _, fake in augmented)
    assert all((_corners(real) - _corners(fake)).abs().max() < 0.15 for _, real, fake in augmented)
    gallery = sbi_gallery_rows(train, cfg, seed=5, n=4)
    assert len(gallery) == 4
    for real, mask, fake in gallery:
        assert real.shape == fake.shape and mask.shape == real.shape[1:]
        assert float(mask.max()) > 0 and not torch.equal(real, fake)
        assert torch.equal(real[:, mask == 0], fake[:, mask == 0])


FROZEN_SVD = ["model.name=test_vit", "model.timm_args={img_size: 48, patch_size: 8}", "model.trainable=svd", "optim.lr=0.01",
              "data.ledger=true", "data.fakes=false", "data.sbi=0.5"]


def test_a_frozen_encoder_trains_only_its_chosen_parameters_through_ray_train(shards, tmp_path, ray_address):
    """GenD in miniature: LayerNorm tuning with paired batches, the classifier on L2-normalised
    features, uniformity and alignment losses, a cyclic schedule, and the model taken from the epoch
    with the best val log loss (Ray keeps it by that metric beside the latest); its epochs are
    halves of a pass (data.samples_per_epoch), as the DFDC winner's were fractions of one. (SVD
    tuning with SBI on real-only epochs is checked the same way on test_train.py's ZeRO-1 offload run.)"""
    half = mf.load(shards)["splits"]["train"]["samples"] // 2
    cfg = train_cfg(shards, tmp_path, "model.name=test_vit", "model.timm_args={img_size: 48, patch_size: 8}",
                    "model.trainable=layernorm", "model.head=l2norm", "optim.uniformity_weight=0.5", "optim.alignment_weight=0.1",
                    "optim.schedule=cyclic", "optim.cycle_epochs=1", "optim.epochs=3", "optim.lr=0.01", "data.ledger=true",
                    "data.pairing=video", "eval.select=best_video_log_loss", "ray.num_to_keep=1", "ray.checkpoint_every_steps=3",
                    "eval.fit_temperature=false", f"data.samples_per_epoch={half}")
    out = run(cfg, tmp_path)
    check_frozen_run(cfg, out)
    client = mlflow.MlflowClient(cfg.tracking.uri)
    epochs = {m.step: m.value for m in client.get_metric_history(out["mlflow_run_id"], "epoch")}
    losses = [(m.value, -m.step, epochs[m.step]) for m in client.get_metric_history(out["mlflow_run_id"], "val_video_log_loss")]
    assert len(losses) == 3
    best = min(losses)[2]  # the lowest log loss; of a tie, the later epoch
    assert read_card(out["model"])["epoch"] == best, (read_card(out["model"])["epoch"], losses)


def check_frozen_run(cfg, out: dict) -> None:
    """A run of a frozen encoder (`model.trainable`) changed exactly its trainable parameters, says
    so in MLflow, and its ledger holds every sample of its epoch once."""
    mode = cfg.model.trainable
    torch.manual_seed(cfg.optim.seed)  # what every worker built before training
    initial = build_model(cfg.model)
    trains = {n for n, p in initial.named_parameters() if p.requires_grad}
    before = initial.state_dict()
    after = load_fp32(out["model"])
    assert set(after) == set(before)
    changed = {k for k in before if not torch.equal(after[k], before[k])}
    assert changed == trains, f"frozen but changed: {changed - trains}; trainable but unchanged: {trains - changed}"
    expected = ("norm", "head.") if mode == "layernorm" else (".u", ".s", ".vh", "head.")
    assert all(any(e in k for e in expected) for k in changed)

    run_info = mlflow.MlflowClient(cfg.tracking.uri).get_run(out["mlflow_run_id"])
    assert run_info.data.params["trainable_params"] == str(sum(before[n].numel() for n in trains))
    assert int(run_info.data.params["total_params"]) > 20 * len(trains)
    artifacts = {a.path for a in mlflow.MlflowClient(cfg.tracking.uri).list_artifacts(out["mlflow_run_id"])}
    assert ("sbi_gallery.png" in artifacts) == (cfg.data.sbi > 0)
    # The ledger: every sample of each epoch once (with pairs; without the fakes)
    keys = ledger.train_keys(cfg.data.dataset, fakes=cfg.data.fakes)
    run_uri = f"s3://test/runs/{cfg.ray.run_name}"
    if not cfg.data.samples_per_epoch:
        epochs = ledger.check(run_uri, keys)
    else:  # epochs are halves of a pass: each checked against its own order, recomputed; a pass's two hold every sample once
        order_of = ledger.order_keys(ledger.read_attempts(run_uri)[0])
        epochs = ledger.check(run_uri, None, order_of)
        assert sorted(order_of(0) + order_of(1)) == sorted(keys) and sorted(order_of(2) + order_of(3)) == sorted(keys)
        assert all(abs(e.samples - cfg.data.samples_per_epoch) <= 0.2 * cfg.data.samples_per_epoch for e in epochs), epochs
    assert len(epochs) == cfg.optim.epochs and all(e.ok and e.once == e.end for e in epochs), epochs
