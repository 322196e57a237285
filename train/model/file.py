"""The model file and its card, the contract between training and evaluation or scoring:
`model_fp32.pt` (a plain fp32 state dict for the timm model) and beside it `model_fp32.json`, its
card: the model, input size, temperature and the ingest settings that cropped its training faces, so
evaluation and scoring crop new videos the same way. `--checkpoint` takes the .pt URI (or a
TorchScript file exported from it, with its own card), or a registered model, `models:/NAME/VERSION`
(`resolve`)."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import zipfile

import torch

from dfdc import storage
from dfdc.config import Config, DetectorConfig, IngestConfig, ModelConfig

CARD_FORMAT = "dfdc-scale/detector"  # the card format name, kept: cards already written carry it
CARD_VERSION = 1


class ModelFileError(ValueError):
    pass


def card_uri(model_uri: str) -> str:
    base = model_uri[: -len(".pt")] if model_uri.endswith(".pt") else model_uri
    return base + ".json"


def make_card(cfg: Config, **extra) -> dict:
    return {
        "format": CARD_FORMAT, "version": CARD_VERSION,
        "model": dataclasses.asdict(cfg.model) | {"pretrained": None},
        "image_size": cfg.data.image_size,
        "mean": cfg.data.mean, "std": cfg.data.std,  # input normalisation (None: [0, 1] pixels)
        "face_margin": cfg.data.eval_face_margin,  # crops cut again around the face box (None: as ingested)
        "trained_precision": cfg.deepspeed.precision,
        "temperature": 1.0,
        "aggregate": cfg.eval.aggregate,
        "ingest": dataclasses.asdict(cfg.ingest),
        "detector": dataclasses.asdict(cfg.detector),
        "trained_on": cfg.data.dataset,
    } | extra


def write_card(model_uri: str, card: dict) -> None:
    storage.write_bytes(card_uri(model_uri), json.dumps(card, indent=1).encode())


def read_card(model_uri: str) -> dict:
    uri = card_uri(model_uri)
    try:
        card = json.loads(storage.read_bytes(uri))
    except FileNotFoundError as e:
        raise ModelFileError(f"{uri} does not exist: --checkpoint takes the model_fp32.pt a training run wrote (its card lies beside it)") from e
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{uri} is not valid JSON: {e}") from e
    if card.get("format") != CARD_FORMAT:
        raise ModelFileError(f"{uri} is not a {CARD_FORMAT} card (format={card.get('format')!r})")
    return card


def resolve(uri: str, tracking_uri: str) -> str:
    """The model file a `models:/NAME/VERSION` (or `models:/NAME@ALIAS`) URI of MLflow's registry
    stands for: the storage URI its version's tag `dfdc.model_uri` names (what `dfdc sweep`
    registers). Any other URI comes back as it is."""
    if not uri.startswith("models:/"):
        return uri
    import mlflow  # noqa: PLC0415

    client = mlflow.MlflowClient(tracking_uri)
    ref = uri[len("models:/"):]
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, _, number = ref.partition("/")
            if not number.isdigit():
                raise ModelFileError(f"{uri}: expected models:/NAME/VERSION (a number) or models:/NAME@ALIAS")
            version = client.get_model_version(name, number)
    except mlflow.exceptions.MlflowException as e:
        from train.tracking import redact  # noqa: PLC0415

        raise ModelFileError(f"{uri} is not in the model registry at {redact(tracking_uri)}: {e.message}") from e
    target = version.tags.get("dfdc.model_uri")
    if not target:
        raise ModelFileError(f"{uri} has no tag dfdc.model_uri: it was not registered by dfdc-scale, so its model file is unknown")
    return target


def ingest_config(card: dict) -> IngestConfig:
    return IngestConfig(**card["ingest"])


def detector_config(card: dict) -> DetectorConfig:
    return DetectorConfig(**card["detector"])


def card_model_config(card: dict, model_uri: str) -> ModelConfig:
    """The architecture a card names, for weights that come from the model file itself: the card's
    `pretrained` (a URI) is not read, and a timm name that would fetch a config from elsewhere
    (`hf-hub:...`, `local-dir:...`) is refused."""
    # A card written before model.svd_parts existed: its SVD layers were never split.
    cfg = ModelConfig(**({"svd_parts": {}} | card["model"]))
    try:
        cfg.check()  # model.timm_args may not name a file to read, nor anything else the card should not choose
    except ValueError as e:
        raise ModelFileError(f"the card of {model_uri}: {e}") from e
    if ":" in cfg.name:
        raise ModelFileError(f"the card of {model_uri} names the model {cfg.name!r}: a card names a timm architecture, "
                             "not a place to fetch one from")
    cfg.pretrained = None
    return cfg


def _is_torchscript(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return any(n.endswith("/constants.pkl") or n.endswith("/code/__torch__.py") for n in z.namelist())
    except zipfile.BadZipFile:
        return False


def load(model_uri: str, device: str = "cpu", torchscript: bool = False) -> tuple[torch.nn.Module, dict]:
    """The model in eval mode and its card. Weights (a state dict, read weights-only) into the
    architecture the card names; a TorchScript file only when `torchscript` is asked for and its
    card says `dfdc export` wrote it, since loading one runs its code."""
    from train.model import build_model  # noqa: PLC0415

    card = read_card(model_uri)
    try:
        data = storage.read_bytes(model_uri)
    except FileNotFoundError as e:
        raise ModelFileError(f"{model_uri} does not exist") from e
    if _is_torchscript(data):
        if not torchscript:
            raise ModelFileError(f"{model_uri} is a TorchScript file, and loading one runs the code inside it: give "
                                 "--torchscript (eval.torchscript=true) to load it, only for a file `dfdc export` wrote")
        if card.get("export") != "torchscript":
            raise ModelFileError(f"{model_uri} is a TorchScript file that `dfdc export` did not write (its card has no "
                                 "export: torchscript): not loaded")
        model = torch.jit.load(io.BytesIO(data), map_location=device)
    else:
        try:
            weights = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001  torch raises many kinds for a file that is not a state dict
            raise ModelFileError(f"{model_uri} is neither a state dict nor a TorchScript file: {e}") from e
        model = build_model(card_model_config(card, model_uri), decompose=False)
        model.load_state_dict(weights, strict=True)
    return model.to(device).eval(), card


_CACHE: dict = {}


def load_cached(model_uri: str, device: str = "cpu", torchscript: bool = False) -> tuple[torch.nn.Module, dict]:
    """`load`, once per process: a Ray worker scores many shards or videos with the same model."""
    if (model_uri, device, torchscript) not in _CACHE:
        _CACHE[(model_uri, device, torchscript)] = load(model_uri, device, torchscript)
    return _CACHE[(model_uri, device, torchscript)]


def probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.sigmoid(logits.float() / temperature)


def export_torchscript(model_uri: str, out_uri: str, tolerance: float = 1e-5) -> float:
    """Trace the model to TorchScript, write it with a copy of the card, and check that the
    exported file, loaded back, gives the same logits; the largest difference seen."""
    model, card = load(model_uri)
    size = card["image_size"]
    example = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        traced = torch.jit.trace(model, example[:1])
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    reloaded = torch.jit.load(io.BytesIO(buf.getvalue()))
    check = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(1))  # another batch size
    with torch.no_grad():
        diff = max(float((reloaded(x) - model(x)).abs().max()) for x in (example, check))
    if not math.isfinite(diff) or diff > tolerance:
        raise RuntimeError(f"TorchScript export of {model_uri} gives logits {diff:.2e} away from the model's: not written")
    storage.write_bytes(out_uri, buf.getvalue())
    write_card(out_uri, card | {"exported_from": model_uri, "export": "torchscript", "export_max_abs_diff": diff})
    return diff
