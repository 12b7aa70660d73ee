"""The `trainprov` command line: a click group and one module per family of commands.

Each command is a thin wrapper over one library call. `runs.py`: runs, show, query, schema.
`export.py`: export, lineage. `analyze.py`: the analyze group. `ui.py`: the dashboard.
`copy.py`: copy between stores. `reproduce.py`: diff, reproduce. `replay.py`: rows set aside during an outage.
`report.py`: a run's report. `search.py`: `analyze search`. `importing.py`: import. `check.py`: a run's rule violations.
`steer.py`: steer a running training.
`options.py` declares the shared options (`--store`,
`--format`) once; `output.py` holds the printing helpers. A new command is added below.
"""

from __future__ import annotations

from typing import Any

import click

from ..errors import TrainprovError
from .analyze import analyze
from .check import check_command
from .copy import copy_command
from .export import export_command, lineage_command
from .importing import import_group
from .options import store_option
from .replay import replay_command
from .report import report_command
from .reproduce import diff_command, reproduce_command
from .runs import query, runs, schema, show
from .search import search_command  # noqa: F401 - registers `analyze search`
from .steer import steer_command
from .ui import ui

__all__ = ["main"]


class TrainprovGroup(click.Group):
    """Turns trainprov's errors into one clear line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TrainprovError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=TrainprovGroup)
@store_option
@click.version_option(package_name="trainprov")
def main(store: str) -> None:
    """Provenance of deep-learning training, queryable with SQL while it runs."""


for command in (runs, show, query, schema, export_command, lineage_command, analyze, ui, copy_command, diff_command,
                reproduce_command, replay_command, report_command, import_group, check_command, steer_command):
    main.add_command(command)
