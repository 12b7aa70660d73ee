"""The export's vocabulary and identifiers: namespaces, the names of records, what lineage shares.

Identifiers are built from the store's own ids (run ids, task ids, element numbers, file
ids, the dataflow's fingerprint), never from export order, so two exports of one run name
every record alike and documents from different times merge.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from prov.identifier import Namespace

#: namespace of trainprov's own terms (types and attributes of runs, tasks, files, ...)
TP_NS = "urn:trainprov:vocab:"
#: namespace of dataset attributes: an element's `loss` is `tpa:loss`
TPA_NS = "urn:trainprov:attribute:"
#: namespace of identifiers of runs, tasks, elements, files, plans and agents
TPID_NS = "urn:trainprov:id:"
#: the identifier namespace as a `prov` Namespace (prefix `tpid`)
TPID = Namespace("tpid", TPID_NS)

#: files whose role makes them checkpoints
CHECKPOINT_ROLES = ("checkpoints", "checkpoint")
#: datasets summarised by default whatever their size (per-step records)
BULKY_DATASETS = ("step_metrics",)
#: a task with more elements than this in one dataset has them summarised by default
BULKY_THRESHOLD = 1000
#: the dataset whose rows are also exported as adaptation activities, and its columns
ADAPTATIONS = "adaptations"
ADAPTATION_COLUMNS = ("epoch", "parameter", "old_value", "new_value", "cause")
#: the attribute that says in which epoch an element was made (an adaptation: from which epoch it holds)
EPOCH = "epoch"

_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*\Z")


def safe(text: str) -> str:
    """A fragment usable in a QName local part in PROV-N, PROV-XML and Turtle alike.

    Store ids already are; anything else (a user or host name with odd characters) is
    replaced and suffixed with a hash of the original, so distinct names stay distinct.
    """
    if _SAFE.match(text) and not text.endswith("."):
        return text
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]+", "_", text).strip(".") or "x"
    return f"{cleaned}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def run_identifier(run_id: str) -> str:
    """Local identifier of a run's activity."""
    return f"run.{safe(run_id)}"


def group_identifier(name: str) -> str:
    """Local identifier of a run group's activity."""
    return f"group.{safe(name)}"


def task_identifier(task_id: str) -> str:
    """Local identifier of a task's activity."""
    return f"task.{safe(task_id)}"


def element_identifier(dataset: str, task_id: str, seq: int) -> str:
    """Local identifier of an element: its dataset, the task that recorded it and its number."""
    return f"el.{dataset}.{safe(task_id)}.{int(seq)}"


def file_identifier(file_id: str) -> str:
    """Local identifier of a recorded file."""
    return f"file.{safe(file_id)}"


def summary_identifier(dataset: str, task_id: str) -> str:
    """Local identifier of the collection that summarises a task's elements of a dataset."""
    return f"elements.{dataset}.{safe(task_id)}"


def plan_identifier(dataflow: str, fingerprint: str) -> str:
    """Local identifier of a dataflow version: its name and specification hash."""
    return f"plan.{dataflow}.{fingerprint[:12]}"


def dataset_identifier(dataflow: str, fingerprint: str, dataset: str) -> str:
    """Local identifier of a dataset schema as a dataflow version declares it."""
    return f"dataset.{dataflow}.{fingerprint[:12]}.{dataset}"


def transformation_identifier(dataflow: str, fingerprint: str, name: str) -> str:
    """Local identifier of a transformation (a plan) of a dataflow version."""
    return f"transformation.{dataflow}.{fingerprint[:12]}.{name}"


def adaptation_identifier(task_id: str, seq: int) -> str:
    """Local identifier of the activity an adaptation row stands for."""
    return f"adaptation.{safe(task_id)}.{int(seq)}"


def requester_identifier(person: str) -> str:
    """Local identifier of the person (user@host) who steered a training: the same in every export."""
    return f"agent.person.{safe(person)}"


def value_identifier(task_id: str, seq: int, which: str) -> str:
    """Local identifier of the old or new value (`which`) of an adaptation."""
    return f"value.{safe(task_id)}.{int(seq)}.{which}"


_ELEMENT_ID = re.compile(r"el\.([a-z][a-z0-9_]*)\.(.+)\.(\d+)\Z")
_FILE_ID = re.compile(r"file\.(.+)\Z")


def parse_identifier(text: str) -> tuple[str, tuple[Any, ...]] | None:
    """('element', (dataset, task_id, seq)) or ('file', (file_id,)) for an export identifier, else None.

    Accepts the local part (`el.epoch_metrics.RUN.2.7`), the prefixed name
    (`tpid:el...`) or the full URI (`urn:trainprov:id:el...`).
    """
    for prefix in (TPID_NS, "tpid:"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    match = _ELEMENT_ID.match(text)
    if match:
        return "element", (match.group(1), match.group(2), int(match.group(3)))
    match = _FILE_ID.match(text)
    if match:
        return "file", (match.group(1),)
    return None


def adaptation_applies(adaptation_epoch: Any, epoch: Any) -> bool:
    """Whether an adaptation holding from `adaptation_epoch` was in force when epoch `epoch` ran.

    Integrations record an adaptation with the first epoch it takes effect in (a change
    made at the end of epoch N holds from N+1) and often before the epoch-N checkpoint
    is written: the record time alone would credit that checkpoint with it. Unknown
    epochs (either side) leave the decision to the record time.
    """
    if isinstance(adaptation_epoch, bool) or isinstance(epoch, bool):
        return True
    if isinstance(adaptation_epoch, int) and isinstance(epoch, int):
        return adaptation_epoch <= epoch
    return True
