"""Input from storage is data, never code or a way out of its prefix: manifests cannot name shards
outside their dataset, shard members are not unpickled, checkpoints load weights-only, and a model
card can neither choose a detector plug-in nor a place to fetch a model from. No cluster needed."""

from __future__ import annotations

import io
import json
import pickle
import re
import tarfile
from pathlib import Path

import pytest

MARKER_NAME = "code-ran"


class Exploit:
    """A pickle that, when loaded, creates `path`: proof that loading ran code."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.mark.parametrize("rel", ["/etc/passwd", "../other/shards/a.tar", "shards/../../x.tar", "s3://other-bucket/a.tar",
                                 "x::s3://other/a.tar", "shards//a.tar", "./a.tar", "shards\\a.tar", "file:/a.tar", ""])
def test_child_refuses_what_escapes(rel):
    from dfdc import storage

    with pytest.raises(ValueError, match="not a relative path inside s3://b/ds"):
        storage.child("s3://b/ds", rel)


def test_child_joins_what_is_inside():
    from dfdc import storage

    assert storage.child("s3://b/ds", "shards/train/u-0000.tar") == "s3://b/ds/shards/train/u-0000.tar"
    assert storage.child("/data/ds/", "manifest.json") == "/data/ds/manifest.json"


def write_manifest(folder: Path, urls: list[str]) -> None:
    from data_pipeline import manifest as mf

    shards = [{"url": u, "split": "train", "samples": 1} for u in urls]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / mf.MANIFEST).write_text(json.dumps({"format": mf.FORMAT, "version": mf.VERSION, "shards": shards}))


@pytest.mark.parametrize("url", ["/tmp/elsewhere.tar", "../neighbour/shards/train/u-0000.tar", "s3://other-bucket/u.tar",
                                 "shards/train/u-0000.idx.json"])
def test_a_manifest_naming_shards_elsewhere_is_refused(tmp_path, url):
    from data_pipeline import manifest as mf

    write_manifest(tmp_path / "ds", ["shards/train/u-0000.tar", url])
    with pytest.raises(mf.ManifestError, match="shard url"):
        mf.load(str(tmp_path / "ds"))


def test_a_manifest_of_its_own_shards_loads(tmp_path):
    from data_pipeline import manifest as mf

    write_manifest(tmp_path / "ds", ["shards/train/u-0000.tar", "shards/train/u-0001.tar"])
    m = mf.load(str(tmp_path / "ds"))
    assert mf.shard_urls(str(tmp_path / "ds"), m, "train") == [str(tmp_path / "ds" / "shards/train/u-0000.tar"),
                                                               str(tmp_path / "ds" / "shards/train/u-0001.tar")]


def test_shard_members_other_than_jpg_and_json_are_not_decoded(tmp_path):
    """webdataset's default decoders unpickle `.pyd` and torch.load `.pth` members: the loaders
    decode only what they use, so a crafted shard cannot run code on a worker."""
    from PIL import Image

    from dfdc.config import DataConfig
    from train.data.loader import val_loader

    marker = tmp_path / MARKER_NAME
    jpg = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 30, 30)).save(jpg, format="JPEG")
    members = {"a.jpg": jpg.getvalue(), "a.json": json.dumps({"label": 1, "video": "v.mp4"}).encode(),
               "a.pyd": pickle.dumps(Exploit(marker)), "a.pth": pickle.dumps(Exploit(marker))}
    shard = tmp_path / "u-0000.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    pickle.loads(members["a.pyd"])  # the exploit does work when unpickled ...
    assert marker.exists()
    marker.unlink()
    batches = list(val_loader([str(shard)], DataConfig(image_size=16, batch_size=4, num_workers=0), 0, 1))
    assert sum(len(b.videos) for b in batches) == 1  # ... and the sample was read, without running it
    assert not marker.exists()


def test_weights_only_loads_overrides_what_deepspeed_asks_for(tmp_path):
    """DeepSpeed's loaders call torch.load(..., weights_only=False): inside `weights_only_loads` that
    call unpickles weights only; outside, the same call runs the file's code."""
    import torch

    from train.checkpoint import weights_only_loads

    marker = tmp_path / MARKER_NAME
    torch.save({"w": torch.zeros(2), "extra": Exploit(marker)}, tmp_path / "states.pt")
    with weights_only_loads(), pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "states.pt", weights_only=False)
    assert not marker.exists()
    torch.load(tmp_path / "states.pt", weights_only=False)  # the control: this is what it prevents
    assert marker.exists()


def test_a_checkpoint_that_carries_code_is_refused(tmp_path):
    import torch

    from train.checkpoint import TAG, consolidate

    marker = tmp_path / MARKER_NAME
    (tmp_path / TAG).mkdir()
    torch.save({"module": {"w": torch.zeros(2)}, "extra": Exploit(marker)}, tmp_path / TAG / "mp_rank_00_model_states.pt")
    with pytest.raises(pickle.UnpicklingError):
        consolidate(str(tmp_path))
    assert not marker.exists()
    torch.save({"module": {"w": torch.ones(2)}}, tmp_path / TAG / "mp_rank_00_model_states.pt")
    assert consolidate(str(tmp_path))["w"].tolist() == [1.0, 1.0]


def test_a_card_cannot_choose_a_detector_plugin():
    from data_pipeline.faces import build_detector, check_allowed
    from dfdc.config import ConfigError, DetectorConfig

    with pytest.raises(ConfigError, match="detector.plugins"):
        build_detector(DetectorConfig(name="os:system"), plugins=())
    with pytest.raises(ConfigError, match="detector.plugins"):
        check_allowed("evil.module:factory", ("mine.detectors:retina",))
    check_allowed("mine.detectors:retina", ("mine.detectors:retina",))
    check_allowed("mtcnn", ())
    check_allowed("mtcnn-facenet", ())


def test_scoring_refuses_a_card_with_a_plugin_it_does_not_allow(tmp_path):
    """`dfdc score` stops at the card, before any video is read or any module imported."""
    import subprocess
    import sys

    from train.model import file as model_file

    card = {"format": model_file.CARD_FORMAT, "detector": {"name": "os:system"}}
    (tmp_path / "model_fp32.pt").write_bytes(b"")
    (tmp_path / "model_fp32.json").write_text(json.dumps(card))
    (tmp_path / "clip.mp4").write_bytes(b"not read")
    proc = subprocess.run([sys.executable, "-m", "cli", "score", str(tmp_path / "clip.mp4"), "--checkpoint",
                           str(tmp_path / "model_fp32.pt")], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert proc.returncode != 0 and "'os:system'" in proc.stderr and "detector.plugins" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("name", ["hf-hub:someone/model", "local-dir:/tmp/model"])
def test_a_card_cannot_send_the_loader_elsewhere(name):
    from train.model.file import ModelFileError, card_model_config

    with pytest.raises(ModelFileError, match="timm architecture"):
        card_model_config({"model": {"name": name}}, "s3://b/runs/r/model_fp32.pt")
    cfg = card_model_config({"model": {"name": "efficientnet_b0", "pretrained": "s3://elsewhere/w.pth"}}, "m")
    assert cfg.pretrained is None


@pytest.mark.parametrize("timm_args, message", [
    ({"pretrained_cfg_overlay": {"file": "/tmp/w.pth"}}, "may not set pretrained_cfg_overlay"),
    ({"checkpoint_path": "s3://elsewhere/w.pth"}, "may not set checkpoint_path"),
    ({"act_layer": "/tmp/layer.py"}, "timm_args.act_layer: '/tmp/layer.py' is not a plain setting"),
    ({"global_pool": {"nested": 1}}, "timm_args.global_pool"),
    ({"act_layer": "hf-hub:someone/layer"}, "timm_args.act_layer"),
    ({"act_layer": "C:\\layer"}, "timm_args.act_layer"),
    ({"out_indices": [1, "a/b"]}, "timm_args.out_indices"),
])
def test_a_card_cannot_pass_timm_a_place_to_read(timm_args, message):
    from train.model.file import ModelFileError, card_model_config

    with pytest.raises(ModelFileError, match=re.escape(message)):
        card_model_config({"model": {"name": "vit_tiny_patch16_224", "timm_args": timm_args}}, "s3://b/runs/r/model_fp32.pt")
    ok = card_model_config({"model": {"name": "vit_tiny_patch16_224", "timm_args": {"img_size": [64, 64], "act_layer": "quick_gelu"}}}, "m")
    assert ok.timm_args == {"img_size": [64, 64], "act_layer": "quick_gelu"}
