"""The local stack behind `dfdc local up|down|status|env`: an S3 server on 127.0.0.1 whose data
lives in the project folder, so that a restart keeps every object.

State sits in `$DFDC_HOME` (default `./.dfdc`): `s3/` holds the objects, `local.json` the port,
keys and the pid of what `up` started; `down` stops only that pid.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from cluster.local.s3_server import S3Server, free_port, port_in_use, start_s3_server, stop_pid
from dfdc.processes import pid_alive

DEFAULT_BUCKET = "dfdc"
DEFAULT_PORT = 9000


def home() -> Path:
    return Path(os.environ.get("DFDC_HOME", ".dfdc")).resolve()


@dataclass
class LocalState:
    port: int
    key: str
    secret: str
    pid: int | None = None

    def server(self) -> S3Server:
        return S3Server(root=home() / "s3", port=self.port, key=self.key, secret=self.secret, pid=self.pid or 0)


def _state_path() -> Path:
    return home() / "local.json"


def load_state() -> LocalState | None:
    path = _state_path()
    if not path.exists():
        return None
    return LocalState(**json.loads(path.read_text()))


def _save_state(state: LocalState) -> None:
    _state_path().parent.mkdir(parents=True, exist_ok=True)
    _state_path().write_text(json.dumps(asdict(state), indent=2))


def is_running(state: LocalState | None) -> bool:
    if state is None or not state.pid or not pid_alive(state.pid):
        return False
    # The pid must still be our rclone, not a process that reused the number.
    try:
        cmdline = Path(f"/proc/{state.pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return "rclone" in cmdline and str(home() / "s3") in cmdline


def up(port: int | None = None, bucket: str = DEFAULT_BUCKET) -> tuple[LocalState, bool]:
    """Start the S3 server unless it runs already; make sure `bucket` exists. Returns (state, started)."""
    state = load_state()
    if is_running(state):
        started = False
    else:
        if state is None:
            # Keys are made once and kept, so URLs and env files stay valid across restarts.
            if port is None:
                port = DEFAULT_PORT if not port_in_use(DEFAULT_PORT) else free_port()
            state = LocalState(port=port, key="dfdc-" + secrets.token_hex(6), secret=secrets.token_hex(16))
        elif port:
            state.port = port
        server = start_s3_server(home() / "s3", state.port, state.key, state.secret, home() / "logs" / "s3.log")
        state.pid = server.pid
        _save_state(state)
        started = True
    ensure_bucket(state.server(), bucket)
    return state, started


def ensure_bucket(server: S3Server, bucket: str) -> None:
    import s3fs  # noqa: PLC0415  (slow import; only needed here)

    fs = s3fs.S3FileSystem(key=server.key, secret=server.secret, endpoint_url=server.endpoint)
    if not fs.exists(bucket):
        fs.mkdir(bucket)


def down() -> bool:
    """Stop the server that `up` started. Returns whether something was stopped."""
    state = load_state()
    if not is_running(state):
        return False
    stop_pid(state.pid)
    state.pid = None
    _save_state(state)
    return True


def env_lines(state: LocalState) -> list[str]:
    return [f"export {k}={v}" for k, v in state.server().env().items()]
