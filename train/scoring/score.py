"""Scoring new videos: sample frames, find faces and crop them with the code ingest uses (and the
settings the model was trained with, from its card), run the model, aggregate. One JSON line per
video: {video, p_fake, faces_found, frames: [{t, face, p}]}, or {video, p_fake: null, error}."""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Iterator

from dfdc import storage
from dfdc.config import Config
from data_pipeline.records import is_video

_LOADED: dict = {}  # per process (a Ray worker scores many chunks): face detector, transforms


def expand(inputs: list[str]) -> list[str]:
    """Videos to score: each input is a video (local path or URI), or a folder / prefix whose
    videos are all scored. Inputs that are neither are kept, to get their error line."""
    out: list[str] = []
    for item in inputs:
        fs, path = storage.filesystem(item)
        try:
            is_dir = not is_video(item) and fs.isdir(path)
        except OSError:
            is_dir = False
        if is_dir:
            found = sorted(rel for rel in storage.list_files(item) if is_video(rel))
            out += [storage.join(item, rel) for rel in found] or [item]
        else:
            out.append(item)
    return list(dict.fromkeys(out))


def _setup(model_uri: str, device: str, plugins: tuple[str, ...] = (), torchscript: bool = False):
    import dataclasses  # noqa: PLC0415

    from data_pipeline.faces import build_detector  # noqa: PLC0415
    from train.model import file as model_file  # noqa: PLC0415
    from train.data.samples import Decode  # noqa: PLC0415
    from train.data.transforms import image_transform  # noqa: PLC0415

    if (model_uri, device, torchscript) not in _LOADED:
        model, card = model_file.load_cached(model_uri, device, torchscript)
        faces = build_detector(dataclasses.replace(model_file.detector_config(card), device=device), plugins=plugins)
        # the crops are cut as the card's ingest cut them, then again around the face as validation did
        tf = Decode(image_transform(card["image_size"], False, card.get("mean"), card.get("std")), card.get("face_margin"),
                    model_file.ingest_config(card).margin)
        _LOADED[(model_uri, device, torchscript)] = (model, card, faces, tf)
    return _LOADED[(model_uri, device, torchscript)]


def score_video(uri: str, model_uri: str, rule: str | None = None, device: str = "cpu", top_crops: int = 0,
                plugins: tuple[str, ...] = (), torchscript: bool = False) -> tuple[dict, list[dict]]:
    """(the JSON line, the `top_crops` highest-scoring face crops as {t, face, p, jpg})."""
    import torch  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    from data_pipeline.extract import extract  # noqa: PLC0415
    from data_pipeline.frames import VideoError  # noqa: PLC0415
    from data_pipeline.records import VideoRecord  # noqa: PLC0415
    from train.model import file as model_file  # noqa: PLC0415
    from train.evaluation import aggregate  # noqa: PLC0415

    model, card, faces, tf = _setup(model_uri, device, plugins, torchscript)
    rule = rule or card.get("aggregate", "mean")
    try:
        data = storage.read_bytes(uri)
    except storage.NotFound:
        return {"video": uri, "p_fake": None, "error": f"missing_file: {uri} does not exist"}, []
    except storage.StorageError as e:  # credentials, network: say so; the other videos go on
        return {"video": uri, "p_fake": None, "error": f"storage: {e}"}, []
    except OSError as e:  # a folder, a local file we may not read
        return {"video": uri, "p_fake": None, "error": f"unreadable: {uri}: {e}"}, []
    if not data:
        return {"video": uri, "p_fake": None, "error": f"empty_file: {uri} has zero bytes"}, []
    record = VideoRecord(uri=uri, video=uri, label=0, group=uri, dataset="scored")
    try:
        # crops as the model was trained on; the metadata only training reads (face outlines) is not made
        result = extract(record, data, faces, dataclasses.replace(model_file.ingest_config(card), face_outlines=False))
    except VideoError as e:
        if e.reason == "no_face":  # scored 0.5, as evaluation does: no evidence either way
            return {"video": uri, "p_fake": aggregate.NO_FACE_SCORE, "faces_found": 0, "frames": [], "note": str(e)}, []
        return {"video": uri, "p_fake": None, "error": str(e)}, []
    except Exception as e:  # noqa: BLE001  whatever the file is, the other videos go on
        return {"video": uri, "p_fake": None, "error": f"unreadable_video: {type(e).__name__}: {e}"}, []
    batch = torch.stack([tf((Image.open(io.BytesIO(s.jpg)).convert("RGB"), s.meta, uri, None))[0] for s in result.samples])
    with torch.no_grad():
        p = model_file.probabilities(model(batch.to(device)).squeeze(1), card.get("temperature", 1.0)).cpu().tolist()
    frames = [{"t": s.meta["t"], "face": s.meta["face"], "p": round(q, 6)} for s, q in zip(result.samples, p)]
    line = {"video": uri, "p_fake": round(aggregate.video_score(p, rule), 6), "faces_found": len(frames), "frames": frames}
    ranked = sorted(zip(result.samples, p), key=lambda sp: -sp[1])[:top_crops]
    crops = [{"t": s.meta["t"], "face": s.meta["face"], "p": q, "jpg": s.jpg} for s, q in ranked]
    return line, crops


def score_chunk(uris: list[str], model_uri: str, rule: str | None, device: str, top_crops: int,
                plugins: tuple[str, ...], torchscript: bool = False) -> list[tuple[dict, list[dict]]]:
    return [score_video(u, model_uri, rule, device, top_crops, plugins, torchscript) for u in uris]


def score(videos: list[str], model_uri: str, cfg: Config, use_ray: bool, progress: bool = True,
          top_crops: int = 0, videos_per_task: int = 4) -> Iterator[tuple[dict, list[dict]]]:
    """Lines (and top crops) as videos finish: in this process, or as Ray tasks of a few videos each."""
    from dfdc.progress import TaskProgress  # noqa: PLC0415
    from dfdc.ray_tasks import RayTasks  # noqa: PLC0415
    from train.model.file import read_card  # noqa: PLC0415

    from data_pipeline.faces import check_allowed  # noqa: PLC0415
    from train.model.file import detector_config, ingest_config  # noqa: PLC0415

    card = read_card(model_uri)  # a wrong --checkpoint fails here, once, not once per video
    plugins = tuple(cfg.detector.plugins)
    check_allowed(detector_config(card).name, plugins)  # and so does a card's detector this command does not allow
    margin = card.get("face_margin")
    if margin is not None and margin > ingest_config(card).margin + 1e-9:
        raise ValueError(f"model card of {model_uri}: face_margin {margin:g} is wider than its ingest.margin "
                         f"{ingest_config(card).margin:g}: the crops scoring cuts could not hold it")
    device = "cuda" if cfg.eval.gpus_per_task > 0 else "cpu"
    rule = cfg.eval.aggregate
    if not use_ray:
        with TaskProgress("score", total=len(videos), unit="videos", enabled=progress, errors=0) as bar:
            for uri in videos:
                line, crops = score_video(uri, model_uri, rule, device, top_crops, plugins, cfg.eval.torchscript)
                bar.advance(errors=int(line.get("error") is not None))
                yield line, crops
        return
    chunks = [videos[i:i + videos_per_task] for i in range(0, len(videos), videos_per_task)]
    with RayTasks(score_chunk, "score", "videos", len(videos), address=cfg.ray.address, cpus=cfg.eval.cpus_per_task,
                  gpus=cfg.eval.gpus_per_task, progress=progress, errors=0) as work:
        for i, results, error in work.map({i: (c, model_uri, rule, device, top_crops, plugins, cfg.eval.torchscript) for i, c in enumerate(chunks)}):
            if error is not None:  # a lost worker costs its chunk's lines, which say so
                results = [({"video": u, "p_fake": None, "error": f"task_failed: {type(error).__name__}: {error}"}, [])
                           for u in chunks[i]]
            for line, crops in results:
                work.advance(errors=int(line.get("error") is not None))
                yield line, crops


def is_scored(line: dict) -> bool:
    return line.get("p_fake") is not None and math.isfinite(line["p_fake"])
