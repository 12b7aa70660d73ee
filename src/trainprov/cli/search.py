"""`trainprov analyze search GROUP`: a hyperparameter search's best trials, importance and pruning."""

from __future__ import annotations

import json

import click
import pandas as pd

from ..searches import search_summary
from .analyze import analyze
from .options import format_option, store_option
from .output import emit_frame, json_frame


@analyze.command("search")
@click.argument("group")
@click.option("--top", type=int, default=5, show_default=True, help="Show this many best trials.")
@format_option("table", "json")
@store_option
def search_command(group: str, top: int, fmt: str, store: str) -> None:
    """A search (run GROUP): best trials, importance of each hyperparameter, pruned trials."""
    summary = search_summary(group, store, top=top)
    importance = pd.DataFrame([{"hyperparameter": k, "importance": v} for k, v in summary.importance.items()])
    if fmt == "json":
        click.echo(json.dumps({"group": summary.group, "direction": summary.direction, "best": json_frame(summary.best),
                               "trials": json_frame(summary.trials), "importance": summary.importance,
                               "importance_method": summary.importance_method, "pruned": summary.pruned},
                              indent=2, default=str))
        return
    info = summary.group
    p = summary.pruned
    click.echo(f"search {group} ({info.get('kind') or 'run group'}), {summary.direction}: {p['trials']} trials, "
               f"{p['complete']} complete, {p['pruned']} pruned, {p['failed']} failed")
    click.echo(f"\n== best {len(summary.best)} trials")
    emit_frame(summary.best, "table", empty="no complete trial yet")
    click.echo(f"\n== importance ({summary.importance_method})")
    emit_frame(importance, "table", empty="not enough complete trials")
    click.echo("\n== pruned trials")
    if p["pruned"]:
        steps = ", ".join(f"step {k}: {v}" for k, v in p["pruned_at_step"].items())
        click.echo(f"{p['pruned']} of {p['trials']} ({p['pruned_share']:.0%}), pruned at {steps}; mean step {p['mean_pruned_step']:.1f}")
        if p["time_saved_s"] is not None:
            click.echo(f"mean duration {p['mean_duration_pruned_s']:.2f} s pruned, {p['mean_duration_complete_s']:.2f} s complete; "
                       f"about {p['time_saved_s']:.1f} s saved")
    else:
        click.echo("none")
