"""Pretrained weights into a freshly built timm model (`model.pretrained`), and the input
normalisation those weights expect.

`model.pretrained` is one of:
- a state dict file, local or `s3://` (a cluster without internet access: copy the file to the
  bucket once);
- `hub`: timm's own pretrained loading for `model.name` (its tag names the weights, e.g.
  `tf_efficientnet_b4.ap_in1k`), through the Hugging Face hub and its cache (`HF_HOME`, by default
  `~/.cache/huggingface`). Every rank calls it; the hub's cache holds one copy per node and its
  file locks let one process download while the others wait. With `HF_HUB_OFFLINE=1` only the cache
  is read.

Either way the weights go through one loader that counts what it loaded, what the model kept from its
random init (missing) and what the file has that the model does not (unexpected), logs the three
counts, and refuses weights that leave anything but the classifier head missing: a backbone half
initialised at random trains, slowly and worse, and nothing else would say so.
"""

from __future__ import annotations

import io
import logging
import math

import torch

from dfdc import storage

log = logging.getLogger(__name__)

HUB = "hub"


def load_weights(model: torch.nn.Module, source: str, name: str = "", timm_args: dict | None = None) -> dict[str, int]:
    """Load `source` (a state dict URI, or `hub` for timm's pretrained weights of `name`) into
    `model`. Returns the counts {loaded, missing, unexpected}; raises ValueError naming `source` when
    any tensor other than the classifier head's is missing."""
    state = hub_state(name, timm_args or {}) if source == HUB else file_state(source)
    return load_state(model, state, f"model.pretrained {source}" + (f" ({name})" if source == HUB else ""))


def file_state(uri: str) -> dict[str, torch.Tensor]:
    state = torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"model.pretrained {uri}: not a state dict (a mapping of names to tensors), got {type(state).__name__}")
    return state


def hub_state(name: str, timm_args: dict) -> dict[str, torch.Tensor]:
    """The state dict of timm's pretrained `name`, as timm builds it (its own key conversions and
    resizing for `timm_args` such as img_size), with the original classifier."""
    import timm  # noqa: PLC0415

    try:
        reference = timm.create_model(name, pretrained=True, **timm_args)
    except RuntimeError as e:  # timm: "No pretrained weights exist for ..."; an unknown model
        raise ValueError(f"model.pretrained hub: timm has no pretrained weights for model.name {name!r}: {e}") from e
    except OSError as e:  # huggingface_hub: offline with nothing cached, no network, no such repo
        raise ValueError(f"model.pretrained hub: the weights of {name!r} could not be fetched from the Hugging Face hub "
                         f"or found in its cache (HF_HOME): {e}") from e
    return reference.state_dict()


def classifier_prefix(model: torch.nn.Module) -> str | None:
    """The module name of a timm model's classifier head ('classifier', 'head', 'head.fc', ...)."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if head is None:
        return None
    return next((n for n, m in model.named_modules() if m is head and n), None)


def load_state(model: torch.nn.Module, state: dict, what: str) -> dict[str, int]:
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    missing = sorted(k for k in own if k not in usable)
    unexpected = sorted(k for k in state if k not in usable)
    head = classifier_prefix(model)
    not_head = [k for k in missing if not (head and (k == head or k.startswith(head + ".")))]
    counts = {"loaded": len(usable), "missing": len(missing), "unexpected": len(unexpected)}
    if not_head:
        shown = ", ".join(not_head[:5]) + (f" and {len(not_head) - 5} more" if len(not_head) > 5 else "")
        reshaped = [k for k in not_head if k in state]
        why = f" ({len(reshaped)} of them with another shape in the file)" if reshaped else ""
        raise ValueError(f"{what}: {len(not_head)} of the model's {len(own)} tensors are not in it{why}: {shown}; "
                         f"only the classifier head ({head}) may be missing. Weights of another architecture or size?")
    model.load_state_dict(usable, strict=False)
    log.warning("%s: loaded %d tensors; %d missing (the classifier head %s, initialised at random); %d in the file "
                "not used", what, counts["loaded"], counts["missing"], head, counts["unexpected"])
    return counts


def expected_normalisation(name: str) -> tuple[list[float], list[float]] | None:
    """The (mean, std) of [0, 1] pixels that timm's pretrained weights for `name` were trained with,
    from timm's registry (no download); None when timm knows no pretrained weights for it."""
    import timm  # noqa: PLC0415

    cfg = timm.models.get_pretrained_cfg(name)  # a name without a tag: timm's default weights for it
    if cfg is None or cfg.mean is None or cfg.std is None:
        return None
    return list(cfg.mean), list(cfg.std)


def check_normalisation(model_name: str, pretrained: str | None, mean: list[float] | None, std: list[float] | None) -> None:
    """Refuse pretrained weights fed pixels they were not trained on: timm's registry names the
    normalisation of `model_name`'s weights, and data.mean / data.std must be that (to 1e-4)."""
    if not pretrained:
        return
    expected = expected_normalisation(model_name)
    if expected is None:
        return
    want_mean, want_std = expected
    fmt = lambda xs: "[" + ", ".join(f"{x:g}" for x in xs) + "]"  # noqa: E731
    if mean is None or std is None:
        raise ValueError(f"model.pretrained: the weights of {model_name} expect inputs normalised with mean {fmt(want_mean)} "
                         f"and std {fmt(want_std)}; data.mean and data.std are not set, so they would get [0, 1] pixels. "
                         f"Set data.mean={fmt(want_mean)} and data.std={fmt(want_std)}")
    if not all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip([*mean, *std], [*want_mean, *want_std])):
        raise ValueError(f"model.pretrained: the weights of {model_name} expect mean {fmt(want_mean)} and std {fmt(want_std)}, "
                         f"but data.mean is {fmt(mean)} and data.std {fmt(std)}")
