"""Temperature scaling: one T for sigmoid(logit / T), fit on the val split after training and saved
in the model's card (log loss punishes over-confidence; T > 1 softens the scores)."""

from __future__ import annotations

import math

from dfdc.config import Config
from train.evaluation import metrics
from train.evaluation.evaluate import predict, split_of, summarize, videos


def fit_temperature(rows: dict[str, list], rule: str, clip: float, low: float = 0.5, high: float = 20.0) -> float:
    """The T in [low, high] that minimises video-level log loss (bounded search over log T). On a val
    split the model separates perfectly, log loss keeps falling as T -> 0; the lower bound stops
    calibration from making the model more confident than that on unseen videos."""
    from scipy.optimize import minimize_scalar  # noqa: PLC0415

    def loss(log_t: float) -> float:
        table = videos(rows, [], rule, math.exp(log_t))
        return metrics.log_loss([t["label"] for t in table.values()], [t["score"] for t in table.values()], clip)

    if not 0 < low <= 1 <= high:
        raise ValueError(f"eval.temperature_range must hold 1 and be above 0, got [{low}, {high}]")
    best = minimize_scalar(loss, bounds=(math.log(low), math.log(high)), method="bounded", options={"xatol": 1e-4})
    return float(math.exp(best.x)) if loss(best.x) < loss(0.0) else 1.0


def calibrate(model_uri: str, cfg: Config, log=print) -> dict:
    """Fit T on the val split of the training data with the final weights (Ray tasks), write it into
    the card and log it to the training's MLflow run."""
    from train import tracking  # noqa: PLC0415
    from train.model import file as model_file  # noqa: PLC0415

    from data_pipeline import manifest as mf  # noqa: PLC0415

    if "val" not in mf.load(cfg.data.dataset)["splits"]:
        log(f"{cfg.data.dataset} has no val split: temperature left at 1")
        return {}
    urls, missing, manifest = split_of(cfg.data.dataset, "val")
    rows, failed = predict(model_uri, urls, cfg, progress=False, label="calibrate", crop_margin=mf.crop_margin(manifest))
    if not rows["video"]:
        log(f"no val predictions ({len(failed)} unreadable shards): temperature left at 1")
        return {}
    t = fit_temperature(rows, cfg.eval.aggregate, cfg.eval.clip, *cfg.eval.temperature_range)
    before = summarize(rows, missing, cfg.eval.aggregate, 1.0, cfg.eval.clip)["video"]["log_loss"]
    after = summarize(rows, missing, cfg.eval.aggregate, t, cfg.eval.clip)["video"]["log_loss"]
    card = model_file.read_card(model_uri) | {"temperature": t, "temperature_fit_on": f"{cfg.data.dataset} val"}
    model_file.write_card(model_uri, card)
    with tracking.open_run(cfg, run_id=card["mlflow_run_id"]):
        import mlflow  # noqa: PLC0415

        tracking.log_metrics({"temperature": t, "val_video_log_loss_calibrated": after})
        mlflow.log_dict(card, "model_fp32.json")
    log(f"temperature {t:.3f} fit on val: video log loss {before:.4f} -> {after:.4f}")
    return {"temperature": t, "val_video_log_loss": before, "val_video_log_loss_calibrated": after,
            "unreadable_shards": len(failed)}
