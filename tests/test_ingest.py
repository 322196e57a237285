"""The whole ingest on real parts: rclone's S3 server, a Ray cluster, PyAV, MTCNN."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import webdataset as wds

from dfdc import storage
from dfdc.config import load_config
from data_pipeline import manifest as mf
from data_pipeline import shard_index
from data_pipeline.ingest import IngestError, ingest
from data_pipeline.synth import synth
from tests.conftest import TINY
from tests.corpus import faceless_video, face_videos, metadata, put, zipped

SYNTH = ["synth.width=160", "synth.height=120", "synth.identities=4", "detector.min_face_size=20"]


def tiny(*extra: str):
    return load_config(None, TINY + SYNTH + list(extra))


def read_samples(dest: str, manifest: dict, tmp_path) -> list[dict]:
    """Every sample of every listed shard, read with plain webdataset from a downloaded copy."""
    out = []
    for shard in manifest["shards"]:
        local = tmp_path / shard["url"].replace("/", "_")
        local.write_bytes(storage.read_bytes(storage.join(dest, shard["url"])))
        samples = list(wds.WebDataset(str(local), shardshuffle=False))
        assert len(samples) == shard["samples"]
        for s in samples:
            meta = json.loads(s["json"])
            assert s["jpg"][:2] == b"\xff\xd8", "a JPEG"
            assert meta["split"] == shard["split"]
            out.append({"key": s["__key__"], **meta})
    return out


def test_synthetic_corpus_end_to_end(bucket, ray_address, tmp_path):
    cfg = tiny("synth.videos=9", "ingest.key_prefixes=3")
    synth(f"{bucket}/raw", cfg.synth, log=lambda *_: None)
    meta = {}
    for part in ("dfdc_train_part_0", "dfdc_train_part_1"):
        meta.update({f"{part}/{k}": v for k, v in json.loads(storage.read_bytes(f"{bucket}/raw/{part}/metadata.json")).items()})

    summary = ingest(f"{bucket}/raw", f"{bucket}/faces", cfg, progress=False, log=lambda *_: None)
    m = mf.load(f"{bucket}/faces")
    assert m["videos"]["ingested"] == 9 and m["quarantine"] == []
    assert summary.units_run > 0 and summary.units_skipped == 0
    # Shards spread over 3 key prefixes (S3 serves each ~5,500 GET/s), each unit's under one; the
    # manifest records the setting.
    import re
    assert m["config"]["ingest"]["key_prefixes"] == 3
    assert all(re.fullmatch(r"shards/[0-2]/(train|val)/[^/]+\.tar", sh["url"]) for sh in m["shards"]), m["shards"]
    assert len({sh["url"].split("/")[1] for sh in m["shards"]}) >= 2
    samples = read_samples(f"{bucket}/faces", m, tmp_path)
    keys = [s["key"] for s in samples]
    assert len(keys) == len(set(keys)) == sum(sh["samples"] for sh in m["shards"])
    assert {s["video"] for s in samples} == set(meta)
    for s in samples:
        assert s["label"] == int(meta[s["video"]]["label"] == "FAKE")
        assert s["dataset"] == "dfdc" and len(s["box"]) == 4
        for field in ("original", "frame", "face", "group", "method"):
            assert field in s
        # MTCNN's five points, in the crop: eyes above the mouth, the nose between
        (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = s["landmarks"]
        assert all(0.1 < v < 0.9 for p in s["landmarks"] for v in p), s["landmarks"]
        assert lx < rx and mlx < mrx and max(ly, ry) < ny < min(mly, mry)
    # The shards' indexes hold each sample's label and source video (paired batches, real-only epochs)
    index = {row[0]: row for sh in m["shards"] for row in shard_index.read(storage.join(f"{bucket}/faces", sh["url"]))}
    assert all(index[s["key"]][3:] == [s["label"], s["original"] or s["video"]] for s in samples)
    # Every group on one side; counts in the manifest match the shards.
    sides = {}
    for s in samples:
        sides.setdefault(s["group"], set()).add(s["split"])
    assert all(len(v) == 1 for v in sides.values())
    for split, t in m["splits"].items():
        assert t["samples"] == sum(s["split"] == split for s in samples)
        assert t["fake"] == sum(s["split"] == split and s["label"] == 1 for s in samples)
    # Fakes reuse their original's boxes: same frames, same boxes, detection run on reals only.
    boxes = {(s["video"], s["frame"], s["face"]): s["box"] for s in samples}
    fakes = [s for s in samples if s["label"] == 1]
    assert fakes
    for s in fakes:
        assert boxes[(s["original"], s["frame"], s["face"])] == s["box"]
    assert m["faces_detected_videos"] == sum(v["label"] == "REAL" for v in meta.values())

    # GNU tar reads the shards too.
    local = tmp_path / "one.tar"
    local.write_bytes(storage.read_bytes(storage.join(f"{bucket}/faces", m["shards"][0]["url"])))
    listing = subprocess.run(["tar", "-tf", str(local)], capture_output=True, text=True, check=True).stdout.split()
    assert len(listing) == 2 * m["shards"][0]["samples"]

    # Run again on finished work: nothing to do, nothing rewritten.
    before = storage.list_files(f"{bucket}/faces")
    again = ingest(f"{bucket}/raw", f"{bucket}/faces", cfg, progress=False, log=lambda *_: None)
    assert again.nothing_to_do and again.units_run == 0
    assert storage.list_files(f"{bucket}/faces") == before

    # Another config into the same dest is refused, with a message naming the dest.
    with pytest.raises(IngestError, match="another source or config"):
        ingest(f"{bucket}/raw", f"{bucket}/faces", tiny("synth.videos=9", "ingest.margin=0.5"), progress=False, log=lambda *_: None)


def corrupt_member(zip_bytes: bytes, payload: bytes) -> bytes:
    at = zip_bytes.index(payload) + len(payload) // 2
    return zip_bytes[:at] + bytes(b ^ 0xFF for b in zip_bytes[at:at + 64]) + zip_bytes[at + 64:]


def unsupported_compression(zip_bytes: bytes, name: str) -> bytes:
    """The zip with `name` marked as Deflate64 (method 9), which Python's zipfile cannot read."""
    out = bytearray(zip_bytes)
    for signature, method_at, name_len_at, name_at in ((b"PK\x03\x04", 8, 26, 30), (b"PK\x01\x02", 10, 28, 46)):
        at = out.find(signature)
        while at >= 0:
            length = int.from_bytes(out[at + name_len_at:at + name_len_at + 2], "little")
            if out[at + name_at:at + name_at + length] == name.encode():
                out[at + method_at:at + method_at + 2] = (9).to_bytes(2, "little")
            at = out.find(signature, at + 4)
    return bytes(out)


def test_bad_inputs_are_quarantined_and_the_rest_goes_on(bucket, ray_address, tmp_path):
    real, fake, zipped_good, zipped_bad = face_videos(4)
    root = f"{bucket}/raw"
    put(root, {
        "dfdc_train_part_0/metadata.json": metadata({
            "real.mp4": ("REAL", None), "fake.mp4": ("FAKE", "real.mp4"), "empty.mp4": ("REAL", None),
            "cut.mp4": ("REAL", None), "text.mp4": ("FAKE", None), "noface.mp4": ("REAL", None),
            "missing.mp4": ("FAKE", "real.mp4"),
        }),
        "dfdc_train_part_0/real.mp4": real,
        "dfdc_train_part_0/fake.mp4": fake,
        "dfdc_train_part_0/empty.mp4": b"",
        "dfdc_train_part_0/cut.mp4": real[: len(real) // 2],
        "dfdc_train_part_0/text.mp4": b"I am a text file with an mp4 name\n" * 20,
        "dfdc_train_part_0/noface.mp4": faceless_video(),
        "dfdc_train_part_0/stray.mp4": real,
        "dfdc_train_part_1/metadata.json": b"{not json",
        "dfdc_train_part_1/orphan.mp4": real,
    })
    z = zipped({"dfdc_train_part_2/metadata.json": metadata({"good.mp4": ("REAL", None), "bad.mp4": ("REAL", None),
                                                             "odd.mp4": ("REAL", None)}),
                "dfdc_train_part_2/good.mp4": zipped_good, "dfdc_train_part_2/bad.mp4": zipped_bad,
                "dfdc_train_part_2/odd.mp4": real})
    z = unsupported_compression(corrupt_member(z, zipped_bad), "dfdc_train_part_2/odd.mp4")
    put(root, {"dfdc_train_part_2.zip": z})

    ingest(root, f"{bucket}/faces", tiny(), progress=False, log=lambda *_: None)
    m = mf.load(f"{bucket}/faces")
    got = {(q["video"], q["reason"]) for q in m["quarantine"]}
    assert got == {
        ("dfdc_train_part_0/empty.mp4", "empty_file"),
        ("dfdc_train_part_0/cut.mp4", "unreadable_video"),
        ("dfdc_train_part_0/text.mp4", "unreadable_video"),
        ("dfdc_train_part_0/noface.mp4", "no_face"),
        ("dfdc_train_part_0/missing.mp4", "missing_file"),
        ("dfdc_train_part_0/stray.mp4", "no_metadata_entry"),
        ("dfdc_train_part_1/metadata.json", "malformed_metadata"),
        ("dfdc_train_part_1/orphan.mp4", "no_metadata_entry"),
        ("dfdc_train_part_2/bad.mp4", "unreadable_zip_member"),
        ("dfdc_train_part_2/odd.mp4", "unreadable_zip_member"),  # zipfile's NotImplementedError: content, not a failure
    }
    assert all(q["detail"] for q in m["quarantine"])
    assert m["quarantine_counts"]["no_metadata_entry"] == 2
    # Videos set aside while ingesting keep their label and split (evaluation scores them 0.5);
    # those set aside while listing have none.
    by_video = {q["video"]: q for q in m["quarantine"]}
    assert by_video["dfdc_train_part_0/noface.mp4"]["label"] == 0 and by_video["dfdc_train_part_0/text.mp4"]["label"] == 1
    assert by_video["dfdc_train_part_0/noface.mp4"]["split"] in m["splits"]
    assert by_video["dfdc_train_part_0/stray.mp4"].get("label") is None
    from train.evaluation.evaluate import split_of

    _, missing, _ = split_of(f"{bucket}/faces", "all")
    assert {q["video"] for q in missing} == {"dfdc_train_part_0/empty.mp4", "dfdc_train_part_0/cut.mp4", "dfdc_train_part_0/text.mp4",
                                             "dfdc_train_part_0/noface.mp4", "dfdc_train_part_2/bad.mp4", "dfdc_train_part_2/odd.mp4"}
    samples = read_samples(f"{bucket}/faces", m, tmp_path)
    assert {s["video"] for s in samples} == {"dfdc_train_part_0/real.mp4", "dfdc_train_part_0/fake.mp4", "dfdc_train_part_2/good.mp4"}
    assert m["videos"]["ingested"] == 3


def unit_records(dest: str) -> int:
    return sum(p.endswith(".json") for p in storage.list_files(f"{dest}/_ingest/units"))


def test_killed_ingest_resumes_to_the_same_samples(bucket, ray_address, tmp_path):
    overrides = TINY + SYNTH + ["synth.videos=30", "ingest.videos_per_task=1"]
    cfg = load_config(None, overrides)
    synth(f"{bucket}/raw", cfg.synth, log=lambda *_: None)
    ingest(f"{bucket}/raw", f"{bucket}/ref", cfg, progress=False, log=lambda *_: None)
    reference = Counter(s["key"] for s in read_samples(f"{bucket}/ref", mf.load(f"{bucket}/ref"), tmp_path))

    dest = f"{bucket}/killed"
    cmd = [sys.executable, "-m", "cli", "ingest", "--source", f"{bucket}/raw", "--dest", dest,
           "--ray-address", ray_address, "--no-progress"] + [a for o in overrides for a in ("--set", o)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    while unit_records(dest) == 0:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no unit finished in time"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not storage.exists(f"{dest}/manifest.json"), "killed before the end"
    done_before = unit_records(dest)

    summary = ingest(f"{bucket}/raw", dest, cfg, progress=False, log=lambda *_: None)
    assert summary.units_skipped >= done_before >= 1 and summary.units_run >= 1
    resumed = Counter(s["key"] for s in read_samples(dest, mf.load(dest), tmp_path))
    assert resumed == reference  # none lost, none twice


def test_ingest_against_moto(moto_server, ray_address, tmp_path, monkeypatch):
    import s3fs

    for k, v in {"AWS_ENDPOINT_URL": moto_server, "AWS_ACCESS_KEY_ID": "any", "AWS_SECRET_ACCESS_KEY": "any"}.items():
        monkeypatch.setenv(k, v)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        s3fs.S3FileSystem().mkdir("moto")
        real, fake = face_videos(2)
        put("s3://moto/raw", {"dfdc_train_part_0/metadata.json": metadata({"r.mp4": ("REAL", None), "f.mp4": ("FAKE", "r.mp4")}),
                              "dfdc_train_part_0/r.mp4": real, "dfdc_train_part_0/f.mp4": fake})
        ingest("s3://moto/raw", "s3://moto/faces", tiny(), progress=False, log=lambda *_: None)
        m = mf.load("s3://moto/faces")
        assert m["videos"]["ingested"] == 2
        assert len(read_samples("s3://moto/faces", m, tmp_path)) == sum(s["samples"] for s in m["shards"]) > 0
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


def test_local_folders_work_too(ray_address, tmp_path):
    real, fake = face_videos(2)
    put(str(tmp_path / "raw"), {"dfdc_train_part_0/metadata.json": metadata({"r.mp4": ("REAL", None), "f.mp4": ("FAKE", "r.mp4")}),
                                "dfdc_train_part_0/r.mp4": real, "dfdc_train_part_0/f.mp4": fake})
    ingest(str(tmp_path / "raw"), str(tmp_path / "faces"), tiny(), progress=False, log=lambda *_: None)
    m = mf.load(str(tmp_path / "faces"))
    assert m["videos"]["ingested"] == 2
    assert not [p for p in os.listdir(tmp_path / "faces" / "shards" / m["shards"][0]["split"]) if p.startswith(".tmp")]


def test_refused_credentials_fail_the_units_set_nothing_aside_and_a_rerun_gets_everything(s3_server, ray_address, tmp_path, monkeypatch):
    """An S3 server that refuses the credentials the cluster's workers hold (they resolve their own:
    here the Ray head's environment; the driver's keys are good, so listing works). The ingest fails,
    names the cause, and sets no video aside. Once the server accepts the workers' keys (an operator
    fixing the role), the same command ingests every video."""
    import s3fs

    from cluster.local.s3_server import free_port, start_s3_server

    port, root = free_port(), tmp_path / "s3"
    server = start_s3_server(root, port, "other-key-123", "other-secret-456", tmp_path / "s3.log")
    try:
        for k, v in server.env().items():  # this process (the driver) holds this server's keys
            monkeypatch.setenv(k, v)
        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir("creds")
        cfg = tiny("synth.videos=6")
        synth("s3://creds/raw", cfg.synth, log=lambda *_: None)
        with pytest.raises(IngestError, match=r"nothing of theirs was set aside.*s3://creds/raw/\S+: credentials refused"):
            ingest("s3://creds/raw", "s3://creds/faces", cfg, progress=False, log=lambda *_: None)
        assert not storage.exists("s3://creds/faces/manifest.json")
        assert storage.list_files("s3://creds/faces/_ingest/units") == {} and storage.list_files("s3://creds/faces/shards") == {}

        server.stop()
        server = start_s3_server(root, port, s3_server.key, s3_server.secret, tmp_path / "s3.log")
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        s3fs.S3FileSystem.clear_instance_cache()
        ingest("s3://creds/raw", "s3://creds/faces", cfg, progress=False, log=lambda *_: None)
        m = mf.load("s3://creds/faces")
        assert m["videos"]["ingested"] == 6 and m["quarantine"] == []
        assert len(read_samples("s3://creds/faces", m, tmp_path)) == sum(s["samples"] for s in m["shards"]) > 0
    finally:
        server.stop()
        monkeypatch.undo()
        s3fs.S3FileSystem.clear_instance_cache()
