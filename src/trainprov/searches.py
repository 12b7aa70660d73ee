"""Analysis of a hyperparameter search (a run group whose runs have `trials` rows): best trials,
each hyperparameter against the objective, hyperparameter importance, pruned-trial statistics.

Read-only, over SQL: the queries are those of docs/queries/search/. Importance uses Optuna's
evaluators when Optuna is installed (fANOVA by default) on a study rebuilt in memory from
the stored trials; without Optuna, a documented rank-correlation method (`rank_importance`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .errors import QueryError
from .query import Reader

Store = "str | os.PathLike | Reader | None"

TRIALS_SQL = """
SELECT r.run_id, r.status, t.trial_number, t.state, t.value, t.objective_values, t.params, t.distributions,
       t.intermediate_values, t.duration_s
FROM runs r JOIN trials t ON t.run_id = r.run_id
WHERE r.group_name = {p}
ORDER BY t.trial_number, r.run_id
"""


@dataclass
class SearchSummary:
    """What `analyze search` shows: the group, its trials, the best ones, importance and pruning."""

    group: dict[str, Any]
    direction: str
    trials: pd.DataFrame
    best: pd.DataFrame
    parameters: list[str]
    importance: dict[str, float]
    importance_method: str
    pruned: dict[str, Any] = field(default_factory=dict)


def _open(store: Any) -> tuple[Reader, bool]:
    if isinstance(store, Reader):
        return store, False
    return Reader(store), True


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def search_trials(group: str, store: Any = None) -> pd.DataFrame:
    """One row per trial of a group: run, trial number, state, objective value, duration, last step, one column per hyperparameter."""
    reader, owned = _open(store)
    try:
        return _trials(reader, group)
    finally:
        if owned:
            reader.close()


def _trials(reader: Reader, group: str) -> pd.DataFrame:
    reader.group(group)  # an unknown group is an error naming the groups there are
    try:
        rows = reader.rows(TRIALS_SQL.format(p=reader.backend.placeholder), (group,))
    except QueryError:
        rows = []  # no `trials` table yet: no search recorded in this store
    if not rows:
        raise QueryError(f"run group {group!r} has no trials: a search is recorded by trainprov.optuna or trainprov.keras_tuner")
    out = []
    for row in rows:
        params = _json(row["params"]) or {}
        steps = _json(row["intermediate_values"]) or {}
        entry = {"run_id": row["run_id"], "trial_number": row["trial_number"], "state": row["state"],
                 "value": row["value"], "duration_s": row["duration_s"],
                 "last_step": max((int(s) for s in steps), default=None)}
        entry.update({f"param_{k}": v for k, v in params.items()})
        out.append(entry)
    return pd.DataFrame(out)


def search_summary(group: str, store: Any = None, *, top: int = 5) -> SearchSummary:
    """The analysis of a search: best `top` trials, per-hyperparameter data, importance, pruned-trial statistics."""
    reader, owned = _open(store)
    try:
        info = reader.group(group)["group"]
        trials = _trials(reader, group)
        distributions = {}
        for row in reader.rows(TRIALS_SQL.format(p=reader.backend.placeholder), (group,)):
            distributions.update(_json(row["distributions"]) or {})
    finally:
        if owned:
            reader.close()
    details = _json(info.get("details")) or {}
    directions = details.get("directions") or ["minimize"]
    direction = directions[0]
    complete = trials[trials["state"] == "COMPLETE"]
    best = complete.sort_values(["value", "trial_number"], ascending=[direction == "minimize", True]).head(top)
    parameters = sorted(c[6:] for c in trials.columns if c.startswith("param_"))
    importance, method = importance_of(complete, parameters, distributions, direction)
    return SearchSummary(info, direction, trials, best.reset_index(drop=True), parameters, importance, method,
                         pruned_statistics(trials))


def pruned_statistics(trials: pd.DataFrame) -> dict[str, Any]:
    """How many trials were pruned, at which steps, and the time they took against complete ones."""
    pruned = trials[trials["state"] == "PRUNED"]
    complete = trials[trials["state"] == "COMPLETE"]
    steps = pruned["last_step"].dropna()
    mean_complete = float(complete["duration_s"].mean()) if len(complete) else None
    return {
        "trials": int(len(trials)),
        "complete": int(len(complete)),
        "pruned": int(len(pruned)),
        "failed": int((trials["state"] == "FAIL").sum()),
        "pruned_share": float(len(pruned) / len(trials)) if len(trials) else 0.0,
        "pruned_at_step": {int(k): int(v) for k, v in steps.value_counts().sort_index().items()},
        "mean_pruned_step": float(steps.mean()) if len(steps) else None,
        "mean_duration_pruned_s": float(pruned["duration_s"].mean()) if len(pruned) else None,
        "mean_duration_complete_s": mean_complete,
        # had every pruned trial run as long as the mean complete one
        "time_saved_s": (float(mean_complete * len(pruned) - pruned["duration_s"].sum())
                         if mean_complete is not None and len(pruned) else None),
    }


def importance_of(complete: pd.DataFrame, parameters: list[str], distributions: dict[str, Any],
                  direction: str) -> tuple[dict[str, float], str]:
    """Importance of each hyperparameter for the objective over complete trials, and the method used."""
    if len(complete) < 2 or not parameters:
        return {}, "none (fewer than two complete trials)"
    try:
        import optuna
    except ImportError:
        return rank_importance(complete, parameters), "rank correlation (Optuna not installed)"
    study = optuna.create_study(direction=direction)
    try:
        for row in complete.to_dict("records"):
            params = {p: row[f"param_{p}"] for p in parameters
                      if p in distributions and not _missing(row.get(f"param_{p}"))}
            dists = {p: optuna.distributions.json_to_distribution(json.dumps(distributions[p])) for p in params}
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(row["value"])))
    except Exception:  # distributions that are not Optuna's (a Keras Tuner search): the rank method
        return rank_importance(complete, parameters), "rank correlation (the search space is not Optuna's)"
    try:
        found = optuna.importance.get_param_importances(study)
        return {k: float(v) for k, v in found.items()}, "Optuna fANOVA (optuna.importance.get_param_importances)"
    except (ImportError, RuntimeError, ValueError):  # too few trials for the evaluator, or its extra is missing
        return rank_importance(complete, parameters), "rank correlation (Optuna's evaluator could not run)"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def rank_importance(complete: pd.DataFrame, parameters: list[str]) -> dict[str, float]:
    """Importance without Optuna: |Spearman ρ| (numbers) or the correlation ratio η (categories) of each
    hyperparameter with the objective's ranks, normalised to sum to 1."""
    ranks = complete["value"].rank()
    raw: dict[str, float] = {}
    for p in parameters:
        column = complete[f"param_{p}"]
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            rho = column.rank().corr(ranks)
            raw[p] = 0.0 if pd.isna(rho) else abs(float(rho))
        else:
            total = ((ranks - ranks.mean()) ** 2).sum()
            between = sum(len(g) * (g.mean() - ranks.mean()) ** 2 for _, g in ranks.groupby(column.astype(str)))
            raw[p] = math.sqrt(between / total) if total else 0.0
    whole = sum(raw.values())
    return {p: (v / whole if whole else 0.0) for p, v in sorted(raw.items(), key=lambda kv: -kv[1])}
