import dataclasses
import re
from pathlib import Path

import pytest

from dfdc.config import Config, ConfigError, load_config


def test_defaults_are_embedded():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.ingest.frames_per_video == 32 and cfg.ingest.faces_per_frame == 2
    assert cfg.ingest.margin == 0.3 and cfg.ingest.crop_size == 256
    assert cfg.ingest.shard_bytes == 512 * 1024 * 1024


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ingest:\n  frames_per_video: 8\n  val_fraction: 0.2\ndetector:\n  device: cuda\n")
    cfg = load_config(path, ["ingest.frames_per_video=4", "detector.thresholds=[0.5, 0.6, 0.7]", "ray.address=auto"])
    assert cfg.ingest.frames_per_video == 4
    assert cfg.ingest.val_fraction == 0.2
    assert cfg.detector.device == "cuda"
    assert cfg.detector.thresholds == [0.5, 0.6, 0.7]
    assert cfg.ray.address == "auto"


def test_numbers_are_read_as_people_write_them(tmp_path):
    """YAML 1.1 (PyYAML's) reads 3e-4, an exponent without a dot, as a string: `lr: 3e-4` and
    `--set optim.lr=3e-4` were refused ("must be float, got '3e-4'"). They are floats, in files,
    overrides and a sweep's space alike; plain words stay strings."""
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 3e-4\n  min_lr: 1E-6\n  weight_decay: 5.0e-2\n"
                    "sweep:\n  space:\n    optim.lr: {loguniform: [1e-5, 1e-2]}\n")
    cfg = load_config(path)
    assert cfg.optim.lr == 3e-4 and cfg.optim.min_lr == 1e-6 and cfg.optim.weight_decay == 0.05
    assert cfg.sweep.space["optim.lr"] == {"loguniform": [1e-5, 1e-2]}
    cfg = load_config(None, ["optim.lr=3e-4", "optim.min_lr=+1e-7", "data.dataset=s3://b/e5", "ray.run_name=e10"])
    assert cfg.optim.lr == 3e-4 and cfg.optim.min_lr == 1e-7
    assert cfg.data.dataset == "s3://b/e5" and cfg.ray.run_name == "e10"


def test_int_is_accepted_for_float_and_null_for_optional():
    cfg = load_config(None, ["ingest.margin=1", "ray.address=null"])
    assert cfg.ingest.margin == 1.0 and isinstance(cfg.ingest.margin, float)
    assert cfg.ray.address is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("ingest.frams=3", "unknown config key(s): ingest.frams"),
        ("nosuch.key=3", "unknown config key(s): nosuch"),
        ("ingest.frames_per_video=many", "ingest.frames_per_video must be int"),
        ("ingest.frames_per_video=2.5", "ingest.frames_per_video must be int"),
        ("ingest.reuse_original_boxes=3", "ingest.reuse_original_boxes must be bool"),
        ("ingest", "not of the form section.key=value"),
        ("ingest.frames_per_video.x=1", "ingest.frames_per_video must be int"),
        ("ingest.margin=1", None),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    if message is None:  # a control: the same shape of override, valid
        load_config(None, [override])
        return
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


@pytest.mark.parametrize("sets, message", [
    (["model.trainable=lora"], "model.trainable must be all, layernorm, head or svd, got 'lora'"),
    (["model.svd_rank=0"], "model.svd_rank must be >= 1, got 0"),
    (["data.pairing=group"], "data.pairing must be none or video"),
    (["data.sbi=1.5"], "data.sbi must be in [0, 1], got 1.5"),
    (["data.fakes=false"], "data.fakes=false trains on real crops only: it needs data.sbi above 0"),
    (["data.sbi=0.5", "data.order=resampled"], "need data.order=blocks or permutation"),
    (["data.mean=[0.5, 0.5, 0.5]"], "data.mean and data.std go together"),
    (["data.mean=[0.5, 0.5]", "data.std=[0.2, 0.2]"], "take 3 numbers each"),
    (["data.fakes=false", "data.sbi=0.5", "data.pairing=video"], "does nothing with data.fakes=false"),
    (["model.timm_args={checkpoint_path: /etc/x}"], "model.timm_args may not set checkpoint_path"),
    (["model.timm_args=128"], "model.timm_args must be a mapping"),
    (["data.fakes=false", "data.sbi=0.5", "model.trainable=svd", "model.timm_args={img_size: 128}"], None),
])
def test_recipe_settings_that_cannot_work_are_refused_at_load(sets, message):
    if message is None:
        load_config(None, sets)
        return
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, sets)


def test_every_recipe_config_loads_and_makes_valid_mlflow_params():
    from mlflow.utils.validation import _validate_param_name

    from train.tracking import flat, loggable

    for path in sorted((Path(__file__).parent.parent / "configs").glob("*.yaml")):
        cfg = load_config(path)
        params = flat(loggable(cfg))
        for key in params:
            _validate_param_name(key)  # raises on an s3:// URI as a key (eval.splits)
    assert params["model.timm_args"] == "{}" and "data.batch_size" in params


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listy)


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted(Path(__file__).parent.parent.glob("configs/*.yaml"))
    assert configs, "configs/ holds the recipes"
    for path in configs:
        load_config(path)


# Images in one optimizer step of each recipe that follows a paper's protocol, as that paper or its
# code trained: the DFDC winner 12 a GPU on 4 GPUs (his train_classifier.py, distributed); SBI 32
# on one GPU (src/configs/sbi/base.json, src/train_sbi.py); GenD 512; Effort 32 (its DeepfakeBench
# config). A recipe that runs on more GPUs than its paper takes a larger batch a step than it.
PAPER_IMAGES_PER_STEP = {"dfdc_b7.yaml": 48, "sbi_effnet_b4.yaml": 32, "gend_clip_vitl14_ffpp.yaml": 512,
                         "effort_clip_vitl14_ffpp.yaml": 32}


@pytest.mark.parametrize("name, images", sorted(PAPER_IMAGES_PER_STEP.items()))
def test_paper_recipes_take_their_papers_batch_a_step(name, images):
    cfg = load_config(Path(__file__).parent.parent / "configs" / name)
    pairs = 2 if cfg.data.sbi >= 1.0 else 1  # each real crop beside its self-blended pseudo-fake
    assert cfg.data.batch_size * pairs * cfg.optim.grad_accum * cfg.ray.num_workers == images


def test_digest_tracks_settings():
    a, b = Config(), Config()
    assert a.digest("ingest") == b.digest("ingest")
    b.ingest.margin = 0.5
    assert a.digest("ingest") != b.digest("ingest")
    assert a.digest("detector") == b.digest("detector")


@pytest.mark.parametrize("key, bad, rule", [
    ("optim.epochs", "-1", ">= 1"), ("optim.lr", "-1", "> 0"), ("ingest.val_fraction", "2", "in [0, 1)"),
    ("ingest.crop_size", "0", ">= 1"), ("data.batch_size", "0", ">= 1"), ("eval.clip", "0.6", "in [0, 0.5)"),
])
def test_numbers_out_of_range_are_refused_naming_the_key_and_where_it_came_from(tmp_path, key, bad, rule):
    """Every numeric key has a range (RANGES), checked at load; the error names the key, the rule,
    the value and the file or --set that gave it."""
    with pytest.raises(ConfigError, match=re.escape(f"config key {key} must be {rule}, got ") + r".*\(from --set " + re.escape(f"{key}={bad})")):
        load_config(None, [f"{key}={bad}"])
    section, name = key.split(".")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"{section}:\n  {name}: {bad}\n")
    with pytest.raises(ConfigError, match=re.escape(f"config key {key} must be {rule}") + r".*\(from " + re.escape(f"{recipe})")):
        load_config(recipe)


def test_every_numeric_key_has_a_range():
    """A numeric key added without a range would take any value: RANGES must name each one (lists of
    numbers and ray.num_workers, a number or min..max, have checks of their own)."""
    from dfdc.config import RANGES, Config

    cfg = Config()
    numeric = {f"{s.name}.{f.name}" for s in dataclasses.fields(cfg) for f in dataclasses.fields(getattr(cfg, s.name))
               if str(f.type) in ("int", "float", "int | None", "float | None")}
    assert numeric == set(RANGES), (numeric - set(RANGES), set(RANGES) - numeric)
    load_config(None)  # every default is inside its range


def test_keys_added_since_an_ingest_do_not_change_its_settings_digest_at_their_defaults():
    """An ingest recorded its ingest and detector settings before ingest.difference_masks and
    ingest.face_outlines existed: rerun with this code's config (the new keys at their defaults) it
    is the same ingest, not "another config" (before, every added key made it one). A new key set
    away from its default, or a recorded key changed, still changes the digest."""
    import dataclasses
    import hashlib
    import json

    cfg = load_config(None, [])
    recorded = {"ingest": dataclasses.asdict(cfg.ingest), "detector": dataclasses.asdict(cfg.detector)}
    for key in ("difference_masks", "face_outlines"):
        del recorded["ingest"][key]
    as_then = hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()[:16]  # the digest it recorded
    assert cfg.digest("ingest", "detector") != as_then
    assert cfg.digest("ingest", "detector", known=recorded) == as_then
    assert load_config(None, ["ingest.difference_masks=true"]).digest("ingest", "detector", known=recorded) != as_then
    assert load_config(None, ["ingest.crop_size=300"]).digest("ingest", "detector", known=recorded) != as_then
