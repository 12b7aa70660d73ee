"""A run as an RO-Crate folder (RO-Crate 1.1): its report, its PROV-JSON and its files, each with its SHA-256.

`ro-crate-metadata.json` describes the folder as a Dataset; the run is a CreateAction whose
`object` is the data it used and whose `result` is the checkpoints it wrote (the Process Run
Crate convention). Files recorded by the run are copied into `data/` and `checkpoints/` when
they still exist; a file gone from disk is listed by its recorded `file://` address with its
recorded digest, and says so.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from typing import Any

from ..capture.run import file_sha256
from ..export import build_document, serialize
from ..query import Reader
from . import report

#: the RO-Crate version written
SPEC = "https://w3id.org/ro/crate/1.1"
METADATA = "ro-crate-metadata.json"


def _file_entity(path: str, crate_id: str, name: str, media: str, **extra: Any) -> dict[str, Any]:
    return {"@id": crate_id, "@type": "File", "name": name, "encodingFormat": media,
            "contentSize": str(os.path.getsize(path)), "sha256": file_sha256(path), **extra}


def _iso(value: Any) -> str | None:
    if isinstance(value, _dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)).isoformat()
    return None if value is None else str(value)


def write(reader: Reader, ref: str, folder: str | os.PathLike) -> str:
    """Write the RO-Crate of one run (an id, a unique prefix or 'latest') into `folder`; the metadata file's path."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    facts = report.collect(reader, ref)
    run_id, run = facts["run_id"], facts["run"]
    with open(os.path.join(folder, "report.html"), "w", encoding="utf-8") as f:
        f.write(report.html(reader, run_id))
    with open(os.path.join(folder, "report.md"), "w", encoding="utf-8") as f:
        f.write(report.markdown(reader, run_id))
    with open(os.path.join(folder, "prov.json"), "wb") as f:
        f.write(serialize(build_document([run_id], store=reader), "json"))
    graph: list[dict[str, Any]] = [
        {"@id": METADATA, "@type": "CreativeWork", "conformsTo": {"@id": SPEC}, "about": {"@id": "./"}},
        _file_entity(os.path.join(folder, "report.html"), "report.html", f"Report of run {run_id}", "text/html",
                     description="self-contained: curves, adaptations, data, checkpoints, environment, provenance graph"),
        _file_entity(os.path.join(folder, "report.md"), "report.md", f"Model card of run {run_id}", "text/markdown"),
        _file_entity(os.path.join(folder, "prov.json"), "prov.json", f"W3C PROV of run {run_id}", "application/json",
                     conformsTo={"@id": "https://www.w3.org/submissions/prov-json/"}),
    ]
    parts = ["report.html", "report.md", "prov.json"]
    used, results = [], []
    for kind, files in (("data", facts["data"]), ("checkpoints", facts["checkpoints"])):
        for f in files:
            source = f["path"]
            target = f"{kind}/{f['file_id']}-{os.path.basename(source)}"
            entity: dict[str, Any]
            if os.path.isfile(source):
                os.makedirs(os.path.join(folder, kind), exist_ok=True)
                shutil.copyfile(source, os.path.join(folder, target))
                entity = _file_entity(os.path.join(folder, target), target, os.path.basename(source),
                                      "application/octet-stream", description=f"{f['role'] or kind}, recorded at {source}")
                if entity["sha256"] != f["sha256"]:
                    entity["description"] += f"; changed since the run, which recorded sha256 {f['sha256']}"
            else:  # gone from disk: the record stays, by its address
                target = "file://" + source
                entity = {"@id": target, "@type": "File", "name": os.path.basename(source), "sha256": f["sha256"],
                          "contentSize": str(f["size_bytes"]), "description": f"{f['role'] or kind}; not on disk when the crate was written"}
            graph.append(entity)
            parts.append(target)
            (used if kind == "data" else results).append({"@id": target})
    program = facts["program"]
    instrument = "#program"
    graph.append({"@id": instrument, "@type": "SoftwareApplication",
                  "name": program.get("notebook") or program.get("script") or "unknown program",
                  **({"version": program["git_commit"]} if program.get("git_commit") else {}),
                  **({"url": program["git_remote"]} if program.get("git_remote") else {})})
    action = {"@id": f"#run-{run_id}", "@type": "CreateAction", "name": f"run {run_id}" + (f" ({run['name']})" if run.get("name") else ""),
              "instrument": {"@id": instrument}, "object": used, "result": results,
              "actionStatus": {"@id": "http://schema.org/CompletedActionStatus" if run["status"] == "finished"
                               else "http://schema.org/FailedActionStatus" if run["status"] in ("failed", "interrupted")
                               else "http://schema.org/ActiveActionStatus"}}
    if _iso(run.get("started_at")):
        action["startTime"] = _iso(run["started_at"])
    if _iso(run.get("ended_at")):
        action["endTime"] = _iso(run["ended_at"])
    if run.get("error"):
        action["error"] = run["error"]
    graph.append(action)
    graph.insert(1, {"@id": "./", "@type": "Dataset", "name": f"Training run {run_id}",
                     "description": f"Provenance of the training run {run_id} of dataflow {run['dataflow']} "
                                    f"v{run['dataflow_version']}, recorded by trainprov: report, W3C PROV, data and checkpoints.",
                     "datePublished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     "hasPart": [{"@id": p} for p in parts], "mentions": {"@id": action["@id"]}})
    path = os.path.join(folder, METADATA)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"@context": f"{SPEC}/context", "@graph": graph}, f, indent=2)
    return path
