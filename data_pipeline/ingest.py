"""`dfdc ingest`: a source corpus in, face-crop shards and `manifest.json` out, as Ray tasks.

Resume works by units: the plan (splits and units) is a pure function of the listing and the
config; each unit writes its shards under fixed names, then a small record of what it wrote. A rerun
skips units that have a record and redoes the others (rewriting the same shard names), so a killed
ingest ends with the same samples, none lost and none twice. The manifest comes last.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

from dfdc import storage
from dfdc.config import Config
from data_pipeline import manifest as mf
from data_pipeline.plan import Unit, assign_splits, make_units, plan_digest
from data_pipeline.records import Quarantined, VideoRecord
from data_pipeline.sources import discover


class IngestError(RuntimeError):
    pass


@dataclass
class Summary:
    manifest: dict
    units_run: int
    units_skipped: int
    nothing_to_do: bool = False


def ingest(source: str, dest: str, cfg: Config, dataset: str | None = None, progress: bool = True, log=print) -> Summary:
    existing = mf.read_json(storage.join(dest, mf.MANIFEST))
    dataset, scan = discover(source, dataset, cfg.ingest.include)
    records = assign_splits(scan.records, cfg.ingest.seed, cfg.ingest.val_fraction)
    units = make_units(records, cfg.ingest.videos_per_task)
    plan_uri = storage.join(dest, mf.PLAN)
    old_plan = mf.read_json(plan_uri)
    # Compared with what an earlier run recorded: keys added to the config since, at their defaults,
    # do not make the same ingest "another config" after an upgrade.
    settings = cfg.digest("ingest", "detector", known=(existing or old_plan or {}).get("config"))
    digest = plan_digest(source, dataset, records, units, settings)
    if existing is not None:
        if existing.get("plan") == digest:
            log(f"{dest} already holds this ingest ({len(existing['shards'])} shards, "
                f"{sum(s['samples'] for s in existing['shards'])} samples): nothing to do")
            return Summary(existing, 0, len(units), nothing_to_do=True)
        raise IngestError(f"{dest} already holds a finished ingest of another source or config: choose another --dest")

    plan = {
        "digest": digest,
        "source": source,
        "dataset": dataset,
        "videos": len(records),
        "config": {"ingest": dataclasses.asdict(cfg.ingest), "detector": dataclasses.asdict(cfg.detector)},
        "units": [dataclasses.asdict(u) for u in units],
        "scan_quarantine": [dataclasses.asdict(q) for q in scan.quarantine],
        "left_out": scan.left_out,  # by ingest.include
    }
    if old_plan is not None and old_plan.get("digest") != digest:
        raise IngestError(f"{dest} holds an unfinished ingest of another source or config (plan {old_plan.get('digest')}, "
                          f"now {digest}): rerun with the same source and config, or choose another --dest")
    if old_plan is None:
        mf.write_json(plan_uri, plan)

    done_files = storage.list_files(storage.join(dest, "_ingest/units"))
    done = {u.name: mf.read_json(storage.join(dest, mf.unit_record_path(u.name))) for u in units if f"{u.name}.json" in done_files}
    todo = [u for u in units if u.name not in done]
    log(f"ingest {source} ({dataset}) -> {dest}: {len(records)} videos in {len(units)} units "
        f"({len(done)} already done), {len(scan.quarantine)} set aside while listing"
        + (f", {scan.left_out} left out by ingest.include" if cfg.ingest.include else ""))

    by_video = {r.video: r for r in records}
    failed: list[str] = []
    if todo:
        results, failed = _run_units(todo, by_video, dest, cfg, progress)
        done.update(results)
    if failed:
        raise IngestError(f"{len(failed)} of {len(units)} unit(s) failed and nothing of theirs was set aside; the other "
                          f"{len(done)} are kept: fix the cause and run the same command again to finish. "
                          f"First failure: {failed[0]}")
    manifest = mf.build(plan, [done[u.name] for u in units], plan["scan_quarantine"])
    mf.write_json(storage.join(dest, mf.MANIFEST), manifest)
    return Summary(manifest, len(todo), len(units) - len(todo))


def _run_units(todo: list[Unit], by_video: dict[str, VideoRecord], dest: str, cfg: Config, progress: bool):
    from dfdc.ray_tasks import RayTasks  # noqa: PLC0415

    cfg_dict = cfg.to_dict()
    calls = {u.name: ([by_video[v] for v in u.videos], u.name, u.split, dest, cfg_dict) for u in todo}
    size = {u.name: len(u.videos) for u in todo}
    results, failed = {}, []
    with RayTasks(run_unit, "ingest", "videos", sum(size.values()), address=cfg.ray.address, cpus=cfg.ray.cpus_per_task,
                  gpus=cfg.ray.gpus_per_task, progress=progress, faces=0, quarantined=0, failed_units=0) as work:
        for name, record, error in work.map(calls):
            if error is not None:  # storage failed, a worker died, a bug: the unit is redone by a rerun
                failed.append(f"{name}: {error}")
                work.note(f"[red]unit {name} failed[/red]: {error}")
                work.advance(size[name], failed_units=1)
                continue
            results[name] = record
            work.advance(size[name], faces=record["samples"], quarantined=len(record["quarantine"]))
    return results, failed


_DETECTORS: dict = {}


def run_unit(records: list[VideoRecord], name: str, split: str, dest: str, cfg_dict: dict) -> dict:
    """One unit of work (runs as a Ray task): its videos' crops into shards, then its record."""
    from data_pipeline.extract import VideoReader, extract  # noqa: PLC0415
    from data_pipeline.faces import build_detector  # noqa: PLC0415
    from data_pipeline.frames import VideoError  # noqa: PLC0415
    from data_pipeline.shards import ShardWriter  # noqa: PLC0415
    from dfdc.config import config_from_dict  # noqa: PLC0415

    cfg = config_from_dict(cfg_dict)
    key = cfg.digest("detector")
    if key not in _DETECTORS:  # a Ray worker runs many units: load the model once
        _DETECTORS[key] = build_detector(cfg.detector)
    detector = _DETECTORS[key]

    reader = VideoReader()
    writer = ShardWriter(dest, name, split, cfg.ingest.shard_bytes, cfg.ingest.key_prefixes)
    quarantine: list[Quarantined] = []
    faces_of: dict[str, dict] = {}
    crops_of: dict[str, dict] = {}  # with ingest.difference_masks: the current group's real crops (~28 MB at B7's settings)
    group = None
    frames = videos_ok = detected = samples = 0
    try:
        for record in records:
            if record.group != group:  # a unit holds whole groups, one after another: the last one's crops are done with
                crops_of.clear()
                group = record.group
            reuse = faces_of.get(record.original) if cfg.ingest.reuse_original_boxes and record.original else None
            try:
                result = extract(record, reader.read(record), detector, cfg.ingest, reuse, crops_of.get(record.original),
                                 keep_crops=cfg.ingest.difference_masks and record.label == 0)
            except VideoError as e:  # the video's own content: set aside, and the other videos go on
                quarantine.append(Quarantined(record.video, e.reason, e.detail, record.label, split, record.dataset, record.method))
                continue
            # Anything else (storage, credentials, network, the detector) fails the unit, so that a
            # rerun retries it: only a file's own content may set it aside for good.
            if record.label == 0:
                faces_of[record.video] = result.faces
                if result.crops:
                    crops_of[record.video] = result.crops
            detected += not result.reused
            for sample in result.samples:
                writer.write(sample)
            frames += result.frames
            samples += len(result.samples)
            videos_ok += 1
        shards = writer.close()
    finally:
        reader.close()
        writer.discard()
    record = {
        "unit": name,
        "split": split,
        "videos": len(records),
        "videos_ok": videos_ok,
        "videos_detected": detected,
        "frames": frames,
        "samples": samples,
        "shards": [dataclasses.asdict(s) for s in shards],
        "quarantine": [dataclasses.asdict(q) for q in quarantine],
        "reasons": dict(Counter(q.reason for q in quarantine)),
    }
    # Written after every shard of the unit is in place: its presence means the unit is done.
    mf.write_json(storage.join(dest, mf.unit_record_path(name)), record)
    return record
