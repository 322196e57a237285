"""The run lock (train/run_lock.py) against moto, which honours If-None-Match and If-Match as S3
does, and against rclone's server, which ignores them (the lock then says so and does not hold)."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time

import pytest
import s3fs

from train.run_lock import RunLock, RunLocked


@pytest.fixture
def moto_fs(moto_server):
    fs = s3fs.S3FileSystem(endpoint_url=moto_server, key="any", secret="any", use_listings_cache=False)
    if not fs.exists("locktest"):
        fs.mkdir("locktest")
    return fs


def test_one_driver_holds_a_run_and_the_next_gets_it_once_released(moto_fs):
    run = "s3://locktest/runs/one"
    first = RunLock(run, lease_s=60, fs=moto_fs).acquire()
    assert first.held
    with pytest.raises(RunLocked, match=r"driver\.lock is held by the driver on .* \(pid \d+\) until"):
        RunLock(run, lease_s=60, fs=moto_fs).acquire()
    first.release()
    assert not moto_fs.exists("locktest/runs/one/driver.lock")
    with RunLock(run, lease_s=60, fs=moto_fs) as second:
        assert second.held


def test_of_drivers_racing_for_a_run_exactly_one_wins(moto_fs):
    won, refused = [], []

    def start():
        try:
            won.append(RunLock("s3://locktest/runs/race", lease_s=60, fs=moto_fs).acquire())
        except RunLocked:
            refused.append(1)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 5
    won[0].release()


def _stopped_renewing(lock: RunLock, host: str) -> RunLock:
    """`lock` held by a driver on `host` that then stopped renewing (it died): its lease runs out."""
    lock.owner["host"] = host
    lock.acquire()
    lock._stop.set()
    lock._thread.join()
    return lock


def test_a_dead_drivers_lock_is_taken_over_and_its_renewal_then_fails(moto_fs, caplog):
    run = "s3://locktest/runs/dead"
    gone = _stopped_renewing(RunLock(run, lease_s=1.5, fs=moto_fs), "another-host")
    with pytest.raises(RunLocked):
        RunLock(run, lease_s=60, fs=moto_fs).acquire()  # still within its lease
    time.sleep(1.6)
    taker = RunLock(run, lease_s=60, fs=moto_fs).acquire()
    assert taker.held
    with pytest.raises(OSError):  # the old driver's next renewal names an ETag that is no longer there
        gone._put(IfMatch=gone.etag)
    taker.release()
    # A driver of this host whose process is gone: taken over at once, lease or not.
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    crashed = RunLock(run, lease_s=600, fs=moto_fs)
    crashed.owner["pid"] = int(done.stdout)
    crashed.acquire()
    crashed._stop.set()
    with RunLock(run, lease_s=60, fs=moto_fs) as after:
        assert after.held


def test_a_retried_trial_waits_out_its_dead_attempts_lease_but_not_a_live_drivers(moto_fs):
    """What a sweep's retried trial meets: the lock of its own earlier attempt, on a node that is
    gone (another host, no renewals). With wait_s it waits for the lease and takes the lock; a live
    driver renews meanwhile, so waiting for it still ends in RunLocked."""
    run = "s3://locktest/runs/retried"
    _stopped_renewing(RunLock(run, lease_s=2.0, fs=moto_fs), "a-reclaimed-node")
    started = time.monotonic()
    retried = RunLock(run, lease_s=60, fs=moto_fs).acquire(wait_s=60)
    assert retried.held and 0.5 < time.monotonic() - started < 10
    retried.release()

    live = RunLock(run, lease_s=3.0, fs=moto_fs)
    live.owner["host"] = "a-live-node"
    live.acquire()  # renews every second
    started = time.monotonic()
    with pytest.raises(RunLocked):
        RunLock(run, lease_s=60, fs=moto_fs).acquire(wait_s=60)
    assert time.monotonic() - started < 10  # one wait for the lease it saw, not a loop
    with pytest.raises(RunLocked):
        RunLock(run, lease_s=60, fs=moto_fs).acquire(wait_s=0.5)  # a lease that ends later than wait_s: at once
    live.release()


def test_a_server_that_ignores_conditional_writes_is_named_and_the_run_goes_on_unlocked(s3_server, caplog):
    with caplog.at_level(logging.WARNING, logger="train.run_lock"):
        lock = RunLock("s3://test/runs/rclone-lock", lease_s=60).acquire()
    assert not lock.held and "ignores conditional writes" in caplog.text
    lock.release()
    assert not s3fs.S3FileSystem().exists("test/runs/rclone-lock/driver.lock")  # nothing left in the run's folder


def test_a_second_driver_of_a_running_run_is_refused_before_it_starts_anything(moto_server, moto_fs, monkeypatch, tmp_path):
    from dfdc.config import load_config
    from train.run import run

    for k, v in {"AWS_ENDPOINT_URL": moto_server, "AWS_ACCESS_KEY_ID": "any", "AWS_SECRET_ACCESS_KEY": "any"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        cfg = load_config(None, ["ray.storage_path=s3://locktest/runs", "ray.run_name=busy", "data.dataset=s3://locktest/none",
                                 f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "ray.address=127.0.0.1:1"])
        with RunLock("s3://locktest/runs/busy", lease_s=60, fs=moto_fs):
            with pytest.raises(RunLocked, match="another driver is running this run"):
                run(cfg, tmp_path, log=lambda *_: None)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
