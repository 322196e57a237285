"""`dfdc local ...`: the local stack, an S3 server on 127.0.0.1."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cli.common import (console, fail, local_app)


@local_app.command("up")
def local_up(port: Annotated[Optional[int], typer.Option(metavar="PORT", help="Port for the S3 server (kept for later runs).")] = None):
    """Start the local S3 server (data kept in .dfdc/s3) and create the bucket 'dfdc'.

    Example: dfdc local up && eval "$(dfdc local env)"
    """
    from cluster.local import stack as local  # noqa: PLC0415

    try:
        state, started = local.up(port)
    except RuntimeError as e:
        raise fail(str(e)) from e
    server = state.server()
    console.print(f"S3 server {'started' if started else 'already running'} at {server.endpoint} (pid {state.pid}), "
                  f"bucket s3://{local.DEFAULT_BUCKET}, data in {server.root}")
    console.print("Point S3 clients at it with:")
    for line in local.env_lines(state):
        console.print(f"  {line}", highlight=False)


@local_app.command("down")
def local_down():
    """Stop what `dfdc local up` started (by its pid); the data stays on disk.

    Example: dfdc local down
    """
    from cluster.local import stack as local  # noqa: PLC0415

    console.print("stopped the S3 server" if local.down() else "nothing to stop")


@local_app.command("status")
def local_status():
    """Say whether the local S3 server runs, and where. Exit status 0 when it runs, 3 when it does not
    (as `systemctl status` says "not running"), so scripts can test it.

    Example: dfdc local status || dfdc local up
    """
    from cluster.local import stack as local  # noqa: PLC0415

    state = local.load_state()
    if local.is_running(state):
        console.print(f"S3 server running at {state.server().endpoint} (pid {state.pid}), data in {state.server().root}")
    else:
        console.print("S3 server not running" + ("" if state else " (never started here)"))
        raise typer.Exit(3)


@local_app.command("env")
def local_env():
    """Print `export` lines that point S3 clients at the local server.

    Example: eval "$(dfdc local env)"
    """
    from cluster.local import stack as local  # noqa: PLC0415

    state = local.load_state()
    if state is None:
        raise fail("the local stack was never started here: run dfdc local up")
    typer.echo("\n".join(local.env_lines(state)))
