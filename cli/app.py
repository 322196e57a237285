"""The `dfdc` command: a thin layer on top that parses arguments and calls into the stages (no stage
imports it), one module per group of commands (data, training, evaluation, cluster, local), each
importing its stage only when run, so `dfdc --help` stays fast. Storage failures and a Ray cluster
that does not answer end any command in one line that names the URI or address, the cause and the fix."""

from __future__ import annotations

import sys

# The commands register on `app` as these import, in this order (`dfdc --help` lists them so).
from cli import data  # noqa: F401, I001
from cli import training  # noqa: F401
from cli import evaluation  # noqa: F401
from cli import cluster  # noqa: F401
from cli import local  # noqa: F401
from cli.common import Command, app, fail
from dfdc.storage import StorageError

__all__ = ["app", "main"]


def _use_command_class(typer_app) -> None:
    for info in typer_app.registered_commands:
        info.cls = Command  # none sets a class of its own
    for group in typer_app.registered_groups:
        _use_command_class(group.typer_instance)


_use_command_class(app)


def main() -> None:
    """The `dfdc` script."""
    from dfdc.reach import Unreachable  # noqa: PLC0415

    try:
        app()
    except (StorageError, Unreachable) as e:  # storage, or a Ray or MLflow that does not answer: one line, not a traceback
        fail(str(e))
        sys.exit(1)


if __name__ == "__main__":
    main()
