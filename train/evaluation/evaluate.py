"""Evaluation of a trained detector on ingested datasets: every face crop of a split scored by Ray
tasks (one per shard), frame scores aggregated to video scores, metrics overall and by manipulation
method and source dataset, temperature scaling, plots, MLflow.

Videos that ingest set aside with a known label (no face found, unreadable) are scored 0.5 and
counted, as the DFDC scoring did for every video a team could not read."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from dfdc.config import Config
from data_pipeline import manifest as mf
from train.data.loader import DECODED
from train.evaluation import aggregate, metrics
from train.evaluation import table as cross_dataset

FIELDS = ("video", "label", "logit", "dataset", "method", "t", "face")


def score_shard(model_uri: str, url: str, batch_size: int, device: str = "cpu", torchscript: bool = False,
                crop_margin: float = 0.3) -> dict[str, list]:
    """Logits of every face crop in one shard, with what each belongs to. Raises on a shard that
    cannot be read; the driver counts it and goes on. `crop_margin`: the shard's dataset's
    ingest.margin, for a model card's face_margin."""
    import torch  # noqa: PLC0415
    import webdataset as wds  # noqa: PLC0415

    from train.model.file import load_cached  # noqa: PLC0415
    from train.data.samples import register_s3  # noqa: PLC0415
    from train.data.samples import Decode  # noqa: PLC0415
    from train.data.transforms import image_transform  # noqa: PLC0415

    register_s3()
    model, card = load_cached(model_uri, device, torchscript)
    tf = Decode(image_transform(card["image_size"], False, card.get("mean"), card.get("std")), card.get("face_margin"), crop_margin)
    rows: dict[str, list] = {k: [] for k in FIELDS}
    images: list = []

    def flush():
        if images:
            with torch.no_grad():
                rows["logit"].extend(model(torch.stack(images).to(device)).float().squeeze(1).cpu().tolist())
            images.clear()

    pipeline = wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples(), wds.decode("pil", only=DECODED), wds.to_tuple("jpg", "json"))
    for image, meta in pipeline:
        images.append(tf((image, meta, url, None))[0])
        for k in ("video", "label", "dataset", "method", "t", "face"):
            rows[k].append(meta.get(k))
        if len(images) == batch_size:
            flush()
    flush()
    return rows


def predict(model_uri: str, urls: list[str], cfg: Config, progress: bool = True, label: str = "evaluate",
            crop_margin: float = 0.3) -> tuple[dict[str, list], list[dict]]:
    """Every shard scored by a Ray task; (rows of all readable shards, [{shard, error}] for the others).
    `crop_margin`: the shards' dataset's ingest.margin."""
    from dfdc.ray_tasks import RayTasks  # noqa: PLC0415

    device = "cuda" if cfg.eval.gpus_per_task > 0 else "cpu"
    rows: dict[str, list] = {k: [] for k in FIELDS}
    failed = []
    with RayTasks(score_shard, label, "shards", len(urls), address=cfg.ray.address, cpus=cfg.eval.cpus_per_task,
                  gpus=cfg.eval.gpus_per_task, progress=progress, faces=0, unreadable=0) as work:
        for url, got, error in work.map({url: (model_uri, url, cfg.eval.batch_size, device, cfg.eval.torchscript, crop_margin) for url in urls}):
            if error is not None:
                failed.append({"shard": url, "error": f"{type(error).__name__}: {error}"})
                work.note(f"[red]shard {url} unreadable[/red]: {failed[-1]['error']}")
                work.advance(unreadable=1)
                continue
            for k in FIELDS:
                rows[k].extend(got[k])
            work.advance(faces=len(got["video"]))
    return rows, failed


def split_of(dataset_uri: str, split: str) -> tuple[list[str], list[dict], dict]:
    """(shard URLs, videos set aside with known labels, manifest) of one split ("all": every split)."""
    manifest = mf.load(dataset_uri)
    splits = sorted(manifest["splits"])
    if split != "all" and split not in splits:
        raise ValueError(f"dataset {dataset_uri} has no split {split!r} (it has: {', '.join(splits)})")
    urls = mf.shard_urls(dataset_uri, manifest, split)
    missing = [q for q in manifest["quarantine"] if q.get("label") is not None and (split == "all" or q.get("split") == split)]
    return urls, missing, manifest


def sigmoid(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64) / temperature))


def videos(rows: dict[str, list], missing: list[dict], rule: str, temperature: float = 1.0) -> dict[str, dict]:
    """One entry per video: label, score (by `rule`), dataset, method, faces scored."""
    probs = sigmoid(rows["logit"], temperature)
    scores = aggregate.by_video(rows["video"], probs, rule)
    out: dict[str, dict] = {}
    for i, v in enumerate(rows["video"]):
        if v not in out:
            out[v] = {"label": int(rows["label"][i]), "score": scores[v], "dataset": rows["dataset"][i],
                      "method": rows["method"][i], "faces": 0}
        out[v]["faces"] += 1
    for q in missing:
        out.setdefault(q["video"], {"label": int(q["label"]), "score": aggregate.NO_FACE_SCORE, "dataset": q.get("dataset"),
                                    "method": q.get("method"), "faces": 0, "set_aside": q["reason"]})
    return out


def summarize(rows: dict[str, list], missing: list[dict], rule: str, temperature: float, clip: float) -> dict:
    table = videos(rows, missing, rule, temperature)
    y = np.array([t["label"] for t in table.values()])
    p = np.array([t["score"] for t in table.values()])
    raw = videos(rows, missing, rule, 1.0)
    out = {
        "aggregate": rule,
        "temperature": temperature,
        "frame": metrics.all_metrics(rows["label"], sigmoid(rows["logit"], temperature), clip),
        "video": metrics.all_metrics(y, p, clip),
        "video_log_loss_uncalibrated": metrics.log_loss([t["label"] for t in raw.values()], [t["score"] for t in raw.values()], clip) if raw else float("nan"),
        "videos_set_aside": len(missing),
        "set_aside_reasons": {r: sum(q["reason"] == r for q in missing) for r in sorted({q["reason"] for q in missing})},
        "by_method": {},
        "by_dataset": {},
    }
    real = [t for t in table.values() if t["label"] == 0]
    for method in sorted({t["method"] for t in table.values() if t["label"] == 1 and t["method"]}):
        subset = real + [t for t in table.values() if t["label"] == 1 and t["method"] == method]
        out["by_method"][method] = metrics.all_metrics([t["label"] for t in subset], [t["score"] for t in subset], clip)
    for ds in sorted({t["dataset"] for t in table.values() if t["dataset"]}):
        subset = [t for t in table.values() if t["dataset"] == ds]
        out["by_dataset"][ds] = metrics.all_metrics([t["label"] for t in subset], [t["score"] for t in subset], clip)
    return out


def dataset_names(uris: list[str]) -> dict[str, str]:
    """A short name per dataset root for files, metric keys and the table: its last part, or as many
    of its last parts as tell it apart from the others (s3://a/celebdf and s3://b/celebdf)."""
    parts = {u: [p for p in u.rstrip("/").split("://")[-1].split("/") if p] or ["dataset"] for u in uris}
    depth = dict.fromkeys(uris, 1)
    while True:
        names = {u: "-".join(parts[u][-depth[u]:]) for u in uris}
        clash = [u for u in uris if list(names.values()).count(names[u]) > 1 and depth[u] < len(parts[u])]
        if not clash:
            return names if len(set(names.values())) == len(names) else {u: f"{names[u]}-{i}" for i, u in enumerate(uris)}
        for u in clash:
            depth[u] += 1


def evaluate(model_uri: str, datasets: list[str], cfg: Config, out_dir: Path, progress: bool = True, log=print) -> dict:
    """Evaluate on each dataset's split (`eval.splits`, else `eval.split`); write metrics.json, the cross-dataset table
    (cross_dataset.csv) and plots to `out_dir`, log them to MLflow; the report, with the table's rows
    under "table"."""
    from train.model import file as model_file  # noqa: PLC0415
    from train.evaluation import plots  # noqa: PLC0415

    card = model_file.read_card(model_uri)
    temperature = float(card.get("temperature", 1.0))
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"model": model_uri, "split": cfg.eval.split, "aggregate": cfg.eval.aggregate, "temperature": temperature, "datasets": {}}
    pngs = []
    names = dataset_names(datasets)
    for uri in datasets:
        split = cfg.eval.splits.get(uri, cfg.eval.split)
        urls, missing, manifest = split_of(uri, split)
        if card.get("face_margin") is not None:
            mf.check_face_margin(card["face_margin"], manifest, uri, "the model card's face_margin (data.eval_face_margin)")
        t0 = time.monotonic()
        rows, failed = predict(model_uri, urls, cfg, progress, label=f"evaluate {names[uri]}", crop_margin=mf.crop_margin(manifest))
        summary = summarize(rows, missing, cfg.eval.aggregate, temperature, cfg.eval.clip)
        summary |= {"split": split, "shards": len(urls), "unreadable_shards": failed, "seconds": round(time.monotonic() - t0, 1)}
        report["datasets"][uri] = summary
        table = videos(rows, missing, cfg.eval.aggregate, temperature)
        y = np.array([t["label"] for t in table.values()])
        p = np.array([t["score"] for t in table.values()])
        p_raw = np.array([t["score"] for t in videos(rows, missing, cfg.eval.aggregate, 1.0).values()])
        stem = out_dir / names[uri]
        pngs += [plots.roc(f"{stem}-roc.png", y, p, f"{names[uri]} {split} (videos)"),
                 plots.reliability(f"{stem}-reliability.png", y, p_raw, p, temperature, cfg.eval.bins),
                 plots.histograms(f"{stem}-scores.png", y, p)]
        log(f"{names[uri]} ({split}): {len(table)} videos ({summary['videos_set_aside']} without faces, scored 0.5), "
            f"{len(failed)} unreadable shards; video log loss {summary['video']['log_loss']:.4f}, "
            f"AUC {summary['video']['auc']:.4f}, AP {summary['video']['ap']:.4f}, EER {summary['video']['eer']:.4f}, "
            f"acc {summary['video']['accuracy']:.4f}, ECE {summary['video']['ece']:.4f}")
    report["table"] = cross_dataset.rows(report["datasets"], names.get, trained_on=card.get("trained_on"))
    path = out_dir / "metrics.json"
    path.write_text(json.dumps(report, indent=1, default=float))
    csv_path = out_dir / "cross_dataset.csv"
    csv_path.write_text(cross_dataset.to_csv(report["table"]))
    _log_mlflow(cfg, report, [path, csv_path, *map(Path, pngs)], card)
    report["files"] = [str(path), str(csv_path), *pngs]
    return report


def _log_mlflow(cfg: Config, report: dict, files: list[Path], card: dict) -> None:
    import mlflow  # noqa: PLC0415

    from train import tracking  # noqa: PLC0415

    tags = {"model_uri": report["model"], "trained_in_run": str(card.get("mlflow_run_id"))}
    with tracking.open_run(cfg, name=f"evaluate-{cfg.eval.split}", kind="evaluation", tags=tags):
        mlflow.log_params({"split": cfg.eval.split, "aggregate": cfg.eval.aggregate, "temperature": report["temperature"],
                           "datasets": ",".join(report["datasets"])})
        names = dataset_names(list(report["datasets"]))
        for uri, s in report["datasets"].items():
            name = names[uri]
            flat = {f"{name}/{level}_{k}": v for level in ("frame", "video") for k, v in s[level].items()}
            flat |= {f"{name}/{m}/video_{k}": v for m, ms in s["by_method"].items() for k, v in ms.items()}
            tracking.log_metrics({k.replace(" ", "_"): v for k, v in flat.items() if isinstance(v, (int, float))})
        mean = report["table"][-1]
        tracking.log_metrics({f"mean/{col}": mean[col] for col in cross_dataset.METRICS})
        # Also as an MLflow table: mlflow.load_table("cross_dataset.json", run_ids=...) then gathers the
        # tables of many evaluation runs into one DataFrame, which CSV artifacts do not give.
        mlflow.log_table(cross_dataset.columns(report["table"]), artifact_file="cross_dataset.json")
        for f in files:
            mlflow.log_artifact(str(f))
