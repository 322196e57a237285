"""The train set's compact index (train/data/index.py) on local shards: built once per node however
many processes ask at once, memory-mapped, pickled to loader workers as a path, compact dtypes."""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from data_pipeline import shard_index
from train.data import index
from train.data.index import TrainSet, load_train_set, train_set_of
from train.data.order import BlockOrder
from tests.test_train_data import write_shard


def _dataset(root) -> tuple[str, dict]:
    sizes = {"a.tar": 5, "b.tar": 17, "c.tar": 9}
    for i, (name, n) in enumerate(sizes.items()):
        write_shard(f"{root}/{name}", n, i % 2, start=100 * i)
    shard_index.ensure([f"{root}/{name}" for name in sizes], log=lambda *_: None)
    manifest = {"shards": [{"url": name, "split": "train", "samples": n} for name, n in sizes.items()]}
    return str(root), manifest


def test_a_node_builds_the_index_once_and_every_process_maps_it(tmp_path, monkeypatch):
    dataset, manifest = _dataset(tmp_path / "data")
    held = load_train_set([f"{dataset}/{s['url']}" for s in manifest["shards"]], [5, 17, 9])
    builds = []
    real = index.index_arrays

    def counted(*args, **kwargs):
        builds.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(index, "index_arrays", counted)
    cache = str(tmp_path / "cache")
    got: list[TrainSet] = []
    threads = [threading.Thread(target=lambda: got.append(train_set_of(dataset, manifest, cache=cache))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(got) == 4
    for train in got:
        assert isinstance(train.starts, np.memmap) and train.starts.dtype == np.uint32 and train.units is None
        assert np.array_equal(train.starts, held.starts) and np.array_equal(train.ends, held.ends)
        assert train.samples == 31 and train.folder == got[0].folder
    # A loader worker gets the folder's path, not the arrays, and maps the same files.
    data = pickle.dumps(got[0])
    assert len(data) < 2_000 and held.starts.tobytes() not in data
    again = pickle.loads(data)
    assert isinstance(again.ends, np.memmap) and np.array_equal(again.ends, held.ends)
    # Another shape of the epoch (real crops only) is another index, with its units.
    reals = train_set_of(dataset, manifest, fakes=False, cache=cache)
    assert len(builds) == 2 and reals.folder != got[0].folder and reals.units.dtype == np.int32
    assert reals.samples == 5 + 9 and (reals.units[5:22] == -1).all()


def test_a_build_cut_off_leaves_nothing_that_is_read_as_done(tmp_path):
    folder = tmp_path / "cache" / "key"

    def dies():
        raise OSError("the node ran out of disk")

    try:
        index.node_index(folder, dies)
    except OSError:
        pass
    assert not folder.exists() and not [p for p in folder.parent.iterdir() if p.name.startswith("key.") and p.is_dir()]
    folder.mkdir()  # a folder a killed build left without `done` is built again
    (folder / "starts.npy").write_bytes(b"half")
    out = index.node_index(folder, lambda: (np.arange(3, dtype=np.uint32), np.arange(1, 4, dtype=np.uint32), None))
    assert np.array_equal(np.load(out / "starts.npy"), [0, 1, 2]) and (out / "done").exists()


_AFTER_A_PARALLEL_BUILD = """
import multiprocessing as mp, sys
import numpy as np
from tests.test_index import _dataset
sys.path.insert(0, sys.argv[2])
from probe import preloaded  # a module that imports nothing itself
from train.data import index
from train.data.workers import fork_server
dataset, manifest = _dataset(sys.argv[1])
alone = index.train_set_of(dataset, manifest, pairing="video", cache=None)
index.PARALLEL_SHARDS = 2  # many shards are read by several processes: the same arrays
split = index.train_set_of(dataset, manifest, pairing="video", cache=None)
print(all(np.array_equal(getattr(alone, k), getattr(split, k)) for k in ("starts", "ends", "units")))
fork_server()
queue = mp.get_context("forkserver").SimpleQueue()
worker = mp.get_context("forkserver").Process(target=preloaded, args=(queue,))
worker.start(); worker.join()
print(queue.get())
"""


def test_the_parallel_index_read_gives_the_same_arrays_and_leaves_the_fork_server_to_the_loader(tmp_path):
    """Many shards are read by several processes, with the same result. The loader's workers come
    from a fork server that preloads torch (seconds saved per worker). A process has one server,
    its preload set at its start: an index read that started it first, without the preload, left
    every loader worker importing torch itself (a loader test took 108 s instead of 15)."""
    (tmp_path / "probe.py").write_text('import sys\ndef preloaded(queue):\n    queue.put("torch" in sys.modules)\n')
    out = subprocess.run([sys.executable, "-c", _AFTER_A_PARALLEL_BUILD, str(tmp_path / "data"), str(tmp_path)], capture_output=True,
                         text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    same, preloaded = out.stdout.split()[-2:]
    assert same == "True", "the parallel read gave other arrays"
    assert preloaded == "True", "a loader worker started without torch loaded"
    # Run in a process of its own: the fork server keeps the environment of its start, and the
    # session's S3 settings may not be set yet.


def test_the_block_order_is_computed_once_per_node_and_mapped(tmp_path, monkeypatch):
    """Every process of a node maps the epoch's block order from one folder beside the index, the
    same order BlockOrder computes; pickled to a loader worker it is the folder's path; folders of
    epochs long past are removed."""
    dataset, manifest = _dataset(tmp_path / "data")
    train = train_set_of(dataset, manifest, cache=str(tmp_path / "cache"))
    computed = [BlockOrder(train.counts, 7, epoch, 4, 2, 2, 4) for epoch in range(5)]
    builds = []
    real = BlockOrder.__init__

    def counted(self, *args, **kwargs):
        builds.append(1)
        real(self, *args, **kwargs)

    monkeypatch.setattr(BlockOrder, "__init__", counted)
    for epoch in range(5):
        got = [index.node_order(train, 7, epoch, 4, 2, 2, 4) for _ in range(3)]
        assert len(builds) == epoch + 1  # once per epoch, however many ask
        for order in got:
            assert isinstance(order.arrays["piece_first"], np.memmap) and np.array_equal(order.all(), computed[epoch].all())
        data = pickle.dumps(got[0])
        assert len(data) < 2_000 and np.array_equal(pickle.loads(data).all(), computed[epoch].all())
    folders = sorted(p.name.rsplit("-", 1)[1] for p in (tmp_path / "cache").iterdir() if ".order-" in p.name and p.is_dir())
    assert folders == ["2", "3", "4"]
    other = index.node_order(train, 8, 4, 4, 2, 2, 4)  # another seed: another folder, another order
    assert not np.array_equal(other.all(), got[0].all())
    # An epoch shaped by units (real crops only): the units travel as the index's file too.
    reals = train_set_of(dataset, manifest, fakes=False, cache=str(tmp_path / "cache"))
    shaped = index.node_order(reals, 7, 0, 4, 2, 2, 4)
    data = pickle.dumps(shaped)
    again = pickle.loads(data)
    assert reals.units.tobytes() not in data and isinstance(again.units, np.memmap) and np.array_equal(again.all(), shaped.all())
