"""The capacity plan's arithmetic (`dfdc plan`), on a made-up price table and corpus. No cluster."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.app import app
from cluster.capacity import Corpus, Rate, epoch_plan, ingest_plan
from train.cost import Prices

PRICES = Prices("2026-01-01", "test", {"cpu.node": {"spot": 2.0, "on_demand": 4.0}, "gpu.node": {"spot": 10.0, "on_demand": 30.0}},
                {"cpu.node": {"gpus": 0, "vcpus": 10}, "gpu.node": {"gpus": 8, "vcpus": 96}})
CORPUS = Corpus("test", videos=1_000, frames_per_video=10, crops_per_frame=1.5, raw_bytes=8 * 2**20 * 100)


def test_ingest_time_cost_and_gets():
    one, two = ingest_plan(CORPUS, Rate(10.0, "x"), PRICES, "cpu.node", [1, 2])
    assert one.hours == pytest.approx(10_000 / (10 * 10) / 3600)  # frames / (rate x vCPUs)
    assert one.dollars == pytest.approx(one.hours * 2.0)
    assert two.hours == pytest.approx(one.hours / 2) and two.dollars == pytest.approx(one.dollars)  # linear scaling
    assert one.gets_per_s == pytest.approx(100 / (10_000 / 100))  # 100 blocks of 8 MiB over 100 s
    assert one.prefixes == 1
    # Difference masks: CPU seconds per fake crop on top (15,000 crops, half of them fakes')
    [masked] = ingest_plan(Corpus("test", 1_000, 10, 1.5, 8 * 2**20 * 100, fake_fraction=0.5), Rate(10.0, "x"), PRICES,
                           "cpu.node", [1], diff_seconds=0.04)
    assert masked.hours == pytest.approx(one.hours + 15_000 * 0.5 * 0.04 / 10 / 3600)
    [outlined] = ingest_plan(CORPUS, Rate(10.0, "x"), PRICES, "cpu.node", [1], outline_seconds=0.02)  # every crop
    assert outlined.hours == pytest.approx(one.hours + 15_000 * 0.02 / 10 / 3600)


def test_epochs_time_cost_gets_and_prefixes():
    one, many = epoch_plan(CORPUS, Rate(100.0, "x"), PRICES, "gpu.node", [1, 10], epochs=4)
    assert one.hours == pytest.approx(15_000 * 4 / 800 / 3600)  # crops x epochs / (rate x 8 GPUs)
    assert one.dollars == pytest.approx(one.hours * 10.0)
    assert one.gets_per_s == 800 and one.prefixes == 1  # one GET per sample
    assert many.gets_per_s == 8_000 and many.prefixes == 2  # more than 5,500 GET/s: a second prefix
    assert one.get_dollars == pytest.approx(15_000 * 4 / 1000 * 0.0004)


def test_an_epoch_cut_from_a_pass_prices_its_share_of_the_corpus():
    """data.samples_per_epoch: 4 epochs of ~4,000 of the 15,000 crops cost one pass (k = 4)."""
    [whole] = epoch_plan(CORPUS, Rate(100.0, "x"), PRICES, "gpu.node", [1], epochs=4)
    [cut] = epoch_plan(CORPUS, Rate(100.0, "x"), PRICES, "gpu.node", [1], epochs=4, samples_per_epoch=4_000)
    assert cut.hours == pytest.approx(whole.hours / 4) and cut.get_dollars == pytest.approx(whole.get_dollars / 4)


def test_the_block_orders_gets_per_sample_and_key_prefixes_divide_the_request_rate():
    from cluster.capacity import gets_per_sample

    blocks = gets_per_sample("blocks", 32)
    assert blocks.value == 1 / 32 and gets_per_sample("permutation", 32).value == 1.0
    [row] = epoch_plan(CORPUS, Rate(100.0, "x"), PRICES, "gpu.node", [10], epochs=4, gets=blocks, key_prefixes=4)
    assert row.gets_per_s == 8_000 / 32 and row.gets_per_prefix == 8_000 / 32 / 4 and row.prefixes == 1
    assert row.get_dollars == pytest.approx(15_000 * 4 / 32 / 1000 * 0.0004)


def test_a_node_type_the_table_lacks_is_named():
    with pytest.raises(ValueError, match="'cpu.node' has no gpus.*known: gpu.node"):
        epoch_plan(CORPUS, Rate(10.0, "x"), PRICES, "cpu.node", [1])  # a CPU node given for training
    with pytest.raises(ValueError, match="'p9.huge' has no gpus"):
        epoch_plan(CORPUS, Rate(10.0, "x"), PRICES, "p9.huge", [1])


def test_dfdc_plan_prints_the_three_tables_with_their_sources():
    out = CliRunner().invoke(app, ["plan", "--nodes", "1,4"])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    for part in ("119,154 videos x 32 frames", "an epoch: 119,154 crops, a pass cut in 32 (data.samples_per_epoch=120,000)",
                 "ingest on c7i.8xlarge", "one epoch on p5.48xlarge",
                 "the recipe (40 epochs)", "183.7 images/s per GPU (no rate measured", "prefixes needed", "spot prices of 2026-11-29",
                 "0.03125 GETs per sample (the block order", "GET/s per prefix", "GET $"):
        assert part in text, part
    # The B7 recipe's model was never measured: the plan says so and uses the default
    assert "no rate measured for this recipe's model (tf_efficientnet_b7.ns_jft_in1k at 380 px" in text
    # The ingest rate measured at the recipe's own detector settings (his thresholds, min_face_size 60)
    assert "ingest rate: 21.25 sampled frames/s per vCPU (`dfdc ingest` on 2 cores here: 42.5" in text, text
    gend = " ".join(CliRunner().invoke(app, ["plan", "--nodes", "1", "--config", "configs/gend_clip_vitl14_ffpp.yaml"]).output.split())
    assert "training rate: 569.2 images/s per GPU (one H200, GenD's" in gend, gend
    # The B7 recipe's batch a step is the winner's on its 4 GPUs: the plan says what more GPUs do to it;
    # GenD's 8 fill one node
    assert "the recipe trains on 4 GPU(s) (ray.num_workers), 12 crops a GPU; rows with more GPUs (8 a p5.48xlarge)" in text
    assert "the recipe trains on" not in gend
    other = " ".join(CliRunner().invoke(app, ["plan", "--nodes", "1", "--set", "detector.min_face_size=20"]).output.split())
    assert "ingest rate: 22.25 sampled frames/s per vCPU (no ingest rate measured with this detector at these settings" in other, other
    # facenet-pytorch's own MTCNN code was measured too, slower: its rate, not the batched one's
    facenet = " ".join(CliRunner().invoke(app, ["plan", "--nodes", "1", "--set", "detector.name=mtcnn-facenet"]).output.split())
    assert "ingest rate: 19.9 sampled frames/s per vCPU (`dfdc ingest` on 2 cores here: 39.8" in facenet, facenet
    bad = CliRunner().invoke(app, ["plan", "--nodes", "0,x"])
    assert bad.exit_code == 2 and "--nodes" in bad.output
