"""The command-line reference (docs/cli.md) documents every command, subcommand and option the CLI has.

Modelled on sqlite-utils' tests/test_docs.py: the commands are found from the click group
itself, so a new command or option fails here until it is documented.
"""

from __future__ import annotations

import os
import re

import click
import pytest

from conftest import ROOT
from trainprov.cli import main

REFERENCE = os.path.join(ROOT, "docs", "cli.md")


def every_command(group: click.Group = main, path: tuple[str, ...] = ()):
    """Every command and subcommand with its path, found from the click group."""
    for name, command in sorted(group.commands.items()):
        yield path + (name,), command
        if isinstance(command, click.Group):
            yield from every_command(command, path + (name,))


def sections() -> dict[str, str]:
    """The reference's sections by the command their heading names (`trainprov analyze best`), with their text."""
    text = open(REFERENCE, encoding="utf-8").read()
    found: dict[str, str] = {}
    parts = re.split(r"^(#+ .*)$", text, flags=re.M)
    for heading, body in zip(parts[1::2], parts[2::2]):
        named = re.search(r"`trainprov ([a-z][a-z-]*(?: [a-z][a-z-]*)*)", heading)  # the lowercase words: the command
        if named:
            found[named.group(1)] = heading + body
    return found


def documented_names(command: click.Command) -> list[str]:
    """What the reference must mention of a command: each option's flags and each argument."""
    names = []
    for param in command.params:
        if isinstance(param, click.Option):
            names += [flag for flag in (*param.opts, *param.secondary_opts) if flag.startswith("--")]
        else:
            names.append(param.human_readable_name)
    return names


COMMANDS = list(every_command())


@pytest.mark.parametrize("path, command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_and_option_is_in_the_reference(path, command):
    section = sections().get(" ".join(path))
    assert section is not None, f"docs/cli.md has no section for `trainprov {' '.join(path)}`"
    missing = [name for name in documented_names(command) if not re.search(rf"{re.escape(name)}(?![\w-])", section)]
    assert not missing, f"the section of `trainprov {' '.join(path)}` in docs/cli.md does not mention {missing}"


def test_the_reference_documents_no_command_that_does_not_exist():
    known = {" ".join(path) for path, _ in COMMANDS}
    assert set(sections()) - known == set()


def test_the_group_options_and_the_reference_are_linked_from_the_guides():
    text = open(REFERENCE, encoding="utf-8").read()
    assert all(name in text for name in documented_names(main))
    for guide in ("README.md", os.path.join("docs", "user-guide.md")):
        assert "cli.md" in open(os.path.join(ROOT, guide), encoding="utf-8").read(), guide
