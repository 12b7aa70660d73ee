"""What reproduces a run, from its record: command, code, packages, data, seeds, environment.

`plan` gathers it, `Reproduction.write` puts it in a folder (a script, a pinned
requirements file, the recorded patch, the data files' digests), and `check` compares this
machine's environment and files with the record. Nothing is re-executed.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from .capture import reproduction
from .capture.run import file_sha256
from .rundiff import Change, compare_mappings
from .query import Reader
from .record import RunRecord, read


@dataclass
class DataFile:
    """A file the run used, and whether it is still here unchanged."""

    path: str
    role: str | None
    sha256: str
    size_bytes: int | None
    status: str  # unchanged, changed, missing


@dataclass
class Reproduction:
    """Everything the record says about running a run again."""

    run_id: str
    store: str
    command: str | None
    argv: list[str]
    working_dir: str | None
    python_version: str | None
    git: dict[str, Any]
    patch: dict[str, Any] | None
    packages: dict[str, str]
    data: list[DataFile]
    seeds: dict[str, Any]
    environment: dict[str, str]
    notebook: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def requirements(self) -> str:
        """A pip requirements file pinned to the recorded versions."""
        lines = [f"# the packages installed when run {self.run_id} started (Python {self.python_version})"]
        lines += [f"{name}=={version}" for name, version in self.packages.items()]
        return "\n".join(lines) + "\n"

    def script(self, patch_file: str = "run.patch") -> str:
        """A shell script that checks out the code, installs the packages and runs the command."""
        lines = ["#!/bin/sh", f"# Reproduces trainprov run {self.run_id} (from {self.store}).", "set -e",
                 'here="$(cd "$(dirname "$0")" && pwd)"']
        if self.git.get("git_commit"):
            remote = self.git.get("git_remote")
            if remote:
                lines.append(f"git clone {shlex.quote(remote)} code && cd code")
            else:
                lines.append(f"# no git remote was recorded: start in a clone of {self.git.get('git_root') or 'the repository'}")
            lines.append(f"git checkout {self.git['git_commit']}")
            if self.patch:
                cut = " (TRUNCATED in the record: incomplete)" if self.patch.get("truncated") else ""
                lines.append(f"git apply \"$here/{patch_file}\"   # the uncommitted changes{cut}")
        lines.append("python -m pip install -r \"$here/requirements.txt\"")
        for name, value in self.environment.items():
            lines.append(f"export {name}={shlex.quote(value)}")
        if self.working_dir and not self.git.get("git_commit"):
            lines.append(f"cd {shlex.quote(self.working_dir)}")
        if self.notebook:
            lines.append(f"# the run came from a notebook: {self.notebook.get('notebook') or 'unknown notebook'}")
        if self.argv:
            lines.append(" ".join(shlex.quote(a) for a in [*("python",), *self.argv]))
        return "\n".join(lines) + "\n"

    def text(self) -> str:
        """A report for a person."""
        out = [f"Run {self.run_id} ({self.store})"]
        out.append(f"  command:      {self.command or '(unknown)'}")
        out.append(f"  working dir:  {self.working_dir or '(unknown)'}")
        out.append(f"  python:       {self.python_version or '(unknown)'}, {len(self.packages)} packages recorded")
        if self.notebook:
            nb = self.notebook
            out.append(f"  notebook:     {nb.get('notebook') or 'unknown notebook'} (cells sha256 {nb.get('cells_sha256')})")
        if self.git.get("git_commit"):
            out.append(f"  code:         {self.git.get('git_remote') or self.git.get('git_root') or '(no remote)'} "
                       f"at {self.git['git_commit']}" + (f" on {self.git['git_branch']}" if self.git.get("git_branch") else ""))
            if self.patch:
                out.append(f"  uncommitted:  {self.patch['size_bytes']} bytes of diff, sha256 {self.patch['sha256']}"
                           + (" (truncated in the record)" if self.patch.get("truncated") else "")
                           + f"; files: {', '.join(self.git.get('git_changed_files') or [])}")
            if self.git.get("git_untracked_sources"):
                out.append(f"  untracked:    {', '.join(self.git['git_untracked_sources'])} (not in the record)")
        else:
            out.append("  code:         no git repository was recorded")
        out.append(f"  seeds:        {self.seeds or '(none recorded)'}")
        out.append(f"  environment:  {' '.join(f'{k}={v}' for k, v in self.environment.items()) or '(none)'}")
        out.append(f"  data:         {len(self.data)} files")
        for f in self.data:
            out.append(f"    {f.status:<9} {f.sha256}  {f.path}")
        out.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(out)

    def write(self, folder: str | os.PathLike) -> list[str]:
        """Write README.txt, reproduce.sh, requirements.txt, data.sha256 and run.patch (if any) into a folder."""
        os.makedirs(folder, exist_ok=True)
        written = []

        def put(name: str, text: str, mode: int | None = None) -> None:
            path = os.path.join(folder, name)
            with open(path, "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
            if mode:
                os.chmod(path, mode)
            written.append(path)

        put("README.txt", self.text() + "\n")
        put("reproduce.sh", self.script(), 0o755)
        put("requirements.txt", self.requirements())
        put("data.sha256", "".join(f"{f.sha256}  {f.path}\n" for f in self.data))
        if self.patch:
            # the recorded diff is git's own text: written back byte for byte
            path = os.path.join(folder, "run.patch")
            with open(path, "wb") as f:
                f.write(reproduction.patch_bytes(self.patch))
            written.append(path)
        return written

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the patch text included)."""
        return asdict(self)


def sha256_of(path: str) -> str | None:
    """The sha256 of a file, or None if it cannot be read."""
    try:
        return file_sha256(path)
    except OSError:
        return None


def _data(record: RunRecord) -> list[DataFile]:
    files = []
    for f in record.data:
        now = sha256_of(f["path"])
        status = "missing" if now is None else ("unchanged" if now == f["sha256"] else "changed")
        files.append(DataFile(f["path"], f["role"], f["sha256"], f["size_bytes"], status))
    return files


def from_record(record: RunRecord) -> Reproduction:
    """What reproduces the run of this record."""
    program = record.program
    notes = []
    if not record.packages:
        notes.append("no package list was recorded (a run recorded before trainprov kept the full list)")
    elif "key_packages" not in record.software:
        notes.append("only the key packages were recorded (a run recorded before trainprov kept the full list)")
    git = {k: program.get(k) for k in ("git_remote", "git_commit", "git_branch", "git_root", "git_dirty",
                                       "git_changed_files", "git_untracked_sources")}
    return Reproduction(
        run_id=record.run_id, store=record.store, command=program.get("command") or record.run.get("command"),
        argv=list(program.get("argv") or []), working_dir=program.get("working_dir") or record.run.get("working_dir"),
        python_version=record.software.get("python_version"), git=git, patch=record.patch,
        packages=record.packages, data=_data(record), seeds=dict(program.get("seeds") or {}),
        environment=dict(program.get("environment") or {}),
        notebook={k: program[k] for k in ("notebook", "notebook_sha256", "cells_sha256") if k in program} or None,
        notes=notes,
    )


def plan(run: str, *, store: Any = None) -> Reproduction:
    """What reproduces a run (an id, a unique prefix or 'latest')."""
    with Reader(store) as reader:
        return from_record(read(reader, run))


def check(run: str, *, store: Any = None) -> list[Change]:
    """Every difference between the run's record and this machine now: packages, Python, code, data, environment."""
    repro = plan(run, store=store)
    changes: list[Change] = []
    python = ".".join(map(str, sys.version_info[:3]))
    if repro.python_version and repro.python_version != python:
        changes.append(Change("python_version", "changed", repro.python_version, python))
    if repro.packages:
        installed = reproduction.packages()
        recorded = {reproduction.normal_name(k): v for k, v in repro.packages.items()}
        changes += compare_mappings(recorded, installed, "package ")
    root = repro.git.get("git_root")
    if repro.git.get("git_commit"):
        if root and os.path.isdir(root):
            now = reproduction.git_state(root)
            if now.get("git_commit") != repro.git["git_commit"]:
                changes.append(Change("git_commit", "changed", repro.git["git_commit"], now.get("git_commit")))
            recorded_patch = (repro.patch or {}).get("sha256")
            current_patch = (now.get("git_patch") or {}).get("sha256")
            if recorded_patch != current_patch:
                changes.append(Change("uncommitted changes (sha256)", "changed", recorded_patch, current_patch))
        else:
            changes.append(Change("repository", "removed", root or "(unknown folder)", None))
    for f in repro.data:
        if f.status != "unchanged":
            changes.append(Change(f"data {f.path}", "changed" if f.status == "changed" else "removed",
                                  f.sha256, sha256_of(f.path)))
    changes += compare_mappings(repro.environment, reproduction.environment(), "$")
    return changes
