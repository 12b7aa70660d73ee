"""Checking a stored run against rules, from any process: `trainprov check RUN` and `check --watch`.

Three sources of findings, read-only:
- the verdicts the run recorded itself (`validation_results`, when it trained with rules);
- built-in rules replayed over its `epoch_metrics` (so a run started without rules is checked too);
- SQL rules: any query returning the offending rows, with a `run_id` column (the check keeps
  the rows of the run it checks). Columns named epoch, step, observed and message, if present,
  fill the finding.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import pandas as pd

from .store import liveness
from .capture.validation import PASS, SEVERITIES, Rule, Validator, as_rules
from .errors import QueryError, SpecError
from .query import Reader

FINDING_COLUMNS = ("source", "rule", "epoch", "step", "verdict", "metric", "observed", "threshold", "severity",
                   "action", "message")


@dataclass(frozen=True)
class SqlRule:
    """A rule written in SQL: a query whose rows are the offending ones (with a `run_id` column)."""

    name: str
    sql: str
    severity: str = "warning"

    def __post_init__(self) -> None:
        if not self.name or not self.sql.strip():
            raise SpecError("a SQL rule needs a name and a query: NAME=SELECT ...")
        if self.severity not in SEVERITIES:
            raise SpecError(f"SQL rule {self.name!r}: severity must be one of {', '.join(SEVERITIES)}")


def sql_rule(text: str, severity: str = "warning") -> SqlRule:
    """A SQL rule from `NAME=SELECT ...` (as `trainprov check --sql` takes it)."""
    name, sep, sql = text.partition("=")
    if not sep or not name.strip().isidentifier():
        raise SpecError(f"a SQL rule is NAME=QUERY (NAME a word), got {text[:60]!r}")
    return SqlRule(name.strip(), sql.strip(), severity)


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def recorded(reader: Reader, run_id: str) -> list[dict[str, Any]]:
    """The violations the run recorded while it trained (verdict fail or error)."""
    try:
        rows = reader.rows(
            "SELECT rule, epoch, step, verdict, metric, observed, threshold, severity, action, message, stopped_training "
            f"FROM validation_results WHERE run_id = {reader.backend.placeholder} AND verdict <> 'pass' "
            "ORDER BY recorded_at, element_seq", (run_id,))
    except QueryError:
        return []  # no run of this store trained with rules yet: no such table
    return [{"source": "recorded", **{k: v for k, v in r.items() if k != "stopped_training"},
             "stopped_training": bool(r["stopped_training"])} for r in rows]


def violation_counts(reader: Reader, run_ids: Iterable[str] | None = None) -> dict[str, int]:
    """How many violations (verdict fail or error) each run recorded; runs without any are left out."""
    ids = list(run_ids) if run_ids is not None else None
    where = ""
    if ids is not None:
        if not ids:
            return {}
        where = f" AND run_id IN ({', '.join([reader.backend.placeholder] * len(ids))})"
    try:
        rows = reader.result("SELECT run_id, count(*) FROM validation_results WHERE verdict <> 'pass'"
                             f"{where} GROUP BY run_id", tuple(ids or ())).rows
    except QueryError:
        return {}
    return {run_id: int(n) for run_id, n in rows}


def replayed(reader: Reader, run_id: str, rules: Iterable[Rule] | str | None = "default") -> list[dict[str, Any]]:
    """Built-in (or given) rules evaluated over the run's stored epoch_metrics, fit by fit."""
    checkers = as_rules(rules)
    if not checkers:
        return []
    try:
        frame = reader.df(f"SELECT * FROM epoch_metrics WHERE run_id = {reader.backend.placeholder} "
                          "ORDER BY task_id, epoch", (run_id,))
    except QueryError:
        return []
    found = []
    skip = {"run_id", "task_id", "element_seq", "recorded_at", "epoch"}
    for _, fit in frame.groupby("task_id", sort=False):
        validator = Validator(checkers)
        for row in fit.to_dict("records"):
            values = {k: v for k, v in row.items() if k not in skip and v is not None and isinstance(v, (int, float))}
            for verdict in validator.epoch(int(row["epoch"]), values):
                if verdict.verdict != PASS:
                    found.append({"source": "replayed", **verdict.row(), "stopped_training": False})
    return found


def offending(reader: Reader, run_id: str, rule: SqlRule, timeout: float | None = None) -> list[dict[str, Any]]:
    """The rows of a SQL rule's query that belong to the run, as findings."""
    sql = rule.sql.rstrip().rstrip(";")
    try:
        rows = reader.rows(f"SELECT * FROM ({sql}) offending WHERE run_id = {reader.backend.placeholder}", (run_id,),
                           timeout=timeout)
    except QueryError as exc:
        if "run_id" in str(exc):
            raise SpecError(f"SQL rule {rule.name!r} must return a run_id column (the check keeps the rows of the "
                            f"run it checks): {exc}") from None
        raise SpecError(f"SQL rule {rule.name!r} failed: {exc}") from None
    found = []
    for row in rows:
        observed = row.get("observed")
        if observed is None:
            observed = next((v for k, v in row.items() if k not in ("run_id", "epoch", "step", "element_seq")
                             and isinstance(v, float)), None)
        message = row.get("message") or ", ".join(f"{k}={v}" for k, v in row.items()
                                                  if k not in ("run_id", "task_id", "recorded_at"))
        found.append({"source": "sql", "rule": rule.name, "epoch": row.get("epoch"), "step": row.get("step"),
                      "verdict": "fail", "metric": None, "observed": _float(observed), "threshold": None,
                      "severity": rule.severity, "action": "record", "message": str(message),
                      "stopped_training": False})
    return found


def check(reader: Reader, run: str, *, sql: Iterable[SqlRule] = (), rules: Iterable[Rule] | str | None = "default",
          timeout: float | None = None) -> pd.DataFrame:
    """Every violation of a run: recorded, replayed built-ins (not already recorded), and SQL rules."""
    run_id = reader.resolve_run(run)
    found = recorded(reader, run_id)
    seen = {(f["rule"], f["epoch"], f["step"]) for f in found}
    found += [f for f in replayed(reader, run_id, rules) if (f["rule"], f["epoch"], f["step"]) not in seen]
    for rule in sql:
        found += offending(reader, run_id, rule, timeout)
    # object columns: a missing threshold stays None, apart from an observed NaN
    frame = pd.DataFrame(found, columns=[*FINDING_COLUMNS, "stopped_training"], dtype=object)
    frame.attrs["run_id"] = run_id
    return frame


def stopped_by(reader: Reader, run: str) -> dict[str, Any] | None:
    """The verdict that stopped a run's training, if a rule did."""
    for finding in recorded(reader, reader.resolve_run(run)):
        if finding["stopped_training"]:
            return finding
    return None


def _key(finding: Mapping[str, Any]) -> tuple:
    observed = finding.get("observed")
    observed = "nan" if isinstance(observed, float) and math.isnan(observed) else observed
    return (finding["source"], finding["rule"], finding["epoch"], finding["step"], observed, finding["message"])


def watch(reader: Reader, run: str, report: Callable[[pd.DataFrame], None], *, sql: Iterable[SqlRule] = (),
          rules: Iterable[Rule] | str | None = "default", interval: float = 2.0, timeout: float | None = None,
          max_checks: int | None = None) -> int:
    """Check a run again every `interval` seconds, reporting new findings, until it ends; returns how many."""
    run_id = reader.resolve_run(run)
    sql = list(sql)
    reported: set[tuple] = set()
    checks = 0
    while True:
        liveness.reap(reader.backend)  # a run whose process died is not watched forever
        status = reader.rows(f"SELECT status FROM runs WHERE run_id = {reader.backend.placeholder}", (run_id,))
        running = bool(status) and status[0]["status"] == "running"
        frame = check(reader, run_id, sql=sql, rules=rules, timeout=timeout)
        new = [i for i, f in enumerate(frame.to_dict("records")) if _key(f) not in reported]
        if new:
            report(frame.iloc[new])
            reported.update(_key(f) for f in frame.iloc[new].to_dict("records"))
        checks += 1
        if not running or (max_checks is not None and checks >= max_checks):
            return len(reported)
        time.sleep(interval)
