"""The processes that read data for a rank: loader workers, and the index's parallel read, come
from one fork server per process, which imports torch and the sample code once so that each
process it forks starts in milliseconds.

A process has one fork server, and its preload is fixed when it starts: whoever starts it first
must start it with the preload (an index read that started a bare one left every loader worker
importing torch itself, ~10 s each). Its children also get the environment of the moment it
started, not of the moment they are forked.

Not plain fork: a process that has used s3fs (its event loop thread, open connections) is not safe
to fork.
"""

from __future__ import annotations

import multiprocessing

# "__main__" too: else every child re-imports the main script, as spawn does.
PRELOAD = ["__main__", "torch", "torchvision", "webdataset", "s3fs", "train.data.samples", "train.data.transforms"]


def fork_server() -> multiprocessing.context.BaseContext:
    """The fork server's context, starting the server with the preload if it is not running yet.
    Returns at once: the server's imports (seconds) overlap the caller's own work."""
    from multiprocessing import forkserver  # noqa: PLC0415

    forkserver.set_forkserver_preload(PRELOAD)  # no effect once the server runs: then it has them
    forkserver.ensure_running()
    return multiprocessing.get_context("forkserver")
