"""`trainprov analyze ...`: the analysis queries of trainprov.analysis, with parameters, printed as tables."""

from __future__ import annotations

import json

import click

from .. import analysis
from ..query import Reader
from .options import format_option, rank_option, rows_format, store_option
from .output import emit_frame, json_frame

@click.group("analyze")
@store_option
def analyze(store: str) -> None:
    """The analysis queries, with parameters (see docs/analysis.md)."""


@analyze.command("runs")
@click.option("--status", type=click.Choice(["running", "finished", "failed", "interrupted"]))
@click.option("--dataflow", help="Only runs of this dataflow.")
@click.option("-m", "--metric", "metrics", multiple=True, help="Show the best of this metric (repeatable; default: all).")
@click.option("--hp/--no-hp", "with_hp", default=True, show_default=True, help="Add the hyperparameters.")
@rows_format
@rank_option
@store_option
def runs_command(status: str | None, dataflow: str | None, metrics: tuple[str, ...], with_hp: bool,
                 rank: int, store: str, fmt: str) -> None:
    """Every run with status, duration, epochs run, the best of each metric and hyperparameters."""
    frame = analysis.runs_overview(metrics=list(metrics) or None, status=status, dataflow=dataflow,
                                   hyperparameters=None if with_hp else False, rank=rank, store=store)
    emit_frame(frame, fmt, empty="no runs")


@analyze.command("best")
@click.argument("metric", default="val_loss")
@click.option("--by", "statistic", type=click.Choice(["min", "max", "last"]), default=None,
              help="Rank by the minimum, maximum or last value over each run's history "
                   "[default: max for metrics where higher is better (accuracy, ...), else min].")
@click.option("--at", "epoch", type=int, help="Rank by the value at this epoch instead.")
@click.option("--ascending/--descending", default=None, help="Override the order (best first by default).")
@click.option("--hp", "hps", multiple=True, help="Show this hyperparameter (repeatable; default: all recorded).")
@click.option("--no-hp", is_flag=True, help="No hyperparameter columns.")
@click.option("--status", type=click.Choice(["running", "finished", "failed", "interrupted"]))
@click.option("--dataflow", help="Only runs of this dataflow.")
@click.option("--dataset", default=analysis.EPOCH_DATASET, show_default=True, help="The metrics dataset.")
@click.option("--limit", type=int, help="At most this many runs.")
@rows_format
@rank_option
@store_option
def best_command(metric: str, statistic: str | None, epoch: int | None, ascending: bool | None,
                 hps: tuple[str, ...], no_hp: bool, status: str | None, dataflow: str | None, dataset: str,
                 limit: int | None, rank: int, store: str, fmt: str) -> None:
    """Runs ranked by METRIC over its whole history (min, max, last, or at an epoch)."""
    if epoch is not None and statistic is not None:
        raise click.UsageError("give --by or --at, not both")
    frame = analysis.best_runs(
        metric, statistic, epoch=epoch, dataset=dataset, ascending=ascending,
        hyperparameters=False if no_hp else (list(hps) or None), status=status, dataflow=dataflow, limit=limit,
        rank=rank, store=store,
    )
    emit_frame(frame, fmt, empty=f"no run has a value of {metric}")


@analyze.command("progress")
@click.argument("run", required=False)
@click.option("--last", type=int, default=5, show_default=True, help="How many epochs.")
@rows_format
@rank_option
@store_option
def progress_command(run: str | None, last: int, rank: int, store: str, fmt: str) -> None:
    """The last epochs of RUN (default: the run that recorded an epoch most recently)."""
    emit_frame(analysis.progress(run, last=last, rank=rank, store=store), fmt, empty="no epochs recorded yet")


@analyze.command("adaptations")
@click.option("--metric", default="val_loss", show_default=True)
@click.option("--window", type=int, default=3, show_default=True, help="Epochs before and after each change.")
@click.option("--parameter", default="learning_rate", show_default=True, help="The adapted parameter.")
@click.option("--run", "runs", multiple=True, help="Only this run (repeatable).")
@rows_format
@rank_option
@store_option
def adaptations_command(metric: str, window: int, parameter: str, runs: tuple[str, ...],
                        rank: int, store: str, fmt: str) -> None:
    """Effect of each adaptation: the mean metric in the epochs before it and from it."""
    frame = analysis.adaptation_effect(metric, window=window, parameter=parameter, runs=list(runs) or None,
                                       rank=rank, store=store)
    emit_frame(frame, fmt, empty=f"no adaptation of {parameter}")


@analyze.command("convergence")
@click.option("--metric", default="val_loss", show_default=True)
@click.option("--tolerance", type=float, default=0.01, show_default=True, help="Relative distance to the best value.")
@click.option("--by", "statistic", type=click.Choice(["min", "max"]), default=None,
              help="Best is the minimum or maximum [default: from the metric's name].")
@rows_format
@rank_option
@store_option
def convergence_command(metric: str, tolerance: float, statistic: str | None, rank: int, store: str,
                        fmt: str) -> None:
    """The first epoch within TOLERANCE of each run's best, and the epochs run after it."""
    frame = analysis.convergence(metric, tolerance=tolerance, statistic=statistic, rank=rank, store=store)  # type: ignore[arg-type]
    emit_frame(frame, fmt, empty=f"no run has a value of {metric}")


@analyze.command("epoch-time")
@click.option("--by", "by", multiple=True, help="Group by this hyperparameter (repeatable; default: "
              + ", ".join(analysis.EPOCH_TIME_BY) + ").")
@rows_format
@rank_option
@store_option
def epoch_time_command(by: tuple[str, ...], rank: int, store: str, fmt: str) -> None:
    """Mean, fastest and slowest epoch per configuration."""
    emit_frame(analysis.epoch_time(list(by) or None, rank=rank, store=store), fmt)


@analyze.command("architecture")
@click.option("--metric", default="loss", show_default=True, help="The test metric to rank by.")
@rows_format
@rank_option
@store_option
def architecture_command(metric: str, rank: int, store: str, fmt: str) -> None:
    """Architecture facts of each evaluated model next to its test results."""
    emit_frame(analysis.architecture_vs_test(metric, rank=rank, store=store), fmt, empty="no evaluation recorded")


@analyze.command("hyperparameters")
@click.argument("runs", nargs=-1, required=True)
@click.option("--all", "show_all", is_flag=True, help="Every hyperparameter, not only those that differ.")
@rows_format
@rank_option
@store_option
def hyperparameters_command(runs: tuple[str, ...], show_all: bool, rank: int, store: str, fmt: str) -> None:
    """The hyperparameters that differ between RUNS (ids, unique prefixes or 'latest')."""
    frame = analysis.hyperparameters(list(runs), rank=rank, store=store).T if show_all else \
        analysis.differing_hyperparameters(list(runs), rank=rank, store=store)
    frame.index.name = "hyperparameter"
    emit_frame(frame, fmt, index=True, empty="no hyperparameter differs")


@analyze.command("curves")
@click.argument("runs", nargs=-1, required=True)
@click.option("--metric", default="val_loss", show_default=True)
@rows_format
@rank_option
@store_option
def curves_command(runs: tuple[str, ...], metric: str, rank: int, store: str, fmt: str) -> None:
    """One metric of RUNS side by side, epoch by epoch."""
    emit_frame(analysis.side_by_side(list(runs), metric, rank=rank, store=store), fmt, index=True)


@analyze.command("divergence")
@click.argument("runs", nargs=-1, required=True)
@click.option("--metric", default="val_loss", show_default=True)
@click.option("--tolerance", type=float, default=analysis.DIVERGENCE_TOLERANCE, show_default=True, help="Relative gap that counts as apart.")
@click.option("--patience", type=int, default=analysis.DIVERGENCE_PATIENCE, show_default=True, help="Consecutive epochs apart that make a divergence.")
@rows_format
@rank_option
@store_option
def divergence_command(runs: tuple[str, ...], metric: str, tolerance: float, patience: int,
                       rank: int, store: str, fmt: str) -> None:
    """The epoch from which each pair of RUNS stays apart (docs/analysis.md defines it)."""
    frame = analysis.divergence(list(runs), metric, tolerance=tolerance, patience=patience, rank=rank, store=store)
    emit_frame(frame, fmt)


@analyze.command("compare")
@click.argument("runs", nargs=-1, required=True)
@click.option("--metric", default="val_loss", show_default=True)
@click.option("--tolerance", type=float, default=analysis.DIVERGENCE_TOLERANCE, show_default=True)
@click.option("--patience", type=int, default=analysis.DIVERGENCE_PATIENCE, show_default=True)
@format_option("table", "json")
@rank_option
@store_option
def compare_command(runs: tuple[str, ...], metric: str, tolerance: float, patience: int,
                    fmt: str, rank: int, store: str) -> None:
    """Compare RUNS: differing hyperparameters, where they diverge, and METRIC side by side."""
    if len(runs) < 2:
        raise click.UsageError("compare needs two runs or more")
    with Reader(store) as reader:
        hp = analysis.differing_hyperparameters(list(runs), rank=rank, store=reader)
        hp.index.name = "hyperparameter"
        div = analysis.divergence(list(runs), metric, tolerance=tolerance, patience=patience, rank=rank, store=reader)
        wide = analysis.side_by_side(list(runs), metric, rank=rank, store=reader)
    if fmt == "json":
        click.echo(json.dumps({"hyperparameters": json_frame(hp, index=True), "divergence": json_frame(div),
                               "curves": json_frame(wide, index=True)}, indent=2, default=str))
        return
    click.echo("== hyperparameters that differ")
    emit_frame(hp, "table", index=True, empty="none: the runs share every hyperparameter "
               "(`trainprov diff A B` also compares layers, data, code and environment)")
    click.echo(f"\n== divergence of {metric} (gap > {tolerance:g} for {patience} epochs)")
    emit_frame(div, "table")
    click.echo(f"\n== {metric} side by side")
    emit_frame(wide, "table", index=True)
