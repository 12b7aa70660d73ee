"""`trainprov import csv|tensorboard|mlflow`: runs other tools logged, brought into the store."""

from __future__ import annotations

import click

from ..importers import import_csv, import_mlflow, import_tensorboard
from .options import store_option


@click.group("import")
@store_option
def import_group(store: str) -> None:
    """Import runs logged by other tools (docs/import.md); importing again adds nothing."""


@import_group.command("csv")
@click.argument("file")
@click.option("--name", help="The run's name (default: the file's folder).")
@click.option("--group", help="Put the run in this run group.")
@store_option
def csv_command(file: str, name: str | None, group: str | None, store: str) -> None:
    """A Keras CSVLogger file or a Lightning CSVLogger metrics.csv as one run."""
    for line in import_csv(file, store, name=name, group=group).lines():
        click.echo(line)


@import_group.command("tensorboard")
@click.argument("logdir")
@click.option("--group", help="Put the runs in this run group.")
@store_option
def tensorboard_command(logdir: str, group: str | None, store: str) -> None:
    """Every run (folder of event files) under LOGDIR: scalars per tag and step, hparams."""
    for line in import_tensorboard(logdir, store, group=group).lines():
        click.echo(line)


@import_group.command("mlflow")
@click.argument("source")
@store_option
def mlflow_command(source: str, store: str) -> None:
    """Every run of an MLflow store: a file store folder (./mlruns) or a URI (sqlite:///mlflow.db)."""
    for line in import_mlflow(source, store).lines():
        click.echo(line)
