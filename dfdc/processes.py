"""Whether a process on this machine is still running: for locks and servers whose owner may have died."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True while `pid` runs. A zombie (exited, not yet reaped by its parent) counts as gone; a process
    of another user that this one may not signal counts as running."""
    if pid <= 0:  # 0 and negatives name process groups to os.kill, never one process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:  # no /proc (macOS): os.kill said it exists
        return True
