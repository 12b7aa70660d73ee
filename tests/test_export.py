"""W3C PROV export: the mapping, every serialization read back, stable identifiers, size control, mid-run."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
import rdflib
from click.testing import CliRunner
from prov.identifier import Identifier, QualifiedName
from prov.model import Literal, ProvDocument

import trainprov as tp
from trainprov import export as ex
from trainprov.cli import main
from conftest import ROOT
from prov_constraints import violations

# rdflib's own deprecations, raised inside prov's RDF reader
pytestmark = pytest.mark.filterwarnings("ignore:.* is deprecated, use .* instead:DeprecationWarning")

PROV_NS = "http://www.w3.org/ns/prov#"
XSD_NS = "http://www.w3.org/2001/XMLSchema#"
TPID, TP, TPA = ex.TPID_NS, ex.TP_NS, ex.TPA_NS


# ---- fixtures -------------------------------------------------------------------------------


def run_example(store: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "numpy_regression.py"), "--store", store, *args],
        capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[1]  # "run RUN_ID finished: ..."


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """A finished run of examples/numpy_regression.py: data files, hyperparameters, 12 epochs, one LR drop."""
    store = str(tmp_path_factory.mktemp("example") / "example.db")
    return store, run_example(store, "--epochs", "12")


STEP_FLOW = tp.Dataflow("steps", [
    tp.Transformation(
        "train",
        uses=[tp.Dataset("hyperparameters", lr=float, optimizer=str, started=dt.datetime, config="json", augment=bool)],
        generates=[
            tp.Dataset("step_metrics", epoch=int, step=int, loss=float),
            tp.Dataset("epoch_metrics", epoch=int, loss=float, val_loss=float, diverged=bool),
            tp.Dataset("checkpoints", epoch=int, path="file"),
        ],
    ),
    tp.Transformation(
        "adapt", uses=["epoch_metrics"],
        generates=[tp.Dataset("adaptations", epoch=int, step=int, kind=str, parameter=str, old_value=float,
                              new_value=float, cause=str, monitor=str, monitor_value=float, best_epoch=int)],
    ),
    tp.Transformation("evaluate", uses=["checkpoints"], generates=[tp.Dataset("test_results", loss=float)]),
])


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    """A run with per-step rows, NaN and infinities, a separate adapt task (as integrations record it) and files."""
    folder = tmp_path_factory.mktemp("steps")
    store = str(folder / "steps.db")
    with tp.start_run(STEP_FLOW, store, name="steps") as run:
        with run.task("train") as train:
            train.used("hyperparameters", lr=0.1, optimizer="adam", started=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
                       config={"layers": [8, 4]}, augment=True)
            raw = folder / "raw.csv"
            raw.write_text("x,y\n1,2\n")
            source = train.file(raw, role="raw_data")
            lr = 0.1
            for epoch in range(1, 4):
                for step in range(1, 41):
                    loss = math.nan if (epoch, step) == (2, 7) else 1.0 / (epoch * step)
                    train.generated("step_metrics", epoch=epoch, step=step, loss=loss)
                train.generated("epoch_metrics", epoch=epoch, loss=[math.inf, -math.inf, 0.25][epoch - 1],
                                val_loss=None if epoch == 1 else 0.5 / epoch, diverged=epoch == 1)
                ckpt = folder / f"ckpt{epoch}.bin"
                ckpt.write_bytes(b"w" * epoch)
                element = train.generated("checkpoints", epoch=epoch, path=ckpt)
                if epoch == 1:
                    train.derive(element.files[0], [source])
                if epoch < 3:
                    with run.task("adapt", depends_on=[train]) as adapt:
                        adapt.generated("adaptations", epoch=epoch + 1, kind="learning_rate", parameter="lr", old_value=lr,
                                        new_value=lr / 10, cause="plateau", monitor="val_loss", monitor_value=0.5)
                    lr /= 10
            run.flush()
        with run.task("evaluate", depends_on=[train]) as evaluate:
            evaluate.used(element)
            evaluate.generated("test_results", loss=0.3)
    return store, run.id


# ---- helpers --------------------------------------------------------------------------------


def canon(value):
    """A value in one form whatever serialization it came back from: (kind, text)."""
    if isinstance(value, QualifiedName):
        return ("id", value.uri)
    if isinstance(value, Identifier):
        return ("id", value.uri)
    if isinstance(value, Literal):
        datatype = value.datatype.uri if value.datatype is not None else XSD_NS + "string"
        kind = datatype.rsplit("#", 1)[-1]
        if kind in ("long", "int", "integer"):
            return ("int", str(int(value.value)))
        if kind == "double":
            return canon(float(value.value))
        if kind == "boolean":
            return ("bool", value.value.lower() in ("true", "1"))
        if kind == "dateTime":
            return canon(dt.datetime.fromisoformat(value.value))
        if kind == "QName":
            return ("qname", value.value)
        return ("str", value.value)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("int", str(value))
    if isinstance(value, float):
        return ("float", "NaN" if math.isnan(value) else repr(value))
    if isinstance(value, dt.datetime):
        return ("datetime", value.astimezone(dt.timezone.utc).isoformat())
    return ("str", str(value))


def signature(record):
    ident = record.identifier.uri if record.identifier is not None else None
    attrs = tuple(sorted((name.uri, canon(value)) for name, value in record.attributes if value is not None))
    return record.get_type().localpart, ident, attrs


def signatures(document: ProvDocument) -> Counter:
    return Counter(signature(r) for r in document.get_records())


def kinds(document: ProvDocument) -> Counter:
    return Counter("element:" + r.get_type().localpart if r.is_element() else "relation:" + r.get_type().localpart
                   for r in document.get_records())


def ids(document: ProvDocument, localpart: str | None = None) -> set[str]:
    return {r.identifier.uri for r in document.get_records()
            if r.is_element() and (localpart is None or r.get_type().localpart == localpart)}


def record(document: ProvDocument, local: str):
    found = [r for r in document.get_records() if r.identifier is not None and r.identifier.uri == TPID + local]
    assert len(found) == 1, local
    return found[0]


def values(rec, name: str) -> list:
    return [v for k, v in rec.attributes if k.uri == name]


def relations(document: ProvDocument, kind: str) -> list[tuple]:
    """(first, second, ...) formal arguments of each relation of a kind, as URIs."""
    out = []
    for r in document.get_records():
        if r.is_relation() and r.get_type().localpart == kind:
            out.append(tuple(v.uri if isinstance(v, QualifiedName) else v for _, v in r.formal_attributes))
    return out


def dangling(document: ProvDocument) -> list[tuple]:
    """Relations that refer to an entity, activity or agent the document does not describe."""
    described = ids(document)
    return [
        (r.get_type().localpart, name.localpart, value.uri)
        for r in document.get_records() if r.is_relation()
        for name, value in r.formal_attributes
        if isinstance(value, QualifiedName) and value.uri not in described
    ]


# ---- the mapping ----------------------------------------------------------------------------


def test_a_run_maps_to_plan_activities_entities_and_agents(example):
    store, run_id = example
    doc = ex.build_document(run_id, store=store)
    assert not dangling(doc)
    assert max(signatures(doc).values()) == 1, "every record once"
    counts = kinds(doc)
    assert counts["element:Activity"] == 1 + 3 + 1  # the run, its three tasks, one adaptation
    assert counts["element:Agent"] == 4  # person, machine, Python, the program

    plan = [r for r in doc.get_records() if r.is_element()
            and {PROV_NS + "Plan", TP + "Dataflow"} <= {v.uri for v in values(r, PROV_NS + "type")}]
    assert len(plan) == 1
    plan_uri = plan[0].identifier.uri
    members = {b for a, b in relations(doc, "Membership") if a == plan_uri}
    assert {m.rsplit(".", 1)[1] for m in members} >= {"generate_data", "train", "evaluate", "hyperparameters", "epoch_metrics"}
    run_uri = TPID + ex.run_identifier(run_id)
    assert {(a, p) for a, _, p in relations(doc, "Association") if a == run_uri} == {(run_uri, plan_uri)}
    train = TPID + ex.task_identifier(f"{run_id}.2")
    evaluate = TPID + ex.task_identifier(f"{run_id}.3")
    associated = {(a, pl.rsplit(".", 1)[1]) for a, _, pl in relations(doc, "Association") if a != run_uri}
    assert (train, "train") in associated and (evaluate, "evaluate") in associated
    assert (evaluate, train) in relations(doc, "Communication")  # evaluate depends on train
    assert {(t, s) for t, _, s, _ in relations(doc, "Start")} >= {(train, run_uri), (evaluate, run_uri)}

    # elements: generated or used by their task, with times, values typed
    metrics = record(doc, ex.element_identifier("epoch_metrics", f"{run_id}.2", 26))
    assert canon(values(metrics, TPA + "epoch")[0]) == ("int", "12")
    assert values(metrics, TPA + "loss")[0] < 0.1
    generated = {(e, a): t for e, a, t in relations(doc, "Generation")}
    assert isinstance(generated[(metrics.identifier.uri, train)], dt.datetime)
    hp = TPID + ex.element_identifier("hyperparameters", f"{run_id}.2", 1)
    assert any(a == train and e == hp and isinstance(t, dt.datetime) for a, e, t in relations(doc, "Usage"))

    # agents: person, machine with hardware facts, software with package versions; delegation; association
    agents = {r.identifier.uri: r for r in doc.get_records() if r.is_element() and r.get_type().localpart == "Agent"}
    types = {u: {canon(v)[1] for v in values(r, PROV_NS + "type")} for u, r in agents.items()}
    person = [u for u, t in types.items() if PROV_NS + "Person" in t]
    machine = [u for u, t in types.items() if TP + "Machine" in t]
    assert len(person) == 1 and len(machine) == 1
    assert values(agents[machine[0]], TP + "cpu_count") and values(agents[machine[0]], TP + "memory_bytes")
    assert any(str(v).startswith("numpy==") for r in agents.values() for v in values(r, TP + "packages"))
    delegations = relations(doc, "Delegation")
    assert {(d, r, a) for d, r, a in delegations} >= {(machine[0], person[0], run_uri)}
    assert {ag for a, ag, _ in relations(doc, "Association") if a == run_uri} == set(agents)


def test_files_are_entities_and_a_checkpoint_derives_from_its_sources(example):
    store, run_id = example
    doc = ex.build_document(run_id, store=store)
    reader = tp.connect(store)
    files = {f["file_id"]: f for f in reader.rows("SELECT * FROM files WHERE run_id = ?", [run_id])}
    checkpoints = sorted((f for f in files.values() if f["role"] == "checkpoints"), key=lambda f: f["element_seq"])
    data = {reader.rows("SELECT split FROM data_files WHERE task_id = ? AND element_seq = ?",
                        [f["task_id"], f["element_seq"]])[0]["split"]: f for f in files.values() if f["role"] == "data_files"}
    last = record(doc, ex.file_identifier(checkpoints[-1]["file_id"]))
    assert canon(values(last, TP + "size_bytes")[0]) == ("int", str(checkpoints[-1]["size_bytes"]))
    assert values(last, TP + "sha256") == [checkpoints[-1]["sha256"]]
    assert TP + "Checkpoint" in [v.uri for v in values(last, PROV_NS + "type")]

    derived = {}
    for new, old, *_ in relations(doc, "Derivation"):
        derived.setdefault(new, set()).add(old)
    sources = derived[last.identifier.uri]
    uri = lambda f: TPID + ex.file_identifier(f["file_id"])  # noqa: E731
    assert uri(checkpoints[-2]) in sources, "derived from the previous checkpoint"
    assert {uri(data["train"]), uri(data["val"])} <= sources and uri(data["test"]) not in sources
    assert TPID + ex.element_identifier("hyperparameters", f"{run_id}.2", 1) in sources
    new_lr = [u for u in sources if u.startswith(TPID + "value.")]
    assert len(new_lr) == 1 and canon(values(record(doc, new_lr[0][len(TPID):]), PROV_NS + "value")[0]) == ("float", "0.025")
    first = derived[uri(checkpoints[0])]
    assert not any(u.startswith(TPID + "value.") or u in map(uri, checkpoints) for u in first)
    # the checkpoint element and its file are two views of one thing
    element = TPID + ex.element_identifier("checkpoints", checkpoints[-1]["task_id"], checkpoints[-1]["element_seq"])
    assert (last.identifier.uri, element) in relations(doc, "Alternate")
    # evaluate used the last checkpoint (element and file)
    evaluate = TPID + ex.task_identifier(f"{run_id}.3")
    used = {e for a, e, _ in relations(doc, "Usage") if a == evaluate}
    assert {element, last.identifier.uri} <= used


def test_adaptations_are_activities_that_use_the_old_value_and_generate_the_new(steps):
    store, run_id = steps
    doc = ex.build_document(run_id, store=store)
    adaptations = [r for r in doc.get_records() if r.is_element() and r.get_type().localpart == "Activity"
                   and TP + "Adaptation" in [v.uri for v in values(r, PROV_NS + "type")]]
    assert len(adaptations) == 2
    first, second = sorted(adaptations, key=lambda r: canon(values(r, TPA + "epoch")[0])[1])
    used = {a: e for a, e, _ in relations(doc, "Usage")}
    generated = {a: e for e, a, _ in relations(doc, "Generation")}
    old1, new1 = used[first.identifier.uri], generated[first.identifier.uri]
    old2, new2 = used[second.identifier.uri], generated[second.identifier.uri]
    value = lambda u: values(record(doc, u[len(TPID):]), PROV_NS + "value")[0]  # noqa: E731
    assert (value(old1), value(new1), value(new2)) == (0.1, pytest.approx(0.01), pytest.approx(0.001))
    assert old2 == new1, "the value one adaptation set is the value the next one replaced"
    assert (new1, old1) in [(n, o) for n, o, *_ in relations(doc, "Derivation")]
    # the nullable columns integrations add are kept, the row's own element too
    assert values(first, TPA + "monitor") == ["val_loss"] and values(first, TPA + "kind") == ["learning_rate"]
    element = values(first, TP + "element")[0].uri
    assert element.startswith(TPID + "el.adaptations.")
    # the adapt task is informed by the training task it adapts; the adaptation by its task
    train = TPID + ex.task_identifier(f"{run_id}.1")
    assert (TPID + ex.task_identifier(f"{run_id}.2"), train) in relations(doc, "Communication")
    # a later checkpoint derives from the value the latest adaptation set before it
    ckpt3 = [r for r in doc.get_records() if r.is_element() and values(r, TP + "path")
             and str(values(r, TP + "path")[0]).endswith("ckpt3.bin")][0]
    sources = {o for n, o, *_ in relations(doc, "Derivation") if n == ckpt3.identifier.uri}
    assert new2 in sources and new1 not in sources


def test_a_steering_adaptation_is_associated_with_the_person_who_asked(tmp_path):
    import getpass
    import socket

    from trainprov.capture.steering import request_steering, steering_requests
    from trainprov.capture.training import TrainingRecorder

    store = str(tmp_path / "steered.db")
    rec = TrainingRecorder("toy", store, record_agents=False, steering=False)  # requests read below, by hand
    state = {"lr": 0.1}
    rec.steerable("learning_rate", lambda: state["lr"], lambda v: state.__setitem__("lr", v), low=0)
    run_id = rec.start().id
    rec.begin_training({"epochs": 3, "learning_rate": 0.1})
    rec.epoch(1, {"loss": 1.0}, learning_rate=state["lr"])
    asked = [request_steering(run_id, "set", "learning_rate", 0.01, store=store, reason="the loss plateaued"),
             request_steering(run_id, "set", "learning_rate", 0.001, store=store, reason="still flat",
                              requested_by=f"{getpass.getuser()}@{socket.gethostname()} via dashboard")]
    rec.steering.listen(rec.run)
    rec.steering.poll()
    rec.apply_steering(2, 5)
    rec.epoch(2, {"loss": 0.5}, learning_rate=state["lr"])
    rec.end_training()
    rec.end()
    assert [r.status for r in steering_requests(run_id, store=store)] == ["applied", "applied"]

    person = f"{getpass.getuser()}@{socket.gethostname()}"
    agent_uri = TPID + ex.requester_identifier(person)
    doc = ex.build_document(run_id, store=store)
    for fmt, reader_format, options in (("json", "json", {}), ("turtle", "rdf", {"rdf_format": "turtle"})):
        back = ProvDocument.deserialize(content=ex.serialize(doc, fmt).decode(), format=reader_format, **options)
        [agent] = [r for r in back.get_records() if r.is_element() and r.identifier.uri == agent_uri]
        assert agent.get_type().localpart == "Agent"
        assert [canon(v) for v in values(agent, PROV_NS + "type")] == [("id", PROV_NS + "Person")], fmt
        assert [canon(v) for v in values(agent, PROV_NS + "label")] == [("str", person)], fmt
        steered = {}  # request id -> (adaptation activity, association)
        for r in back.get_records():
            if r.is_relation() and r.get_type().localpart == "Association":
                activity, who = [v for _, v in r.formal_attributes][:2]
                if isinstance(who, QualifiedName) and who.uri == agent_uri:
                    [request_id] = [canon(v)[1] for v in values(r, TP + "request_id")]
                    steered[request_id] = (activity.uri, r)
        assert set(steered) == {a.request_id for a in asked}, fmt
        for request in asked:
            activity_uri, association = steered[request.request_id]
            activity = record(back, activity_uri[len(TPID):])
            assert TP + "Adaptation" in [canon(v)[1] for v in values(activity, PROV_NS + "type")]
            assert [canon(v)[1] for v in values(activity, TPA + "request_id")] == [request.request_id]
            assert [canon(v)[1] for v in values(association, TP + "reason")] == [request.reason]
            assert [canon(v)[1] for v in values(association, PROV_NS + "role")] == [TP + "requester"]
        assert [canon(v)[1] for v in values(steered[asked[1].request_id][1], TP + "via")] == ["dashboard"]
        assert values(steered[asked[0].request_id][1], TP + "via") == []
        assert violations(back) == [], fmt

    # rdflib reads the same from the Turtle: the Person and the adaptations associated with it
    prov = rdflib.Namespace(PROV_NS)
    graph = rdflib.Graph().parse(data=ex.serialize(doc, "turtle").decode(), format="turtle")
    agent = rdflib.URIRef(agent_uri)
    assert (agent, rdflib.RDF.type, prov.Person) in graph
    assert str(graph.value(agent, rdflib.RDFS.label)) == person
    rows = graph.query(
        """SELECT ?activity ?request ?reason WHERE {
             ?activity a tp:Adaptation ; prov:qualifiedAssociation ?q .
             ?q prov:agent ?who ; prov:hadRole tp:requester ; tp:request_id ?request ; tp:reason ?reason .
           }""",
        initNs={"prov": prov, "tp": rdflib.Namespace(TP)}, initBindings={"who": agent})
    assert {(str(r.request), str(r.reason)) for r in rows} == {(a.request_id, a.reason) for a in asked}
    assert {str(r.activity) for r in rows} == {uri for uri, _ in steered.values()}


def test_values_keep_their_xsd_types_nan_and_infinities(steps):
    store, run_id = steps
    doc = ex.build_document(run_id, store=store)
    by_epoch = {}
    for r in doc.get_records():
        if r.identifier is not None and r.identifier.uri.startswith(TPID + "el.epoch_metrics."):
            by_epoch[int(values(r, TPA + "epoch")[0].value)] = r
    assert values(by_epoch[1], TPA + "loss") == [math.inf] and values(by_epoch[2], TPA + "loss") == [-math.inf]
    assert values(by_epoch[1], TPA + "val_loss") == [], "a missing value is no attribute, not NaN"
    assert values(by_epoch[1], TPA + "diverged") == [True] and values(by_epoch[2], TPA + "diverged") == [False]
    hp = [r for r in doc.get_records() if r.identifier is not None and r.identifier.uri.startswith(TPID + "el.hyperparameters.")][0]
    assert values(hp, TPA + "started") == [dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)]
    assert json.loads(values(hp, TPA + "config")[0]) == {"layers": [8, 4]}
    text = ex.serialize(doc, "provn").decode()
    assert '"INF" %% xsd:double' in text and '"-INF" %% xsd:double' in text and '"NaN" %% xsd:double' in text
    assert 'tpa:epoch="2" %% xsd:long' in text and '%% xsd:boolean' in text and '%% xsd:dateTime' in text


# ---- serializations read back ---------------------------------------------------------------


@pytest.mark.parametrize("fmt, reader_format, options", [
    ("json", "json", {}),
    ("xml", "xml", {}),
    ("provn", "provn", {}),
    ("jsonld", "jsonld", {}),
    ("turtle", "rdf", {"rdf_format": "turtle"}),
    ("trig", "rdf", {"rdf_format": "trig"}),
    ("rdfxml", "rdf", {"rdf_format": "xml"}),
])
def test_each_serialization_reads_back_with_the_same_records(example, steps, fmt, reader_format, options):
    if fmt == "xml":
        pytest.importorskip("lxml", reason="PROV-XML needs lxml (the prov[xml] extra)")
    for store, run_id in (example, steps):
        doc = ex.build_document(run_id, store=store)
        data = ex.serialize(doc, fmt)
        if fmt in ("json", "jsonld"):
            json.loads(data, parse_constant=lambda c: pytest.fail(f"{fmt} holds the bare constant {c}: not JSON"))
        back = ProvDocument.deserialize(content=data.decode(), format=reader_format, **options)
        assert kinds(back) == kinds(doc)
        assert signatures(back) == signatures(doc)
        assert ids(back, "Entity") == ids(doc, "Entity") and ids(back, "Agent") == ids(doc, "Agent")
        assert violations(back) == [], "what a reader gets back meets PROV-CONSTRAINTS"


# which PROV-O predicates state each relation, directly or through its qualification node
PROV_O = {
    "Generation": ("wasGeneratedBy", "qualifiedGeneration", "activity"),
    "Usage": ("used", "qualifiedUsage", "entity"),
    "Communication": ("wasInformedBy", "qualifiedCommunication", "activity"),
    "Start": (None, "qualifiedStart", "hadActivity"),
    "Association": ("wasAssociatedWith", "qualifiedAssociation", "agent"),
    "Delegation": ("actedOnBehalfOf", "qualifiedDelegation", "agent"),
    "Derivation": ("wasDerivedFrom", "qualifiedDerivation", "entity"),
    "Alternate": ("alternateOf", None, None),
    "Membership": ("hadMember", None, None),
}


@pytest.mark.parametrize("fmt, rdf_format", [("turtle", "turtle"), ("trig", "trig"), ("rdfxml", "xml"), ("jsonld", "json-ld")])
def test_prov_o_read_with_rdflib_has_the_same_entities_activities_agents_and_relations(example, steps, fmt, rdf_format):
    prov = rdflib.Namespace(PROV_NS)
    for store, run_id in (example, steps):
        doc = ex.build_document(run_id, store=store)
        graph = rdflib.Dataset() if fmt == "trig" else rdflib.Graph()
        graph.parse(data=ex.serialize(doc, fmt).decode(), format=rdf_format)
        if fmt == "trig":
            graph = graph.default_context
        assert not list(graph.triples((None, rdflib.URIRef("https://openprovenance.org/ns/provext#qualifiedMembership"), None)))
        for kind in ("Entity", "Activity", "Agent"):
            assert {str(s) for s in graph.subjects(rdflib.RDF.type, prov[kind])} == ids(doc, kind), kind
        checked = Counter()
        for r in doc.get_records():
            if not r.is_relation():
                continue
            kind = r.get_type().localpart
            # the first two identifiers: a start's are its activity and starter (it has no trigger)
            subject, obj = [rdflib.URIRef(v.uri) for _, v in r.formal_attributes if isinstance(v, QualifiedName)][:2]
            direct, qualified, via = PROV_O[kind]
            alternatives = [qualified]
            if kind == "Derivation" and any(canon(v) == ("id", PROV_NS + "Revision") for _, v in r.attributes):
                # PROV-O: qualifiedRevision; PROV-JSONLD's context: qualifiedDerivation typed prov:Revision
                direct, alternatives = "wasRevisionOf", ["qualifiedRevision", "qualifiedDerivation"]
            found = direct is not None and (subject, prov[direct], obj) in graph
            for qualified in alternatives if not found and qualified else []:
                found = found or any((node, prov[via], obj) in graph for node in graph.objects(subject, prov[qualified]))
            assert found, (kind, subject, obj)
            checked[kind] += 1
        assert set(checked) >= {"Generation", "Usage", "Association", "Delegation", "Derivation", "Start", "Communication",
                                "Membership", "Alternate"}
        # and SPARQL over it: every checkpoint derived from the hyperparameters
        rows = graph.query(
            """SELECT DISTINCT ?ckpt WHERE {
                 ?ckpt a tp:Checkpoint ; (prov:wasDerivedFrom|prov:qualifiedDerivation/prov:entity) ?hp .
                 FILTER(STRSTARTS(STR(?hp), "urn:trainprov:id:el.hyperparameters."))
               }""",
            initNs={"prov": prov, "tp": rdflib.Namespace(TP), "tpid": rdflib.Namespace(TPID)},
        )
        generated_checkpoints = [f for f in ids(doc, "Entity") if f.startswith(TPID + "file.")
                                 and TP + "Checkpoint" in [v.uri for v in values(record(doc, f[len(TPID):]), PROV_NS + "type")]]
        assert len(rows) == len(generated_checkpoints) > 0


# ---- identifiers, merging -------------------------------------------------------------------


def test_two_exports_of_a_run_have_the_same_identifiers_and_bytes(example, steps):
    for store, run_id in (example, steps):
        first = ex.build_document(run_id, store=store)
        second = ex.build_document(run_id, store=store)
        assert ids(first) == ids(second) and signatures(first) == signatures(second)
        assert ex.serialize(first, "json") == ex.serialize(second, "json")
        assert ex.serialize(first, "provn") == ex.serialize(second, "provn")


def test_re_exports_are_byte_identical_in_every_format(example, steps, tmp_path):
    # two processes with different hash seeds: set and dict orders, random blank-node labels would show
    script = (
        "import sys\nfrom trainprov.export import build_document, serialize\n"
        "store, run, folder = sys.argv[1:]\ndoc = build_document(run, store=store)\n"
        "for fmt in ('json', 'provn', 'xml', 'jsonld', 'turtle', 'trig', 'rdfxml', 'dot'):\n"
        "    open(f'{folder}/{fmt}', 'wb').write(serialize(doc, fmt))\n"
    )
    for store, run_id in (example, steps):
        outputs = []
        for seed in ("1", "2"):
            folder = tmp_path / f"{run_id}-{seed}"
            folder.mkdir()
            done = subprocess.run([sys.executable, "-c", script, store, run_id, str(folder)], capture_output=True,
                                  text=True, timeout=120, env={**os.environ, "PYTHONHASHSEED": seed})
            assert done.returncode == 0, done.stderr
            outputs.append({f.name: f.read_bytes() for f in folder.iterdir()})
        assert len(outputs[0]) == 8
        assert [f for f in outputs[0] if outputs[0][f] != outputs[1][f]] == []
        doc = ex.build_document(run_id, store=store)
        assert ex.serialize(doc, "turtle") == outputs[0]["turtle"], "and the same in this process"


def test_several_runs_and_a_whole_dataflow_in_one_document(tmp_path, example):
    store = str(tmp_path / "two.db")
    first, second = run_example(store, "--epochs", "3"), run_example(store, "--epochs", "4", "--lr", "0.01")
    both = ex.build_document([first, second], store=store)
    flow = ex.build_document(store=store, dataflow="numpy_regression")
    assert ids(both) == ids(flow)
    assert ids(ex.build_document(first, store=store)) | ids(ex.build_document(second, store=store)) == ids(both)
    assert not dangling(both)
    runs = [r for r in both.get_records() if r.is_element() and TP + "Run" in [v.uri for v in values(r, PROV_NS + "type")]]
    assert len(runs) == 2
    plans = [u for u in ids(both) if u.startswith(TPID + "plan.")]
    assert len(plans) == 1, "the same specification is one plan, named by its fingerprint"
    # the same person and machine across runs; merged documents unify without conflict
    merged = ex.build_document(first, store=store)
    merged.update(ex.build_document(second, store=store))
    assert ids(merged.unified()) == ids(both)
    # a dataflow with no runs exports its plan alone
    empty = tp.Dataflow("planned", [tp.Transformation("t", generates=[tp.Dataset("outputs", x=int)])])
    from trainprov.store import open_backend

    open_backend(store).declare(empty)
    plan_only = ex.build_document(store=store, dataflow="planned")
    assert [u.rsplit(".", 1)[0] for u in ids(plan_only) if u.startswith(TPID + "plan.")] == [TPID + "plan.planned"]
    for shape in (both, flow, merged.unified(), plan_only):
        assert violations(shape) == []


# ---- size control -----------------------------------------------------------------------------


def test_per_step_rows_are_summarised_by_default_and_exported_with_members(steps):
    store, run_id = steps
    train = f"{run_id}.1"
    summary_id = ex.summary_identifier("step_metrics", train)
    default = ex.build_document(run_id, store=store)
    summary = record(default, summary_id)
    assert canon(values(summary, TP + "count")[0]) == ("int", "120")
    assert canon(values(summary, TP + "exported_members")[0]) == ("int", "0")
    assert canon(values(summary, TPA + "step.min")[0]) == ("int", "1") and canon(values(summary, TPA + "step.max")[0]) == ("int", "40")
    assert values(summary, TPA + "loss.min") == [pytest.approx(1 / 120)]
    assert math.isnan(values(summary, TPA + "loss.max")[0]), "NaN sorts above every number, as in SQL"
    assert {v.uri for v in values(summary, PROV_NS + "type")} >= {PROV_NS + "Collection", TP + "ElementSummary"}
    assert (summary.identifier.uri, TPID + ex.task_identifier(train)) in [(e, a) for e, a, _ in relations(default, "Generation")]
    assert not [u for u in ids(default) if u.startswith(TPID + "el.step_metrics.")]

    full = ex.build_document(run_id, store=store, members=True)
    step_entities = [u for u in ids(full) if u.startswith(TPID + "el.step_metrics.")]
    assert len(step_entities) == 120
    assert {e for c, e in relations(full, "Membership") if c == summary.identifier.uri} == set(step_entities)
    assert canon(values(record(full, summary_id), TP + "exported_members")[0]) == ("int", "120")
    assert ids(default) <= ids(full), "summarising never renames what it keeps"
    assert len(ex.serialize(full, "json")) > 2 * len(ex.serialize(default, "json"))

    small = ex.build_document(run_id, store=store, bulky_threshold=2, bulky_datasets=())
    assert canon(values(record(small, ex.summary_identifier("epoch_metrics", train)), TP + "count")[0]) == ("int", "3")
    assert len([u for u in ids(small) if u.startswith(TPID + "el.step_metrics.")]) == 0  # 120 > 2
    # an element of a summarised dataset that something refers to is still exported, as a member
    referenced = [u for u in ids(small) if u.startswith(TPID + "el.checkpoints.")]
    assert len(referenced) == 3 and not dangling(small)
    for shape in (default, full, small):
        assert violations(shape) == []


# ---- mid-run ------------------------------------------------------------------------------------


def test_a_mid_run_export_is_a_snapshot_whose_identifiers_stay(tmp_path):
    store = str(tmp_path / "live.db")
    training = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "examples", "numpy_regression.py"), "--epochs", "16",
         "--seconds-per-epoch", "0.2", "--store", store],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            if os.path.exists(store):
                try:
                    if tp.query("SELECT count(*) AS n FROM epoch_metrics", store=store)[0]["n"] >= 3:
                        break
                except tp.TrainprovError:
                    pass
            time.sleep(0.1)
        middle = ex.build_document("latest", store=store)
    finally:
        out, err = training.communicate(timeout=120)
    assert training.returncode == 0, err
    run = [r for r in middle.get_records() if r.is_element() and TP + "Run" in [v.uri for v in values(r, PROV_NS + "type")]][0]
    assert values(run, TP + "status") == ["running"] and run.get_endTime() is None
    assert not dangling(middle), "every element's task, every file's element is in the snapshot"
    epochs = [u for u in ids(middle) if u.startswith(TPID + "el.epoch_metrics.")]
    assert 3 <= len(epochs) < 16
    final = ex.build_document("latest", store=store)
    assert violations(middle) == [] and violations(final) == []
    assert ids(middle) <= ids(final), "what a mid-run export names keeps its name"
    merged = ProvDocument()
    merged.update(middle)
    merged.update(final)
    assert ids(merged.unified()) == ids(final)


def test_exports_taken_while_tasks_and_elements_appear_never_dangle(tmp_path):
    store = str(tmp_path / "busy.db")
    flow = tp.Dataflow("busy", [
        tp.Transformation("load", generates=[tp.Dataset("shards", n=int, path="file")]),
        tp.Transformation("work", uses=["shards", tp.Dataset("settings", k=int)],
                          generates=[tp.Dataset("results", i=int, value=float)]),
    ])
    shard = tmp_path / "shard.bin"
    shard.write_bytes(b"x")
    stop = threading.Event()
    with tp.start_run(flow, store, handle_signals=False) as run:
        with run.task("load") as load:
            shards = [load.generated("shards", n=i, path=shard) for i in range(3)]
        run.flush()

        def write() -> None:
            i = 0
            while not stop.is_set() and i < 60:
                with run.task("work", depends_on=[load]) as work:
                    work.used(shards[i % 3])
                    work.used("settings", k=i)
                    for j in range(30):
                        work.generated("results", i=j, value=j / 7)
                i += 1
                if i % 5 == 0:
                    run.flush()
                time.sleep(0.01)

        writer = threading.Thread(target=write)
        writer.start()
        try:
            seen = []
            while writer.is_alive() or len(seen) < 3:
                doc = ex.build_document(run.id, store=store)
                assert not dangling(doc) and violations(doc) == []
                seen.append(len([u for u in ids(doc) if u.startswith(TPID + "task.")]))
        finally:
            stop.set()
            writer.join()
    assert seen[-1] > seen[0], "the exports were taken while the run grew"


# ---- pictures, CLI, errors ----------------------------------------------------------------------


def test_dot_always_and_a_clear_message_without_graphviz(example, monkeypatch):
    store, run_id = example
    doc = ex.build_document(run_id, store=store)
    dot = ex.serialize(doc, "dot").decode()
    assert dot.startswith("digraph") and "train #1" in dot
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ex.GraphvizMissing, match="needs Graphviz's `dot` program.*--format dot"):
        ex.serialize(doc, "svg")


def test_svg_where_graphviz_is_installed(example):
    store, run_id = example
    if __import__("shutil").which("dot") is None:  # make test installs it (tools/system-deps.sh)
        pytest.fail("this test needs Graphviz's `dot` (make system-deps, or apt-get install graphviz)", pytrace=False)
    assert b"<svg" in ex.serialize(ex.build_document(run_id, store=store), "svg")


def test_the_export_command_without_graphviz_says_what_to_install_in_one_line(example, tmp_path):
    store, run_id = example
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if not os.access(os.path.join(d, "dot"), os.X_OK))
    done = subprocess.run([sys.executable, "-m", "trainprov.cli", "--store", store, "export", run_id, "--format", "svg",
                           "-o", str(tmp_path / "run.svg")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": path})
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "apt-get install graphviz" in lines[0] and "--format dot" in lines[0], done.stderr
    assert not (tmp_path / "run.svg").exists()


def test_a_missing_pydot_is_named(example, monkeypatch):
    store, run_id = example
    doc = ex.build_document(run_id, store=store)
    monkeypatch.setitem(sys.modules, "prov.dot", None)  # as if pydot were not installed
    for fmt in ("dot", "svg"):
        with pytest.raises(ex.ExportError, match=r"needs the pydot package.*pip install 'trainprov\[rdf\]'"):
            ex.serialize(doc, fmt)


def test_the_export_command(example, tmp_path):
    store, run_id = example
    runner = CliRunner()
    out = tmp_path / "run.provn"
    result = runner.invoke(main, ["--store", store, "export", run_id[:17], "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "PROV-N" in result.output and f"to {out}" in result.output
    back = ProvDocument.deserialize(str(out), format="provn")
    assert ids(back) == ids(ex.build_document(run_id, store=store))
    result = runner.invoke(main, ["--store", store, "export", "latest", "--format", "json"])
    assert json.loads(result.stdout_bytes)["prefix"]["tpid"] == TPID
    result = runner.invoke(main, ["--store", store, "export", "latest", "--format", "ttl", "-o", str(tmp_path / "x.out")])
    assert result.exit_code == 0 and rdflib.Graph().parse(str(tmp_path / "x.out"), format="turtle")
    for args, words in [
        (["export", "nope"], "no run 'nope'"),
        (["export", "latest", "--format", "gif"], "unknown export format 'gif'; formats: json, provn"),
        (["export"], "nothing to export"),
        (["export", "--dataflow", "nope"], "no dataflow 'nope'"),
    ]:
        result = runner.invoke(main, ["--store", store, *args])
        assert result.exit_code == 1 and words in result.output, (args, result.output)


def test_export_writes_the_format_its_file_names(example, tmp_path):
    store, run_id = example
    for name, check in [("a.json", lambda b: json.loads(b)), ("a.provn", lambda b: b.startswith(b"document")),
                        ("a.ttl", lambda b: b"@prefix" in b), ("a.jsonld", lambda b: "@context" in json.loads(b)),
                        ("a.dot", lambda b: b.startswith(b"digraph"))]:
        data = ex.export(run_id, tmp_path / name, store=store)
        assert (tmp_path / name).read_bytes() == data and check(data), name
    assert ex.get_format("TTL").name == "turtle" and ex.format_for_path("x.provn") == "provn"
    assert set(ex.MIME_TYPES) == set(ex.FORMATS) and ex.MIME_TYPES["turtle"] == "text/turtle"


def test_a_task_of_a_transformation_without_datasets_is_exported(tmp_path):
    store = str(tmp_path / "plain.db")
    flow = tp.Dataflow("plain", [tp.Transformation("prepare"),
                                 tp.Transformation("train", generates=[tp.Dataset("epoch_metrics", epoch=int)])])
    with tp.start_run(flow, store, record_agents=False) as run:
        with run.task("prepare") as prepare:
            pass
        with run.task("train", depends_on=[prepare]) as train:
            train.generated("epoch_metrics", epoch=1)
    doc = ex.build_document(run.id, store=store)
    assert TPID + ex.task_identifier(prepare.id) in ids(doc, "Activity")
    assert not dangling(doc) and violations(doc) == []
    # no agents recorded: the run is still associated with its plan
    assert [(a, ag) for a, ag, _ in relations(doc, "Association") if a == TPID + ex.run_identifier(run.id)] == [
        (TPID + ex.run_identifier(run.id), None)]
    for fmt, reader_format, options in (("json", "json", {}), ("turtle", "rdf", {"rdf_format": "turtle"})):
        back = ProvDocument.deserialize(content=ex.serialize(doc, fmt).decode(), format=reader_format, **options)
        assert signatures(back) == signatures(doc)


def test_a_missing_serializer_package_is_named(example, monkeypatch):
    store, run_id = example
    doc = ex.build_document(run_id, store=store)

    from prov import serializers as prov_serializers

    def missing(name):
        raise prov_serializers.DoNotExist(name)

    monkeypatch.setattr(prov_serializers, "get", missing)
    with pytest.raises(ex.ExportError, match="the xml format needs the lxml package"):
        ex.serialize(doc, "xml")


# ---- a dataflow that grows during the run ---------------------------------------------------


def test_identifiers_of_a_mid_run_export_stay_when_the_dataflow_gets_a_new_version(tmp_path):
    """As Keras's evaluate() adds test_results.accuracy: the run's dataflow goes to a new version mid-run."""
    store = str(tmp_path / "grow.db")
    hyper = tp.Dataset("hyperparameters", lr=float)
    metrics = tp.Dataset("epoch_metrics", epoch=int, loss=float)
    adaptations = tp.Dataset("adaptations", epoch=int, parameter=str, old_value=float, new_value=float, cause=str)
    flow = tp.Dataflow("growing", [
        tp.Transformation("train", uses=[hyper], generates=[metrics, adaptations]),
        tp.Transformation("evaluate", generates=[tp.Dataset("test_results", loss=float)]),
    ])
    grown = tp.Dataflow("growing", [
        tp.Transformation("train", uses=[hyper], generates=[metrics, adaptations]),
        tp.Transformation("evaluate", generates=[tp.Dataset("test_results", loss=float, accuracy=float)]),
    ])
    with tp.start_run(flow, store, record_agents=False, handle_signals=False) as run:
        with run.task("train") as train:
            train.used("hyperparameters", lr=0.1)
            train.generated("epoch_metrics", epoch=1, loss=0.5)
            train.generated("adaptations", epoch=2, parameter="lr", old_value=0.1, new_value=0.01, cause="plateau")
            run.flush()
            middle = ex.build_document(run.id, store=store)
            train.generated("epoch_metrics", epoch=2, loss=0.4)
        assert run.evolve(grown) == 2
        with run.task("evaluate", depends_on=[train]) as evaluate:
            evaluate.generated("test_results", loss=0.4, accuracy=0.9)
    final = ex.build_document(run.id, store=store)
    old_plan = [u for u in ids(middle) if u.startswith(TPID + "plan.")]
    assert len(old_plan) == 1 and TPID + "dataset.growing." + old_plan[0].rsplit(".", 1)[1] + ".adaptations" in ids(middle)
    assert ids(middle) <= ids(final), sorted(ids(middle) - ids(final))
    new_plan = [u for u in ids(final) if u.startswith(TPID + "plan.") and u != old_plan[0]]
    assert len(new_plan) == 1
    revisions = {(n, o) for n, o, *_ in relations(final, "Derivation")}
    assert (new_plan[0], old_plan[0]) in revisions, "the new version is a revision of the old"
    old_fp, new_fp = old_plan[0].rsplit(".", 1)[1], new_plan[0].rsplit(".", 1)[1]
    for part in ("dataset.growing.{}.test_results", "dataset.growing.{}.adaptations", "transformation.growing.{}.evaluate"):
        assert (TPID + part.format(new_fp), TPID + part.format(old_fp)) in revisions, part
    # the run and its tasks follow the version it runs now
    run_uri = TPID + ex.run_identifier(run.id)
    assert {p for a, _, p in relations(final, "Association") if a == run_uri} == {new_plan[0]}
    assert violations(middle) == [] and violations(final) == []
    for fmt, reader_format, options in (("json", "json", {}), ("turtle", "rdf", {"rdf_format": "turtle"})):
        back = ProvDocument.deserialize(content=ex.serialize(final, fmt).decode(), format=reader_format, **options)
        assert ids(middle) <= ids(back) and violations(back) == []


def test_the_checkpoint_of_epoch_n_does_not_derive_from_the_change_for_epoch_n_plus_1(tmp_path):
    """An LR change recorded at the end of epoch 2 holds from epoch 3, though it is recorded before checkpoint 2."""
    store = str(tmp_path / "order.db")
    with tp.start_run(STEP_FLOW, store, record_agents=False, handle_signals=False) as run:
        with run.task("train") as train:
            train.used("hyperparameters", lr=0.1, optimizer="sgd", started=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
                       config={}, augment=False)
            checkpoints = {}
            for epoch in (1, 2, 3):
                if epoch == 2:  # the scheduler's on_epoch_end runs before the checkpoint callback's
                    with run.task("adapt", depends_on=[train]) as adapt:
                        adapt.generated("adaptations", epoch=3, kind="learning_rate", parameter="lr", old_value=0.1,
                                        new_value=0.01, cause="schedule")
                path = tmp_path / f"ckpt{epoch}.bin"
                path.write_bytes(bytes([epoch]))
                checkpoints[epoch] = train.generated("checkpoints", epoch=epoch, path=path).files[0].file_id
    doc = ex.build_document(run.id, store=store)
    derived = {}
    for new, old, *_ in relations(doc, "Derivation"):
        derived.setdefault(new, set()).add(old)
    value = lambda e: {u for u in derived[TPID + ex.file_identifier(checkpoints[e])] if u.startswith(TPID + "value.")}  # noqa: E731
    assert value(2) == set(), "checkpoint 2 was computed with the old learning rate"
    assert len(value(3)) == 1
    assert violations(doc) == []


def test_the_constraint_checker_finds_what_breaks_prov():
    """The checker the export tests rely on does catch each kind of violation."""
    doc = ProvDocument()
    ns = doc.add_namespace("x", "urn:x:")
    t = [dt.datetime(2026, 1, 1, 0, 0, s, tzinfo=dt.timezone.utc) for s in range(10)]
    a = doc.activity(ns["a"], t[5], t[2])  # ends before it starts
    b = doc.activity(ns["b"], t[1], t[3])
    e = doc.entity(ns["e"])
    doc.generation(e, b, t[3])
    doc.usage(b, e, t[2])  # used before generated
    doc.usage(a, ns["missing"], t[5])  # an entity nobody declared
    doc.entity(ns["both"])
    doc.activity(ns["both"])
    doc.membership(e, doc.entity(ns["m"]))  # e is no prov:Collection
    found = "\n".join(violations(doc))
    for words in ("ends", "before it was generated", "missing is not a declared entity", "both an entity and an activity",
                  "not typed prov:Collection"):
        assert words in found, words
