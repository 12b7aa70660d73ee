"""The options several commands share, declared once (as sqlite-utils declares its shared options)."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import click

from ..store import DEFAULT_STORE, ENV_VAR, resolve_url

F = TypeVar("F", bound=Callable[..., Any])

STORE_HELP = (f"The store: a SQLite file path or URL, or a postgresql:// URL. Default: the --store given before "
              f"this command (trainprov --store X runs), else ${ENV_VAR}, else ./{DEFAULT_STORE}.")


def resolve_store(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    """The store a command reads: its own --store, else the nearest enclosing command's, else $TRAINPROV_STORE or the default."""
    if value is not None:
        return value
    parent = ctx.parent
    while parent is not None:
        # an enclosing group parsed (and resolved) its own --store before this command's options
        if parent.params.get("store") is not None:
            return parent.params["store"]
        parent = parent.parent
    return resolve_url(None)


def store_option(command: F) -> F:
    """Give a command or group `--store`, resolved to the store it reads (passed as `store`)."""
    return click.option("--store", "store", metavar="PATH|URL", default=None, callback=resolve_store,
                        help=STORE_HELP)(command)


def format_option(*choices: str, default: str = "table") -> Callable[[F], F]:
    """Give a command `--format` with these choices (passed as `fmt`)."""
    return click.option("--format", "fmt", type=click.Choice(list(choices)), default=default, show_default=True,
                        help="Output format.")


#: --format table|csv|json, what every command that prints rows takes
rows_format = format_option("table", "csv", "json")


#: --rank K, for the analyses of runs recorded by several processes
rank_option = click.option("--rank", type=click.IntRange(min=0), default=0, show_default=True,
                           help="In runs recorded by several processes, the values of this rank.")
