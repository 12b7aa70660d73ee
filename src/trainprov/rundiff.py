"""Why two runs differ: their records compared section by section, with a short report first.

Sections: hyperparameters (nested configurations flattened to dotted paths), architecture
(layers aligned by class, so an inserted layer is one insertion), data (files by role and
path, with their digests), code (commit, branch, remote, uncommitted changes, command),
environment (packages, Python, environment variables), machine, seeds, adaptations, and the
outcome: the first epoch from which a metric's curves stay apart and the final values.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from . import analysis
from .capture import reproduction
from .query import Reader
from .record import RunRecord, finite, read

#: layer attributes that are labels, not architecture (Keras numbers names per process)
_LAYER_LABELS = ("name",)
#: machine facts worth comparing
_MACHINE_KEYS = ("hostname", "os", "cpu", "cpu_count", "memory_bytes", "gpus")
#: seeds a program set (the random default of torch is not one)
_SET_SEEDS = ("python", "numpy", "torch", "keras", "lightning", "pythonhashseed", "declared")

SECTIONS = ("hyperparameters", "architecture", "data", "code", "environment", "machine", "seeds", "adaptations",
            "outcome")


@dataclass
class Change:
    """One difference: where, what kind, and the two values (None where a side has none)."""

    path: str
    kind: str  # changed, added (only in B), removed (only in A), inserted / deleted (layers)
    a: Any = None
    b: Any = None

    @property
    def a_text(self) -> str:
        """Side A's value as a person reads it ('' when it has none)."""
        return "" if self.a is None else _show(self.a, 200)

    @property
    def b_text(self) -> str:
        """Side B's value as a person reads it ('' when it has none)."""
        return "" if self.b is None else _show(self.b, 200)

    def describe(self, sides: tuple[str, str] = ("A", "B")) -> str:
        """One line for a person; `sides` names the two sides (A and B, or the record and this machine)."""
        if self.kind == "changed":
            return f"{self.path}: {_show(self.a)} -> {_show(self.b)}"
        if self.kind in ("added", "inserted"):
            return f"{self.path}: {self.kind}, only in {sides[1]}: {_show(self.b)}"
        return f"{self.path}: {self.kind}, only in {sides[0]}: {_show(self.a)}"


@dataclass
class Section:
    """One part of the comparison: its changes, and whether both runs recorded it at all."""

    name: str
    changes: list[Change] = field(default_factory=list)
    recorded: bool = True
    note: str = ""

    @property
    def same(self) -> bool:
        """No difference in this section."""
        return not self.changes


@dataclass
class RunDiff:
    """The comparison of run A with run B."""

    run_a: str
    run_b: str
    store_a: str
    store_b: str
    sections: list[Section]
    outcome: dict[str, Any]
    #: the per-epoch values of A and B, for drawing (not compared, not in to_dict)
    curves: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = field(default=None, repr=False, compare=False)

    def section(self, name: str) -> Section:
        """The section of this name."""
        for s in self.sections:
            if s.name == name:
                return s
        raise KeyError(f"no section {name!r}; sections: {', '.join(SECTIONS)}")

    @property
    def differing(self) -> list[str]:
        """The names of the sections that differ, outcome excluded."""
        return [s.name for s in self.sections if not s.same and s.name != "outcome"]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "run_a": self.run_a, "run_b": self.run_b, "store_a": self.store_a, "store_b": self.store_b,
            "differing_sections": self.differing,
            "sections": {s.name: {"same": s.same, "recorded": s.recorded, "note": s.note,
                                  "changes": [asdict(c) for c in s.changes]} for s in self.sections},
            "outcome": self.outcome,
        }

    def report(self, details: bool = True) -> str:
        """A short report for a person (what differs, the outcome), then every change."""
        lines = [f"A: {self.run_a}" + (f" ({self.store_a})" if self.store_a != self.store_b else ""),
                 f"B: {self.run_b}" + (f" ({self.store_b})" if self.store_a != self.store_b else "")]
        if not self.differing:
            lines.append("The runs were produced the same way: no difference in " + ", ".join(
                s.name for s in self.sections if s.name != "outcome" and s.recorded) + ".")
        else:
            lines.append("They differ in " + ", ".join(self.differing) + ":")
            for name in self.differing:
                changes = self.section(name).changes
                shown = changes[:3]
                more = f" (and {len(changes) - len(shown)} more)" if len(changes) > len(shown) else ""
                lines.append(f"  {name}: " + "; ".join(c.describe() for c in shown) + more)
        lines.extend(_outcome_lines(self.outcome))
        if details:
            for s in self.sections:
                if s.name == "outcome":
                    continue
                lines.append("")
                state = "not recorded by both runs" if not s.recorded else ("same" if s.same else plural(len(s.changes), "difference"))
                lines.append(f"## {s.name}: {state}" + (f" ({s.note})" if s.note else ""))
                lines.extend("  " + c.describe() for c in s.changes)
        return "\n".join(lines)

    def _repr_html_(self) -> str:  # notebooks: what differs, the outcome, both runs' curves
        from .display import diff_html

        return diff_html(self)


def plural(n: int, word: str) -> str:
    """'1 difference', '2 differences'."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _show(value: Any, width: int = 80) -> str:
    if isinstance(value, Mapping):
        text = ", ".join(f"{k}={_show(v, width)}" for k, v in value.items())
    else:
        text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _outcome_lines(outcome: Mapping[str, Any]) -> list[str]:
    lines = []
    div = outcome.get("divergence")
    if div:
        at = div.get("diverged_at_epoch")
        lines.append(f"Outcome ({div['metric']}): " + (
            f"the curves stay apart from epoch {at}" if at is not None else
            f"the curves stay together over {div['common_epochs']} common epochs"))
    final = outcome.get("final") or {}
    if final:
        cells = [f"{k} {_num(v['a'])} vs {_num(v['b'])}" for k, v in final.items()]
        lines.append("Final values (A vs B): " + ", ".join(cells))
    if not lines:
        lines.append("Outcome: no epoch metrics recorded by both runs.")
    return lines


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _num(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


# ---- comparing ---------------------------------------------------------------------------


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts and lists as one level of dotted paths (lists by index)."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out if out or not prefix else {prefix: {}}
    if isinstance(value, list) and value and any(isinstance(v, (Mapping, list)) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # NaN is NaN
    return a == b


def compare_mappings(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[Change]:
    """The changes between two flat mappings, keys in order (None and absent are the same)."""
    changes = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        path = f"{prefix}{key}"
        if va is None and vb is None:
            continue
        if va is None:
            changes.append(Change(path, "added", None, vb))
        elif vb is None:
            changes.append(Change(path, "removed", va, None))
        elif not _equal(va, vb):
            changes.append(Change(path, "changed", va, vb))
    return changes


def _generated_names(change: Change) -> bool:
    """A name the framework made unique by numbering (Keras: adam, adam_1): the same object."""
    if change.kind != "changed" or not change.path.split(".")[-1] == "name":
        return False
    if not (isinstance(change.a, str) and isinstance(change.b, str)):
        return False
    return re.sub(r"_\d+$", "", change.a) == re.sub(r"_\d+$", "", change.b)


def _layer_label(layer: Mapping[str, Any], index: int) -> str:
    name = layer.get("name")
    return f"layer {layer.get('layer_index', index)} ({layer.get('class_name') or '?'}{', ' + name if name else ''})"


def compare_layers(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[Change]:
    """Layers aligned by class (difflib), then compared attribute by attribute within aligned pairs."""
    keys_a = [layer.get("class_name") for layer in a]
    keys_b = [layer.get("class_name") for layer in b]
    changes: list[Change] = []

    def attributes(layer: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in layer.items() if k not in ("layer_index", *_LAYER_LABELS) and v is not None}

    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=keys_a, b=keys_b, autojunk=False).get_opcodes():
        if op == "equal" or (op == "replace" and i2 - i1 == j2 - j1):
            for i, j in zip(range(i1, i2), range(j1, j2)):
                label = _layer_label(b[j], j)
                for c in compare_mappings(attributes(a[i]), attributes(b[j])):
                    changes.append(Change(f"{label}.{c.path}", c.kind, c.a, c.b))
        else:
            for i in range(i1, i2):
                changes.append(Change(_layer_label(a[i], i), "deleted", attributes(a[i]), None))
            for j in range(j1, j2):
                changes.append(Change(_layer_label(b[j], j), "inserted", None, attributes(b[j])))
    return changes


def _file_key(f: Mapping[str, Any]) -> str:
    return f"{f.get('role') or f.get('dataset') or 'file'}:{os.path.basename(f['path'])}"


def compare_data(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[Change]:
    """Input files matched by role and file name, then by role in order; a changed digest is a change."""
    changes = []
    by_key_b = {}
    for f in b:
        by_key_b.setdefault(_file_key(f), []).append(f)
    unmatched_a = []
    for f in a:
        others = by_key_b.get(_file_key(f))
        if others:
            g = others.pop(0)
            if f["sha256"] != g["sha256"]:
                changes.append(Change(f"{f['role'] or 'file'} {f['path']}" + (f" / {g['path']}" if g["path"] != f["path"] else ""),
                                      "changed", {"sha256": f["sha256"], "size_bytes": f["size_bytes"]},
                                      {"sha256": g["sha256"], "size_bytes": g["size_bytes"]}))
        else:
            unmatched_a.append(f)
    rest_b = [g for files in by_key_b.values() for g in files]
    for f in unmatched_a:
        g = next((g for g in rest_b if g["role"] == f["role"]), None)
        if g is not None:
            rest_b.remove(g)
            if f["sha256"] != g["sha256"]:
                changes.append(Change(f"{f['role'] or 'file'} {f['path']} / {g['path']}", "changed",
                                      {"sha256": f["sha256"], "size_bytes": f["size_bytes"]},
                                      {"sha256": g["sha256"], "size_bytes": g["size_bytes"]}))
        else:
            changes.append(Change(f"{f['role'] or 'file'} {f['path']}", "removed", {"sha256": f["sha256"]}, None))
    for g in rest_b:
        changes.append(Change(f"{g['role'] or 'file'} {g['path']}", "added", None, {"sha256": g["sha256"]}))
    return changes


def patch_files(patch: Mapping[str, Any] | None) -> dict[str, str]:
    """The files an uncommitted-changes patch touches, each with its own hunk text."""
    if not patch:
        return {}
    files: dict[str, list[str]] = {}
    current = None
    for line in reproduction.patch_bytes(patch).decode("utf-8", "replace").splitlines():
        if line.startswith("diff --git "):
            current = line.split(" b/", 1)[-1]
            files[current] = []
        if current is not None:
            files[current].append(line)
    return {k: "\n".join(v) for k, v in files.items()}


def compare_code(a: RunRecord, b: RunRecord) -> list[Change]:
    """Commit, branch, remote, dirty flag, the uncommitted changes file by file, script and command."""
    keys = ("script", "notebook", "git_remote", "git_commit", "git_branch", "git_dirty")
    changes = compare_mappings({k: a.program.get(k) for k in keys}, {k: b.program.get(k) for k in keys})
    if a.program.get("argv") != b.program.get("argv"):
        changes.append(Change("command", "changed", a.program.get("command"), b.program.get("command")))
    pa, pb = a.patch, b.patch
    if (pa or {}).get("sha256") != (pb or {}).get("sha256"):
        fa, fb = patch_files(pa), patch_files(pb)
        for name in sorted(set(fa) | set(fb)):
            if fa.get(name) != fb.get(name):
                kind = "changed" if name in fa and name in fb else ("added" if name in fb else "removed")
                changes.append(Change(f"uncommitted change to {name}", kind,
                                      f"{len(fa[name])} bytes of diff" if name in fa else None,
                                      f"{len(fb[name])} bytes of diff" if name in fb else None))
        if not (set(fa) | set(fb)):
            changes.append(Change("uncommitted changes (sha256)", "changed", (pa or {}).get("sha256"),
                                  (pb or {}).get("sha256")))
    return changes


def compare_environment(a: RunRecord, b: RunRecord) -> list[Change]:
    """Packages added, removed or at another version; the Python version; environment variables."""
    changes = compare_mappings(
        {"python_version": a.software.get("python_version")}, {"python_version": b.software.get("python_version")})
    changes += compare_mappings(a.packages, b.packages, "package ")
    changes += compare_mappings(a.program.get("environment") or {}, b.program.get("environment") or {}, "$")
    return changes


def _set_seeds(record: RunRecord) -> dict[str, Any]:
    seeds = record.program.get("seeds") or {}
    return flatten({k: v for k, v in seeds.items() if k in _SET_SEEDS})


def _adaptation_line(row: Mapping[str, Any]) -> str:
    where = f"epoch {row.get('epoch')}" + (f" step {row['step']}" if row.get("step") is not None else "")
    kind, parameter = row.get("kind"), row.get("parameter")
    what = str(kind) if not parameter or parameter == kind else f"{kind} {parameter}"
    values = f" {_num(row.get('old_value'))} -> {_num(row.get('new_value'))}" if row.get("new_value") is not None else ""
    return f"{where}: {what}{values} ({row.get('cause')})"


def compare_adaptations(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[Change]:
    """The two timelines of adaptations, aligned line by line."""
    la, lb = [_adaptation_line(r) for r in a], [_adaptation_line(r) for r in b]
    changes = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=la, b=lb, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        for i in range(i1, i2):
            changes.append(Change("adaptation", "removed", la[i], None))
        for j in range(j1, j2):
            changes.append(Change("adaptation", "added", None, lb[j]))
    return changes


def _outcome(a: RunRecord, b: RunRecord, metric: str | None) -> tuple[dict[str, Any], list[Change]]:
    last_a = a.epochs[-1] if a.epochs else {}
    last_b = b.epochs[-1] if b.epochs else {}
    shared = [k for k in last_a if k in last_b and k != "epoch" and (finite(last_a[k]) or finite(last_b[k]))]
    final = {k: {"a": last_a[k], "b": last_b[k]} for k in shared}
    if last_a or last_b:
        final = {"epochs": {"a": last_a.get("epoch"), "b": last_b.get("epoch")}, **final}
    changes = [Change(f"final {k}", "changed", v["a"], v["b"]) for k, v in final.items() if not _equal(v["a"], v["b"])]
    outcome: dict[str, Any] = {"final": final, "divergence": None}
    candidates = [metric] if metric else ["val_loss", "loss"]
    for name in candidates:
        sa = {r["epoch"]: float(r[name]) for r in a.epochs if r.get("epoch") is not None and _number(r.get(name))}
        sb = {r["epoch"]: float(r[name]) for r in b.epochs if r.get("epoch") is not None and _number(r.get(name))}
        common = sorted(set(sa) & set(sb))
        if common:
            at, gap = analysis.first_divergence([sa[e] for e in common], [sb[e] for e in common])
            outcome["divergence"] = {"metric": name, "common_epochs": len(common),
                                     "diverged_at_epoch": common[at] if at is not None else None,
                                     "gap_at_divergence": gap}
            break
    for t, (ra, rb) in enumerate(zip(a.test_results, b.test_results)):
        for c in compare_mappings(ra, rb, f"test {t + 1} "):
            changes.append(c)
    return outcome, changes


def compare(a: RunRecord, b: RunRecord, *, metric: str | None = None) -> RunDiff:
    """The comparison of two run records."""
    def section(name: str, changes: list[Change], recorded: bool = True, note: str = "") -> Section:
        return Section(name, changes if recorded else [], recorded, note)

    hp_a, hp_b = flatten(a.hyperparameters), flatten(b.hyperparameters)
    hp_changes = [c for c in compare_mappings(hp_a, hp_b) if not _generated_names(c)]
    machine_a = {k: a.machine.get(k) for k in _MACHINE_KEYS}
    machine_b = {k: b.machine.get(k) for k in _MACHINE_KEYS}
    outcome, outcome_changes = _outcome(a, b, metric)
    sections = [
        section("hyperparameters", hp_changes, bool(hp_a or hp_b),
                "names a framework numbers per process (adam, adam_1) are not compared"),
        section("architecture", compare_layers(a.layers, b.layers), bool(a.layers or b.layers),
                "layers aligned by class; names are labels and not compared"),
        section("data", compare_data(a.data, b.data), bool(a.data or b.data)),
        section("code", compare_code(a, b), bool(a.program or b.program)),
        section("environment", compare_environment(a, b), bool(a.software or b.software)),
        section("machine", compare_mappings(machine_a, machine_b), bool(a.machine or b.machine)),
        section("seeds", compare_mappings(_set_seeds(a), _set_seeds(b)), bool(a.program or b.program),
                "seeds the programs set; torch's random default is not one"),
        section("adaptations", compare_adaptations(a.adaptations, b.adaptations), bool(a.adaptations or b.adaptations)),
        section("outcome", outcome_changes),
    ]
    return RunDiff(a.run_id, b.run_id, a.store, b.store, sections, outcome, curves=(a.epochs, b.epochs))


def diff(run_a: str, run_b: str, *, store: Any = None, store_b: Any = None, metric: str | None = None) -> RunDiff:
    """Why two runs differ. `store_b` (default: `store`) holds run B, so runs compare across stores."""
    with Reader(store) as reader:
        a = read(reader, run_a)
        if store_b is None:
            b = read(reader, run_b)
    if store_b is not None:
        with Reader(store_b) as reader_b:
            b = read(reader_b, run_b)
    return compare(a, b, metric=metric)

