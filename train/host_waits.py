"""Counts, over a stretch of training code, what makes the host wait for the accelerator. A GPU
runs ahead of Python only while the host keeps queueing work; each of these drains the queue:

- `device_syncs`: DeepSpeed's accelerator synchronize calls (its throughput timer makes two a step
  unless the config turns it off);
- `reads`: tensor values read back to the host (`.item()`, `bool(t)`, `float(t)`: aten's
  `_local_scalar_dense`); on a GPU each waits for every kernel queued before it;
- `from_python`: tensors made from Python values (`torch.tensor([...])`, aten's `lift_fresh`); made
  on a GPU, each is a copy from pageable memory that the host waits for;
- `ops`: every aten op dispatched, about one kernel launch each on a GPU.

They are counted the same way on a CPU, which has no queue to drain, so a test on this machine can
hold the step to none (tests/test_engine.py), and `bench/step_syncs.py` can print them beside the
step's time. On a GPU, `torch.cuda.set_sync_debug_mode` counts the synchronizations themselves.
"""

from __future__ import annotations

import collections
import traceback

from torch.utils._python_dispatch import TorchDispatchMode

WAITS = {"_local_scalar_dense": "reads", "lift_fresh": "from_python"}


class HostWaits(TorchDispatchMode):
    """`with HostWaits() as w: ...`, then `w.counts` and `w.where` (the code that asked for each wait)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter = collections.Counter()
        self.where: collections.Counter = collections.Counter()
        self._accelerator = None

    def __enter__(self):
        from deepspeed.accelerator import get_accelerator  # noqa: PLC0415  (slow import; only where training runs)

        acc = self._accelerator = get_accelerator()
        self._synchronize = acc.synchronize

        def synchronize(*args, **kwargs):
            self._note("device_syncs")
            return self._synchronize(*args, **kwargs)

        acc.synchronize = synchronize
        return super().__enter__()

    def __exit__(self, *exc):
        self._accelerator.synchronize = self._synchronize
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts["ops"] += 1
        kind = WAITS.get(func.overloadpacket.__name__)
        if kind:
            self._note(kind)
        return func(*args, **(kwargs or {}))

    def _note(self, kind: str) -> None:
        self.counts[kind] += 1
        frames = [f for f in traceback.extract_stack()[:-2] if "torch/utils/_python_dispatch" not in f.filename
                  and "host_waits.py" not in f.filename and "torch/_dynamo" not in f.filename and "torch/_compile" not in f.filename]
        if frames:
            f = frames[-1]
            self.where[f"{kind} at {f.filename.split('site-packages/')[-1]}:{f.lineno}"] += 1


def per_step(waits: HostWaits, steps: int) -> dict[str, float]:
    """The counts of `steps` steps, per step."""
    return {k: waits.counts[k] / steps for k in ("ops", "device_syncs", "reads", "from_python")}
