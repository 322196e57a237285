"""What every `dfdc` command module shares: the typer apps, the consoles, `fail` (one line on stderr),
the options several commands take, and reading the config, the checkpoint and the local home."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from dfdc.config import Config, ConfigError, load_config

app = typer.Typer(help="Train deepfake-video detectors at scale: ingest corpora into face-crop shards, train, evaluate, "
                       "score and sweep on Ray, submit jobs to a cluster, plan their cost, run the local stack.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
local_app = typer.Typer(help="The local stack: an S3 server on 127.0.0.1 with its data in ./.dfdc (or $DFDC_HOME).",
                        no_args_is_help=True)
app.add_typer(local_app, name="local")
ledger_app = typer.Typer(help="The ledger of a run trained with data.ledger=true: which samples every rank trained on.",
                         no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")
mlflow_app = typer.Typer(help="The MLflow tracking server a cluster shares.", no_args_is_help=True)
app.add_typer(mlflow_app, name="mlflow")
spot_app = typer.Typer(help="EC2 spot instances: the interruption notice.", no_args_is_help=True)
app.add_typer(spot_app, name="spot")
console = Console()
errors = Console(stderr=True, soft_wrap=True)  # one error, one line: easy to grep


class Command(typer.core.TyperCommand):
    """typer labels each parameter in help with its Python type (`<str>`, `<bool>`); the options here
    say what they take through their metavars, and the labels of typer's own --help and of the
    positional arguments go too. Every command gets this class (cli/app.py)."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, typer.core.TyperArgument):
                param.display_type_rich = lambda ctx: None  # the usage line names it already


def fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    return typer.Exit(code)


# Two kinds of Ray address, named apart as Ray's own CLI has them: the GCS (HEAD_IP:6379: `ray start
# --address`, ray.init; RAY_ADDRESS) that stages and the spot watcher join, and the dashboard URL
# (http://HEAD_IP:8265: `ray job submit --address`; RAY_API_SERVER_ADDRESS, else RAY_ADDRESS) that
# jobs go through.
RayAddressOpt = Annotated[Optional[str], typer.Option(
    "--ray-address", metavar="HOST:PORT", help="The Ray cluster's GCS address, HEAD_IP:6379 (default: RAY_ADDRESS, else a Ray of this process's own).")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", metavar="FILE", help="YAML config (see configs/); embedded defaults otherwise.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help="Override one key, e.g. --set ingest.frames_per_video=16. Repeatable.")]


def config_of(path: Path | None, sets: list[str] | None) -> Config:
    try:
        return load_config(path, sets or [])
    except ConfigError as e:
        raise fail(str(e), 2) from e


TorchScriptOpt = Annotated[bool, typer.Option("--torchscript", metavar="", help="Load a TorchScript model file (what `dfdc export` writes). Loading one runs the code inside it: only for files you trust.")]
CheckpointOpt = Annotated[str, typer.Option("--checkpoint", metavar="URI", help="The trained model: model_fp32.pt a training run wrote (local or s3://), its TorchScript export (with --torchscript), or models:/NAME/VERSION or models:/NAME@ALIAS from MLflow's registry.")]


def existing_checkpoint(checkpoint: str) -> str:
    """The --checkpoint as given, once it exists (models:/ names are resolved later): checked before
    the commands import torch, so a wrong path is named at once, as the user wrote it."""
    if not checkpoint.startswith("models:/"):
        from dfdc import storage  # noqa: PLC0415

        if not storage.exists(checkpoint):
            raise fail(f"--checkpoint {checkpoint} does not exist (give a model_fp32.pt a training run wrote, its TorchScript "
                       f"export, or models:/NAME/VERSION)", 2)
    return checkpoint


def model_file(checkpoint: str, cfg: Config) -> str:
    """A registered model (models:/...) as the model file it stands for; other URIs as they are."""
    from train import tracking  # noqa: PLC0415
    from train.model.file import ModelFileError, resolve  # noqa: PLC0415

    if not checkpoint.startswith("models:/"):
        return checkpoint
    tracking.resolve(cfg, home())
    try:
        found = resolve(checkpoint, cfg.tracking.uri)
    except ModelFileError as e:
        raise fail(str(e)) from e
    errors.print(f"{checkpoint}: {found}", highlight=False)
    return found


def home() -> Path:
    from cluster.local.stack import home  # noqa: PLC0415

    return home()
