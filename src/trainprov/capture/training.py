"""The provenance of a training, framework-neutral: what every integration records.

Integrations (Keras, PyTorch, Lightning, Transformers) translate their framework's events
into calls on a `TrainingRecorder`; the recorder owns the default dataflow, the names and
types of columns that appear as training goes (a new metric becomes a new column), and the
rules that keep the record honest (an adaptation only when a value really changed, a
checkpoint derived from the previous one). Runs of every framework land in the same
datasets, so one query compares them.
"""

from __future__ import annotations

import collections
import json
import queue
import math
import numbers
import os
import threading
import warnings
import weakref
from typing import Any, Callable, Iterable, Mapping

from ..errors import CaptureError, SpecError, ValueTypeError
from ..spec import ELEMENT_COLUMNS, Attribute, Dataflow, Dataset, Transformation, sanitize_name
from . import groups
from .run import Element, FileRef, Run, Task, new_run_id, status_for, start_run
from .steering import Steering, SteeringRequest
from .profile import PROFILE, profile_rows, profile_transformation, skew_rows
from .validation import ERROR, FAIL, PASS, VALIDATE, Rule, SqlRule, Validator, Verdict, validate_transformation

TRAIN, ADAPT, EVALUATE = "train", "adapt", "evaluate"
BUILT_IN = (TRAIN, ADAPT, EVALUATE)
# datasets whose new columns take the type of their first value (elsewhere: metrics, floats)
_TYPED_BY_VALUE = ("hyperparameters", "layers")


def training_dataflow(
    name: str, extra: Iterable[Transformation] = (), train_uses: Iterable[Dataset | str] = ()
) -> Dataflow:
    """The default dataflow of a training: train, adapt and evaluate, plus your own transformations.

    `extra` adds transformations (data preparation, say); `train_uses` adds datasets the
    training uses (the data files such a transformation generates).
    """
    hyperparameters = Dataset(
        "hyperparameters",
        framework=str,
        optimizer=str,
        learning_rate=float,
        optimizer_config="json",
        lr_schedule="json",
        loss=str,
        metrics="json",
        batch_size=int,
        epochs=int,
        steps_per_epoch=int,
        n_layers=int,
        trainable_params=int,
        non_trainable_params=int,
        description="what the training was configured with",
    )
    layers = Dataset(
        "layers",
        layer_index=int,
        name=str,
        class_name=str,
        output_shape=str,
        params=int,
        trainable_params=int,
        activation=str,
        units=int,
        filters=int,
        kernel_size=str,
        strides=str,
        dropout_rate=float,
        description="the architecture, one row per layer",
    )
    epoch_metrics = Dataset(
        "epoch_metrics", epoch=int, loss=float, learning_rate=float, epoch_time_s=float,
        description="one row per epoch: every value the framework reports, epochs counted from 1",
    )
    step_metrics = Dataset(
        "step_metrics", epoch=int, step=int, global_step=int, loss=float,
        description="one row per recorded training step (steps counted from 1 within each epoch)",
    )
    checkpoints = Dataset(
        "checkpoints", epoch=int, path="file", monitor=str, monitor_value=float,
        description="model files written during training",
    )
    adaptations = Dataset(
        "adaptations",
        epoch=int,
        step=int,
        kind=str,
        parameter=str,
        old_value=float,
        new_value=float,
        cause=str,
        monitor=str,
        monitor_value=float,
        best_epoch=int,
        best_value=float,
        reason=str,
        requested_by=str,
        requested_at="datetime",
        request_id=str,
        description="changes made during training: learning-rate changes, early stopping, steering requests",
    )
    test_results = Dataset(
        "test_results", loss=float, evaluation_time_s=float, extra="json",
        description="evaluation results, aggregated over the whole evaluation data",
    )
    return Dataflow(
        name,
        [
            Transformation(TRAIN, uses=[hyperparameters, layers, *train_uses], generates=[epoch_metrics, step_metrics, checkpoints]),
            Transformation(ADAPT, uses=["epoch_metrics"], generates=[adaptations]),
            Transformation(EVALUATE, uses=["checkpoints"], generates=[test_results]),
            *extra,
        ],
        description="training provenance recorded by a trainprov integration",
    )


def number(value: Any) -> float | None:
    """A metric value as a float, or None if it is not a number."""
    if value.__class__ is float:  # the usual case, per step: no attribute lookup, no ABC check
        return value
    item = getattr(value, "item", None)
    if item is not None and not isinstance(value, numbers.Number):  # a NumPy or torch scalar
        try:
            value = item()
        except Exception:  # not a scalar: reported as not a number
            return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def value_type(value: Any) -> str:
    """The trainprov type a new column takes from its first value (bool, int, float, str, else json)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, numbers.Integral):
        return "int"
    if isinstance(value, numbers.Real):
        return "float"
    if isinstance(value, str):
        return "str"
    return "json"


class TrainingRecorder:
    """Records one run of a training: fits, epochs, steps, adaptations, checkpoints, evaluations."""

    def __init__(
        self,
        framework: str,
        store: str | os.PathLike | None = None,
        *,
        dataflow: Dataflow | None = None,
        run: Run | None = None,
        name: str | None = None,
        record_agents: bool = True,
        group: str | None = None,
        parent: Run | str | None = None,
        tags: Mapping[str, Any] | None = None,
        rules: Iterable[Rule | Any] | str | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        include: Iterable[str] | None = None,
        steering: bool = True,
    ) -> None:
        self.framework = framework
        #: your hyperparameters, recorded with every training (they win over the framework's)
        self.user_hyperparameters = dict(hyperparameters or {})
        #: the framework's hyperparameters to keep (None: all of them)
        self.include = set(include) if include is not None else None
        self.store = store
        self.flow = dataflow or training_dataflow(f"{sanitize_name(framework)}_training")
        self.run: Run | None = run
        self.name = name
        self.record_agents = record_agents
        #: the run group, parent run and tags every run this recorder starts gets
        self.group, self.parent, self.tags = group, parent, dict(tags or {})
        self.train_task: Task | None = None
        self._last_train: Task | None = None
        self._pending_uses: list[Element] = []
        self._columns: dict[tuple[str, str], str] = {}  # (dataset, framework key) -> column
        self._last_checkpoint: FileRef | None = None
        self._last_checkpoint_element: Element | None = None
        self._checkpoints: dict[str, tuple[FileRef, Element]] = {}  # absolute path -> its latest record
        self._epochs: dict[int, dict[str, Any]] = {}  # the current training's epochs: epoch -> the values reported
        self._lock = threading.RLock()
        #: metric keys -> (the training task, its prepared recorder of step rows with those keys)
        self._prepared_steps: dict[tuple[str, ...], tuple[Task, Callable[[tuple], Element]]] = {}
        self._store_types: dict[str, dict[str, tuple[str, str | None]]] = {}
        #: name -> split -> (profile rows, their elements)
        self._profiles: dict[str, dict[str, tuple[list[dict[str, Any]], list[Element]]]] = {}
        #: (run id, rank, world size) when this process is one rank of a run of several
        #: (else TRAINPROV_RUN_ID / RANK / WORLD_SIZE decide, as for start_run)
        self.rank_of_run: tuple[str, int, int] | None = None
        if run is not None:
            self.flow = run.dataflow
        #: the rules checked at each epoch's end (and every N steps where a rule asks)
        self.validator: Validator | None = Validator(rules) if rules else None
        #: the failed verdict (and its recorded row) that asked the training to stop, if any
        self.stopped_by: tuple[Verdict, Element] | None = None
        self._sql_checks: "queue.Queue[tuple[int, Element, list[SqlRule]] | None] | None" = None
        self._sql_done: collections.deque[tuple[list[Verdict], Element]] = collections.deque()
        self._sql_thread: threading.Thread | None = None
        if self.validator is not None and self.validator.rules:
            self._add_validation()
        else:
            self.validator = None
        #: online steering: requests read from the store, applied at step and epoch boundaries
        self.steering = Steering()
        self.steering_enabled = steering

    @property
    def epochs_recorded(self) -> Mapping[int, Mapping[str, Any]]:
        """The current (or last) training's epochs: epoch -> the values reported for it."""
        return self._epochs

    @property
    def should_stop(self) -> bool:
        """True once a rule with action "stop" failed in the current training, or someone asked it to stop."""
        return self.stopped_by is not None or self.steering.stop_request is not None

    @property
    def stop_requested(self) -> bool:
        """True once someone asked (trainprov steer --stop) that the training stop at the end of this epoch."""
        return self.steering.stop_request is not None

    # ---- online steering --------------------------------------------------------------------

    def steerable(self, name: str, get: Any, set: Any, *, type: type = float, low: float | None = None,
                  high: float | None = None) -> None:
        """Let people change `name` while the training runs (`trainprov steer RUN --set name=value`)."""
        self.steering.register(name, get, set, kind=type, low=low, high=high)

    def apply_steering(self, epoch: int | None, step: int | None = None) -> None:
        """Apply the steering requests that arrived (call at a step or epoch boundary; costs nothing without any)."""
        if self.steering.pending:
            with self._lock:
                self.steering.apply(self, epoch, step)

    def record_steering(self, request: SteeringRequest, epoch: int | None, *, kind: str, step: int | None = None,
                        parameter: str | None = None, old_value: Any = None, new_value: Any = None,
                        uses: Iterable[Element] = ()) -> Element | None:
        """Record an applied steering request as an adaptation (cause `steering`) naming who asked and why."""
        def as_number(value: Any) -> float | None:
            return float(value) if isinstance(value, bool) else number(value)
        return self.adaptation(epoch, kind, "steering", uses=uses, step=step, parameter=parameter,
                               old_value=as_number(old_value), new_value=as_number(new_value), reason=request.reason,
                               requested_by=request.requested_by, requested_at=request.requested_at,
                               request_id=request.request_id)

    # ---- the run --------------------------------------------------------------------------

    def start(self) -> Run:
        """The run, started now if it is not yet."""
        if self.run is None or self.run.status != "running":
            run_id, rank, world_size = self.rank_of_run or (None, None, None)
            self.run = start_run(self.flow, self.store, name=self.name, record_agents=self.record_agents,
                                 run_id=run_id, rank=rank, world_size=world_size,
                                 group=self.group, parent=self.parent, tags=self.tags)
            self.flow = self.run.dataflow
            if self.steering_enabled and self.run.rank is None:  # several ranks would apply a change apart
                self.steering.listen(self.run)
            if self.validator is not None and VALIDATE not in self.flow.transformations:
                self._add_validation()
        return self.run

    def run_to_share(self, world_size: int, *, first_call: bool) -> str | None:
        """Rank zero's run for a call by `world_size` processes: the one still open, or a new one; None if ranks cannot join.

        `first_call`: this process records its first run, so a launcher's TRAINPROV_RUN_ID applies.
        """
        run = self.run
        if run is None and first_call:
            return os.environ.get("TRAINPROV_RUN_ID") or new_run_id()
        if run is None or run.status != "running":
            return new_run_id()
        if run.world_size == world_size:
            return run.id  # fit, then test: one run for both
        opened = "by this process alone" if run.world_size is None else f"for {run.world_size} processes"
        warnings.warn(f"trainprov: run {run.id}, started {opened}, is still open: only global rank zero records "
                      f"this {world_size}-process call, into it; end it first (prov.end()) for a run of "
                      "every rank (see docs/lightning.md)", RuntimeWarning, stacklevel=4)
        return None

    def join_run(self, run_id: str, rank: int, world_size: int) -> Run:
        """Record into run `run_id` as `rank` of `world_size` processes from now on (another run still open ends first)."""
        run = self.run
        if run is not None and run.status == "running" and run.id != run_id:
            self.end()  # rank zero went on to a new run: this rank's part of the old one is over
        self.rank_of_run = (run_id, rank, world_size)
        return self.start()

    def use(self, *elements: Element) -> None:
        """Elements (data, say) that the next training task uses."""
        self._pending_uses.extend(elements)

    def end(self, status: str = "finished", error: str | None = None) -> None:
        """End the run; a training task still open means its fit never ended: failed."""
        if self.train_task is not None:
            if status == "finished":
                status, error = "failed", "the training did not reach its end"
            self.end_training(status, error)
        if self.run is not None:
            inside = groups.ambient()
            if inside is not None and inside.hold and inside.run is self.run:
                inside.ended = (status, error)  # e.g. an Optuna trial: it records the outcome, then ends the run
                return
            self.steering.stop_listening()
            self.run.end(status, error)

    # ---- columns that appear as training goes ------------------------------------------

    def _column(self, dataset: str, key: str) -> str:
        """The column of a framework's key (a metric name, say): a safe name, unique in its dataset."""
        column = self._columns.get((dataset, key))
        if column is None:
            column = self._columns[(dataset, key)] = self._free_column(dataset, key)
        return column

    def _free_column(self, dataset: str, key: str) -> str:
        """The column a new key goes to: the one that holds it in the store, else a safe name no other key holds.

        Keys that sanitize alike (acc/top1, acc_top1) get columns of their own, the same in
        every run: the catalog keeps the key each column was made from (`original_name`).
        """
        taken = {c for (d, _), c in self._columns.items() if d == dataset} | set(ELEMENT_COLUMNS)
        declared = {a.name: a.original_name for a in self.flow.datasets[dataset].attributes}
        column = sanitize_name(key)
        if column == key and column in declared and column not in taken and declared[column] in (None, key):
            return column  # a declared name: the store need not be asked
        known = {name: original for name, (_, original) in self._stored_attributes(dataset).items()}
        known.update((name, original) for name, original in declared.items() if original is not None or name not in known)
        for name, original in known.items():
            if original == key and name not in taken:
                return name
        # a column with no original name was declared as it is, or made before names were kept: it is claimable
        while column in taken or known.get(column) not in (None, key):
            column += "_"
        return column

    def _columns_for(self, dataset: str, values: Mapping[str, Any]) -> dict[str, Any]:
        """Map framework keys to columns of a dataset, growing the dataflow for new ones.

        In metric datasets a new key becomes a float column; a value that is not a number
        goes, with its key, into the JSON column `extra`: kept, never dropped.
        """
        with self._lock:  # frameworks may report steps from several threads at once
            return self._map_columns(dataset, values)

    def _map_columns(self, dataset: str, values: Mapping[str, Any]) -> dict[str, Any]:
        declared = self.flow.datasets[dataset].types
        out: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        grow: dict[str, str] = {}
        originals: dict[str, str] = {}  # column -> the key it is made from
        for key, value in values.items():
            column = self._column(dataset, key)
            kind = declared.get(column) or grow.get(column)
            if kind is None:
                if value is None:
                    continue  # nothing to store, and no type to give a new column
                if dataset in _TYPED_BY_VALUE:
                    kind = value_type(value)
                elif number(value) is not None:
                    kind = "float"
                else:
                    extra[key] = value
                    continue
                # another run may have made this column already: its type stands, and an
                # int goes into a float column; any other mismatch goes to `extra`
                stored = self._stored_types(dataset).get(column)
                if stored is not None and stored != kind:
                    if not (stored == "float" and kind == "int"):
                        extra[key] = value
                        continue
                    kind = stored
                grow[column] = kind
                originals[column] = key
            if kind == "float" and value is not None:
                as_number = number(value)
                if as_number is None:
                    extra[key] = value
                    continue
                value = as_number
            out[column] = value
        if extra and "extra" not in declared:
            grow["extra"] = "json"
        if grow:
            self._grow(dataset, {c: Attribute(c, kind, original_name=originals.get(c)) for c, kind in grow.items()})
        if extra:
            out["extra"] = extra
        return out

    def _stored_types(self, dataset: str) -> dict[str, str]:
        """The attribute types the store already has for a dataset (read once per dataset)."""
        return {name: kind for name, (kind, _) in self._stored_attributes(dataset).items()}

    def _stored_attributes(self, dataset: str) -> dict[str, tuple[str, str | None]]:
        """The attributes the store already has for a dataset: name -> (type, original name), read once."""
        if dataset not in self._store_types:
            run = self.start()
            stored = run.stored_attributes(dataset)
            if stored is None:
                # The store is down: go by the declared types (asked again next time); the
                # writer declares the column when it answers, and says so if it conflicts.
                return {}
            self._store_types[dataset] = stored
        return self._store_types[dataset]

    def _flush(self) -> None:
        # A store that cannot take rows right now must not stop the training: they wait.
        try:
            self.run.flush()
        except CaptureError as exc:
            warnings.warn(f"trainprov: {exc}; training goes on", RuntimeWarning, stacklevel=3)

    def _add_validation(self) -> None:
        """Add the `validate` transformation (and `validation_results`) to the dataflow."""
        uses = [n for n in ("epoch_metrics", "step_metrics") if n in self.flow.datasets]
        self.flow = self.flow.with_transformation(validate_transformation(uses))
        if self.run is not None and self.run.status == "running":
            self.run.evolve(self.flow)

    # ---- data profiles ---------------------------------------------------------------------

    def profile(self, name: str, data: Any, split: str, *, labels: Any = None, exact: bool = False,
                reference_run: str | None = None, **options: Any) -> list[Element]:
        """Profile data as `data_profiles` rows of a `profile` task; the skew against other splits too.

        The rows are used by the training (the current one, else the next). Each split is
        compared with the "train" profile of the same name (or, with `reference_run`, with the
        profile of the same split in that run); skew rules check the distances.
        """
        rows = profile_rows(name, data, split, labels=labels, exact=exact, **options)
        run = self.start()
        if PROFILE not in self.flow.transformations:
            self.flow = self.flow.with_transformation(profile_transformation())
            run.evolve(self.flow)
        known = self._profiles.setdefault(name, {})
        skews: list[dict[str, Any]] = []
        compared: list[Element] = []  # the profiles the skew was measured against: used, for lineage
        if reference_run is not None:
            stored = self._stored_profile(reference_run, name, split)
            skews += skew_rows(rows, stored, reference_run=reference_run)
            compared += [Element("data_profiles", r["task_id"], r["element_seq"]) for r in stored]
        elif split != "train" and "train" in known:
            skews += skew_rows(rows, known["train"][0])
            compared += known["train"][1]
        elif split == "train":
            for other, (other_rows, other_elements) in known.items():
                if other != "train":
                    skews += skew_rows(other_rows, rows)
                    compared += other_elements
        depends = [t for t in run.tasks if t.transformation not in BUILT_IN and t.transformation != PROFILE]
        with run.task(PROFILE, depends_on=depends) as task:
            for element in compared:
                task.used(element)
            elements = [task.generated("data_profiles", **row) for row in rows]
            skew_elements = [task.generated("data_skew", **row) for row in skews]
        known[split] = (rows, elements)
        if self.train_task is not None:
            for element in elements:
                self.train_task.used(element)
        else:
            self.use(*elements)
        if self.validator is not None:
            self._validate(self.validator.profile(rows, skews), [*elements, *skew_elements])
        self._flush()
        return elements

    def _stored_profile(self, run_id: str, name: str, split: str) -> list[dict[str, Any]]:
        """A profile another run recorded (one read, when a drift is asked for)."""
        rows = self.start().read("SELECT * FROM data_profiles WHERE run_id = ? AND name = ? AND split = ?",
                                 (run_id, name, split))
        if not rows:
            raise CaptureError(f"run {run_id} recorded no {split!r} profile named {name!r} to compare with")
        for row in rows:
            for key in ("histogram", "categories"):
                if isinstance(row.get(key), str):
                    row[key] = json.loads(row[key])
        return rows

    def _validate(self, verdicts: list[Verdict], checked: Element | list[Element] | None) -> None:
        """Record verdicts as a `validate` task that used the checked row; act on failures."""
        if not verdicts:
            return
        run = self.start()
        depends = [self.train_task or self._last_train] if (self.train_task or self._last_train) else []
        with run.task(VALIDATE, depends_on=depends) as task:
            for element in [checked] if isinstance(checked, Element) else (checked or []):
                task.used(element)
            for verdict in verdicts:
                stop = verdict.verdict == FAIL and verdict.action == "stop" and self.stopped_by is None
                element = task.generated("validation_results", **verdict.row(stop))
                if stop:
                    self.stopped_by = (verdict, element)
                if verdict.failed and (verdict.action in ("warn", "stop") or verdict.verdict == ERROR):
                    where = ("the data profile" if verdict.epoch is None else f"epoch {verdict.epoch}") + (
                        f", step {verdict.step}" if verdict.step is not None else "")
                    what = "stops the training" if stop else verdict.severity
                    warnings.warn(f"trainprov: rule {verdict.rule} ({what}) at {where}: {verdict.message}",
                                  RuntimeWarning, stacklevel=4)

    def add_attributes(self, dataset: str, attributes: Mapping[str, Attribute | str]) -> None:
        """Declare new columns of a dataset in the run's dataflow (columns it already has stay as they are)."""
        declared = self.flow.datasets[dataset].types
        new = {name: kind for name, kind in attributes.items() if name not in declared}
        if new:
            self._grow(dataset, new)

    def _grow(self, dataset: str, attributes: dict[str, Attribute | str]) -> None:
        self.flow = self.flow.with_attributes(dataset, attributes)
        if self.run is not None and self.run.status == "running":
            self.run.evolve(self.flow)

    # ---- a fit ------------------------------------------------------------------------------

    def hyperparameters(self, facts: Mapping[str, Any], *, logged: Mapping[str, Any] | None = None,
                        chosen: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A training's hyperparameters: the framework's facts (those in `include`), logged values, chosen ones, yours.

        `logged` values (what a model saved as its hyperparameters) never hide a fact of the
        same name that differs (optimizer="adam" next to the class Adam, a column every
        framework's runs share): such a value goes to `hparam_<name>`. `chosen` values (named
        by the user, `hyperparameters_from`) and the recorder's own `hyperparameters` win.
        """
        values = dict(facts) if self.include is None else {k: v for k, v in facts.items() if k in self.include}
        for key, value in (logged or {}).items():
            taken = key in values and values[key] is not None and values[key] != value
            values[f"hparam_{key}" if taken else key] = value
        values.update(chosen or {})
        values.update(self.user_hyperparameters)
        return values

    def begin_training(self, hyperparameters: Mapping[str, Any], layers: Iterable[Mapping[str, Any]] = ()) -> Task:
        """Start a training task; record its hyperparameters and architecture."""
        run = self.start()
        if self.train_task is not None:  # the previous fit never reached its end
            self.end_training("failed", "the training did not reach its end")
        depends = [t for t in run.tasks if t.transformation not in BUILT_IN]
        depends += [self._last_train] if self._last_train is not None else []
        inside = groups.ambient()
        chosen = dict(inside.hyperparameters()) if inside is not None and inside.hyperparameters is not None else {}
        values = self._columns_for("hyperparameters", {"framework": self.framework, **hyperparameters, **chosen})
        layer_rows = [self._columns_for("layers", dict(layer)) for layer in layers]
        task = run.task(TRAIN, depends_on=depends)
        self.train_task = task
        self.stopped_by = None
        self._epochs = {}
        self._planned_epochs = number(hyperparameters.get("epochs"))
        if self.validator is not None:
            self.validator.reset()
        for element in self._pending_uses:
            task.used(element)
        self._pending_uses.clear()
        task.used("hyperparameters", **values)
        for row in layer_rows:
            task.used("layers", **row)
        run.exit_status = ("failed", "the training did not reach its end")
        self._flush()
        return task

    def epoch(self, epoch: int, metrics: Mapping[str, Any], *, learning_rate: float | None = None, seconds: float | None = None) -> Element:
        """Record one epoch (counted from 1) with every value the framework reported, then flush."""
        task = self._training()
        values = self._columns_for("epoch_metrics", dict(metrics))
        values["epoch"] = epoch
        if learning_rate is not None:
            values["learning_rate"] = learning_rate
        if seconds is not None:
            values["epoch_time_s"] = seconds
        with self._lock:
            element = task.generated("epoch_metrics", **values)
        self._epochs[epoch] = dict(metrics)
        if self.validator is not None:
            seen = dict(metrics)
            seen.setdefault("learning_rate", learning_rate)
            seen.setdefault("epoch_time_s", seconds)
            self._validate(self.validator.epoch(epoch, {k: v for k, v in seen.items() if v is not None}), element)
            self._drain_sql_checks()
        self._flush()
        if self.validator is not None and self.validator.sql_rules:
            due = [r for r in self.validator.sql_rules if epoch % r.every_epochs == 0]
            if due:
                self._start_sql_checks().put((epoch, element, due))
        # an epoch's end is a safe point for every framework: what is applied now takes effect in the next
        self.apply_steering(epoch + 1)
        return element

    # ---- SQL rules, off the training thread ------------------------------------------------

    def _start_sql_checks(self) -> "queue.Queue[tuple[int, Element, list[SqlRule]] | None]":
        if self._sql_checks is None:
            self._sql_checks = queue.Queue()
            self._sql_thread = threading.Thread(target=self._run_sql_checks, args=(self._sql_checks, self.start()),
                                                name="trainprov-sql-rules", daemon=True)
            self._sql_thread.start()
        return self._sql_checks

    def _run_sql_checks(self, work: "queue.Queue[tuple[int, Element, list[SqlRule]] | None]", run: Run) -> None:
        while True:
            item = work.get()
            if item is None:
                return
            epoch, element, due = item
            verdicts = []
            for rule in due:
                try:
                    outcome = rule.check_rows(run.read(f"SELECT * FROM ({rule.sql}) offending WHERE run_id = ?", (run.id,)))
                    verdicts.append(Verdict(rule.name, epoch, None, PASS if outcome.passed else FAIL, None,
                                            outcome.observed, outcome.threshold, outcome.message, rule.severity,
                                            rule.action))
                except Exception as exc:  # a broken query is a finding, not a crashed training
                    verdicts.append(Verdict(rule.name, epoch, None, ERROR, None, None, None,
                                            f"the query failed: {exc}", rule.severity, rule.action))
            self._sql_done.append((verdicts, element))

    def _drain_sql_checks(self, wait: bool = False) -> None:
        """Record the verdicts of SQL rules checked since (all of them if `wait`)."""
        if wait and self._sql_checks is not None:
            self._sql_checks.put(None)
            self._sql_thread.join(timeout=60)
            self._sql_checks = self._sql_thread = None
        while self._sql_done:
            verdicts, element = self._sql_done.popleft()
            self._validate(verdicts, element)

    def step(self, epoch: int, step: int, metrics: Mapping[str, Any], *, global_step: int | None = None) -> None:
        """Record one training step (counted from 1 within its epoch); not flushed."""
        # Steps come by the thousand with the same keys: once their columns are known, the
        # training task records them from a tuple of values (Task.prepared), without a lock:
        # a dataflow grown meanwhile sends the call the checked way.
        prepared = self._prepared_steps.get(tuple(metrics))
        if prepared is not None and prepared[0] is self.train_task:
            try:
                element = prepared[1]((*metrics.values(), epoch, step, global_step))
            except (ValueTypeError, SpecError):  # a value its column cannot take: the general way keeps it (in extra)
                element = self._step(epoch, step, metrics, global_step)
        else:
            element = self._step(epoch, step, metrics, global_step)
        if self.validator is not None and self.validator.step_rules:
            with self._lock:
                self._validate(self.validator.step(epoch, step, metrics), element)

    def _step(self, epoch: int, step: int, metrics: Mapping[str, Any], global_step: int | None) -> Element:
        # the general way: columns for new keys (the dataflow grows), non-numbers into `extra`
        keys = tuple(metrics)
        with self._lock:  # not while another thread grows the dataflow
            task = self.train_task or self._training()
            values = self._map_columns("step_metrics", metrics)
            values["epoch"], values["step"], values["global_step"] = epoch, step, global_step
            element = task.generated("step_metrics", **values)
            if "extra" not in values:
                names = (*(self._columns[("step_metrics", key)] for key in keys), "epoch", "step", "global_step")
                self._prepared_steps[keys] = (task, task.prepared("step_metrics", names))
            return element

    def adaptation(self, epoch: int, kind: str, cause: str, *, uses: Iterable[Element] = (), **facts: Any) -> Element | None:
        """Record an adaptation (a learning-rate change, early stopping) as a task of its own."""
        run = self.start()
        if kind == "learning_rate" and facts.get("old_value") == facts.get("new_value"):
            return None  # nothing changed: no adaptation
        depends = [self.train_task or self._last_train] if (self.train_task or self._last_train) else []
        with run.task(ADAPT, depends_on=depends) as task:
            for element in uses:
                task.used(element)
            values = {k: v for k, v in facts.items() if v is not None}
            return task.generated("adaptations", epoch=epoch, kind=kind, cause=cause, **values)

    def early_stopping(self, epoch: int, cause: str, *, monitor: str | None = None, planned_epochs: Any = None,
                       epochs_run: Any = None, best_value: Any = None, best_epoch: int | None = None,
                       monitor_value: Any = None, step: int | None = None,
                       seen: Iterable[tuple[int, Any]] | None = None) -> Element | None:
        """Record that a training stopped before its planned epochs: an adaptation of `epochs` at `epoch`.

        The monitored values are those this training recorded per epoch, or `seen` ((epoch,
        value) pairs, for evaluations that are not epoch rows). Unless given, the best epoch
        is the first whose value equals `best_value`, the monitored value the one at `epoch`,
        and the epochs run `epoch`.
        """
        if seen is None:
            seen = [(e, values.get(monitor)) for e, values in sorted(self._epochs.items())] if monitor else []
        observed = [(e, number(value)) for e, value in seen]
        best = number(best_value)
        if best_epoch is None and best is not None:
            best_epoch = next((e for e, value in observed if value == best), None)
        if monitor_value is None:
            monitor_value = dict(observed).get(epoch)
        return self.adaptation(
            epoch, "early_stopping", cause, step=step, parameter="epochs", old_value=number(planned_epochs),
            new_value=number(epochs_run if epochs_run is not None else epoch), monitor=monitor,
            monitor_value=number(monitor_value), best_epoch=best_epoch, best_value=best,
        )

    def checkpoint(self, path: str | os.PathLike, *, epoch: int | None = None, monitor: str | None = None,
                   monitor_value: float | None = None) -> FileRef:
        """Record a checkpoint file, derived from the previous one."""
        task = self.train_task or self._last_train
        if task is None or task.status != "running":
            raise CaptureError("a checkpoint is recorded during training (between begin_training and end_training)")
        element = task.generated("checkpoints", epoch=epoch, path=path, monitor=monitor, monitor_value=number(monitor_value))
        ref = element.files[0]
        if self._last_checkpoint is not None:
            task.derive(ref, [self._last_checkpoint])
        self._last_checkpoint, self._last_checkpoint_element = ref, element
        self._checkpoints[os.path.abspath(os.fspath(path))] = (ref, element)
        if self.steering.awaiting_checkpoint:
            self.steering.checkpoint_recorded(self, ref, element)
        return ref

    def checkpoint_loaded(self, path: str | os.PathLike) -> FileRef:
        """The framework loaded a recorded checkpoint back: later evaluations use it, not the last one saved."""
        found = self._checkpoints.get(os.path.abspath(os.fspath(path)))
        if found is None:
            raise CaptureError(f"checkpoint {os.fspath(path)} was not recorded in this run: record it before loading it")
        self._last_checkpoint, self._last_checkpoint_element = found
        return found[0]

    def end_training(self, status: str = "finished", error: str | None = None) -> None:
        """End the training task."""
        if self.train_task is None:
            return
        if self.validator is not None and self.validator.sql_rules:
            self._drain_sql_checks(wait=True)
        if self.stopped_by is not None and status == "finished":
            verdict, element = self.stopped_by
            # like early stopping: an adaptation of `epochs`, linked to the verdict that caused it
            self.adaptation(verdict.epoch, "stopped_by_rule", f"rule {verdict.rule}: {verdict.message}",
                            uses=[element], parameter="epochs", old_value=getattr(self, "_planned_epochs", None),
                            new_value=verdict.epoch, monitor=verdict.metric,
                            monitor_value=verdict.observed)
        if self.steering.stop_request is not None and status == "finished":
            self.steering.stopped(self, max(self._epochs, default=None), getattr(self, "_planned_epochs", None))
        self.train_task.end(status, error)
        self._last_train, self.train_task = self.train_task, None
        if self.run is not None:
            self.run.exit_status = ("finished", None) if status == "finished" else (status, error)
            self._flush()

    def evaluation(self, metrics: Mapping[str, Any], *, seconds: float | None = None) -> Element:
        """Record an evaluation (aggregated results) as a task after the last training."""
        run = self.start()
        depends = [self._last_train] if self._last_train is not None else []
        with run.task(EVALUATE, depends_on=depends) as task:
            if self._last_checkpoint_element is not None:
                task.used(self._last_checkpoint_element)
            values = self._columns_for("test_results", dict(metrics))
            if seconds is not None:
                values["evaluation_time_s"] = seconds
            element = task.generated("test_results", **values)
        self._flush()
        return element

    def _training(self) -> Task:
        if self.train_task is None:
            raise CaptureError("no training task is open: call begin_training first")
        return self.train_task


class RecordsTraining:
    """What every integration offers its user: the run, your own tasks first, your results, a `with` block."""

    recorder: TrainingRecorder

    @property
    def run(self) -> Run:
        """The run: the current or last one (started now if none has started yet)."""
        return self.recorder.run or self.recorder.start()

    def start(self) -> Run:
        """Start the run before training, to record your own tasks (data preparation, say) first."""
        return self.recorder.start()

    def use(self, *elements: Element) -> None:
        """Elements (your data, say) that the next training uses."""
        self.recorder.use(*elements)

    def profile(self, name: str, data: Any, split: str = "train", **options: Any) -> list[Element]:
        """Profile data (arrays, a DataFrame, `(x, y)`, a torch Dataset or DataLoader) as rows the training uses."""
        return self.recorder.profile(name, data, split, **options)

    def steerable(self, name: str, get: Any, set: Any, *, type: type = float, low: float | None = None,
                  high: float | None = None) -> None:
        """Let people change `name` while the training runs: `trainprov steer RUN --set name=value` calls `set(value)`."""
        self.recorder.steerable(name, get, set, type=type, low=low, high=high)

    @property
    def stop_requested(self) -> bool:
        """True once someone asked that the training stop at the end of this epoch (trainprov steer RUN --stop)."""
        return self.recorder.stop_requested

    def record_evaluation(self, metrics: Mapping[str, Any]) -> Element:
        """Record evaluation results you computed yourself (an error in physical units, say)."""
        return self.recorder.evaluation(metrics)

    def _release(self) -> None:
        """Let go of what the integration hooked into the framework (overridden where there is something)."""

    def end(self, status: str = "finished", error: str | None = None) -> None:
        """End the run (a training still open ends with it)."""
        self._release()
        self.recorder.end(status, error)

    def __enter__(self) -> "RecordsTraining":
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.end(*status_for(exc))


_profilers: "weakref.WeakKeyDictionary[Run, TrainingRecorder]" = weakref.WeakKeyDictionary()


def profile(name: str, data: Any, split: str = "train", *, run: Any, **options: Any) -> list[Element]:
    """Record a data profile in a run (a `Run`, or an integration's callback/tracker): `tp.profile`.

    Takes what `TrainingRecorder.profile` takes (labels, exact, max_rows, bins, reference_run).
    """
    recorder = getattr(run, "recorder", None)
    if not isinstance(recorder, TrainingRecorder):
        if not isinstance(run, Run):
            raise CaptureError(f"profile(..., run=...) takes a Run or a trainprov integration, got {type(run).__name__}")
        recorder = _profilers.get(run)
        if recorder is None:
            recorder = _profilers[run] = TrainingRecorder("profile", run=run, record_agents=False)
    return recorder.profile(name, data, split, **options)


def learning_rate_changes(value_at: Any, first: int, last: int) -> list[tuple[int, float, float]]:
    """Steps in [first, last] where a step function changes value: (step, old, new), by bisection."""
    changes: list[tuple[int, float, float]] = []

    def search(lo: int, lo_value: float, hi: int, hi_value: float) -> None:
        if lo_value == hi_value or (math.isnan(lo_value) and math.isnan(hi_value)):
            return
        if hi - lo == 1:
            changes.append((hi, lo_value, hi_value))
            return
        mid = (lo + hi) // 2
        mid_value = value_at(mid)
        search(lo, lo_value, mid, mid_value)
        search(mid, mid_value, hi, hi_value)

    if last > first:
        search(first, value_at(first), last, value_at(last))
    return changes

