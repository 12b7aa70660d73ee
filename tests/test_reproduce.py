"""Why two runs differ (`diff`) and what reproduces a run (`reproduce`), on real runs in child processes."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest

import trainprov as tp
from trainprov import rundiff as tpdiff
from trainprov import reproduce
from trainprov.capture import reproduction
from trainprov.transfer import copy_runs

from conftest import run_notebook, run_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "trainprov.cli"]

KERAS_TWO_RUNS = """
import os, sys
os.environ["KERAS_BACKEND"] = "torch"
import numpy as np, keras
from trainprov.keras import ProvenanceCallback

x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
y = (x.sum(axis=1, keepdims=True) > 0).astype("float32")
for activation in ("relu", "tanh"):
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation=activation),
                              keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    with ProvenanceCallback(store=sys.argv[1], name=activation) as prov:
        model.fit(x, y, epochs=4, batch_size=16, validation_split=0.25, verbose=0, callbacks=[prov])
        print(prov.run.id)
"""


def _git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def test_two_keras_runs_that_differ_in_one_activation_differ_in_exactly_that(tmp_path):
    store = str(tmp_path / "keras.db")
    done = run_python(KERAS_TWO_RUNS, store, cwd=str(tmp_path), timeout=300)
    relu, tanh = done.stdout.split()
    result = tp.diff(relu, tanh, store=store)
    assert result.differing == ["architecture"], result.report()
    [change] = result.section("architecture").changes
    assert change.path.endswith(".activation") and (change.a, change.b) == ("relu", "tanh")
    assert change.path.startswith("layer 1 (Dense")  # layers count from 1
    # the outcome is reported: final values side by side, and where the curves part
    assert set(result.outcome["final"]) >= {"epochs", "loss", "val_loss"}
    assert result.outcome["divergence"]["metric"] == "val_loss"
    report = result.report()
    assert report.splitlines()[2] == "They differ in architecture:"
    assert "activation: 'relu' -> 'tanh'" in report
    # the same from the command line, as JSON
    cli = subprocess.run([*CLI, "diff", relu, tanh, "--store", store, "--format", "json"], capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["differing_sections"] == ["architecture"]


def test_an_inserted_layer_is_one_insertion():
    a = [{"layer_index": 0, "class_name": "Dense", "units": 8}, {"layer_index": 1, "class_name": "Dense", "units": 1}]
    b = [{"layer_index": 0, "class_name": "Dense", "units": 8}, {"layer_index": 1, "class_name": "Dropout", "dropout_rate": 0.5},
         {"layer_index": 2, "class_name": "Dense", "units": 1}]
    [change] = tpdiff.compare_layers(a, b)
    assert change.kind == "inserted" and change.path.startswith("layer 1 (Dropout") and change.b["dropout_rate"] == 0.5


DATA_RUN = """
import sys, trainprov as tp
flow = tp.Dataflow("data_flow", [tp.Transformation("train", uses=[tp.Dataset("hyperparameters", lr=float)],
                                                   generates=[tp.Dataset("epoch_metrics", epoch=int, loss=float)])])
with tp.start_run(flow, sys.argv[1]) as run, run.task("train") as task:
    task.file(sys.argv[2], role="training data")
    task.used("hyperparameters", lr=0.1)
    task.generated("epoch_metrics", epoch=1, loss=0.5)
print(run.id)
"""


def test_two_runs_on_data_files_that_differ_in_one_byte(tmp_path):
    store = str(tmp_path / "data.db")
    data = tmp_path / "train.csv"
    data.write_bytes(b"x,y\n1,2\n3,4\n")
    first = run_python(DATA_RUN, store, str(data), cwd=str(tmp_path)).stdout.strip()
    before = hashlib.sha256(data.read_bytes()).hexdigest()
    data.write_bytes(b"x,y\n1,2\n3,5\n")
    second = run_python(DATA_RUN, store, str(data), cwd=str(tmp_path)).stdout.strip()
    after = hashlib.sha256(data.read_bytes()).hexdigest()
    result = tp.diff(first, second, store=store)
    assert result.differing == ["data"], result.report()
    [change] = result.section("data").changes
    assert str(data) in change.path and change.a["sha256"] == before and change.b["sha256"] == after
    assert before in result.report() and after in result.report()
    # reproduce knows the first run's data is no longer what it was
    plan = reproduce.plan(first, store=store)
    assert [(f.path, f.status) for f in plan.data] == [(str(data), "changed")]


def test_reproduce_writes_the_uncommitted_patch_that_rebuilds_the_changed_file(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "ada@example.org")
    _git(repo, "config", "user.name", "Ada")
    _git(repo, "remote", "add", "origin", "https://ada:s3cret@example.org/ada/model.git")
    (repo / "train.py").write_text(DATA_RUN)
    (repo / "model.py").write_text("LAYERS = 2\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "first")
    commit = _git(repo, "rev-parse", "HEAD")
    (repo / "model.py").write_text("LAYERS = 3  # not committed\n")
    (repo / "notes_new.py").write_text("# untracked\n")
    data = tmp_path / "d.csv"
    data.write_text("1\n")
    store = str(tmp_path / "s.db")
    done = subprocess.run([sys.executable, "train.py", store, str(data)], cwd=repo, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    out = tmp_path / "again"
    cli = subprocess.run([*CLI, "reproduce", run_id, "--store", store, "-o", str(out)], capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    assert commit in cli.stdout and "model.py" in cli.stdout
    script = (out / "reproduce.sh").read_text()
    assert f"git checkout {commit}" in script and "s3cret" not in script
    assert "https://example.org/ada/model.git" in script
    assert "notes_new.py" in (out / "README.txt").read_text()
    # the recorded commit plus the recorded patch is the code that ran
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    _git(clone, "checkout", "-q", commit)
    _git(clone, "apply", str(out / "run.patch"))
    assert hashlib.sha256((clone / "model.py").read_bytes()).hexdigest() == \
        hashlib.sha256((repo / "model.py").read_bytes()).hexdigest()
    assert "==" in (out / "requirements.txt").read_text() and "trainprov==" in (out / "requirements.txt").read_text()
    assert (out / "data.sha256").read_text() == f"{hashlib.sha256(data.read_bytes()).hexdigest()}  {data}\n"


def _fake_distribution(folder, version):
    """Install a real distribution with pip (from a local project, no index) into a folder."""
    project = folder.parent / f"src-{version}"
    (project / "tpfakepkg").mkdir(parents=True)
    (project / "tpfakepkg" / "__init__.py").write_text(f"VERSION = {version!r}\n")
    (project / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "tpfakepkg"
        version = "{version}"
    """))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation",
                    "--target", str(folder), str(project)], check=True, capture_output=True)


def test_reproduce_check_finds_no_difference_then_exactly_the_changed_package(tmp_path):
    store = str(tmp_path / "s.db")
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    _fake_distribution(v1, "1.0")
    _fake_distribution(v2, "2.0")
    work = tmp_path / "work"
    work.mkdir()
    data = work / "d.csv"
    data.write_text("1\n")
    env1 = {"PYTHONPATH": str(v1)}
    run_id = run_python(DATA_RUN, store, str(data), cwd=str(work), env=env1).stdout.strip()
    assert reproduce.plan(run_id, store=store).packages["tpfakepkg"] == "1.0"
    same = subprocess.run([*CLI, "reproduce", run_id, "--store", store, "--check"], cwd=work,
                          env=dict(os.environ, **env1), capture_output=True, text=True)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "no difference" in same.stdout
    other = subprocess.run([*CLI, "reproduce", run_id, "--store", store, "--check"], cwd=work,
                           env=dict(os.environ, PYTHONPATH=str(v2)), capture_output=True, text=True)
    assert other.returncode == 1, other.stdout + other.stderr
    differences = [line for line in other.stdout.splitlines() if line.startswith("  ")]
    assert differences == ["  package tpfakepkg: '1.0' -> '2.0'"], other.stdout
    assert other.stdout.startswith("1 difference between the record")


def test_secrets_in_the_environment_never_reach_the_store(tmp_path):
    store = str(tmp_path / "s.db")
    secret = "sk-live-0123456789abcdef"
    env = {"MY_API_TOKEN": secret, "HF_TOKEN": secret, "TORCH_SECRET_KEY": secret, "CUDA_VISIBLE_DEVICES": "0",
           "TF_PASSWORD": secret, "KERAS_HOME": "/tmp/keras-home"}
    data = tmp_path / "d.csv"
    data.write_text("1\n")
    run_id = run_python(DATA_RUN, store, str(data), cwd=str(tmp_path), env=env).stdout.strip()
    recorded = reproduce.plan(run_id, store=store).environment
    assert recorded["CUDA_VISIBLE_DEVICES"] == "0" and recorded["KERAS_HOME"] == "/tmp/keras-home"
    assert not {"MY_API_TOKEN", "HF_TOKEN", "TORCH_SECRET_KEY", "TF_PASSWORD"} & set(recorded)
    # nowhere in the store, in any table
    for path in tmp_path.glob("s.db*"):
        assert secret.encode() not in path.read_bytes()
    assert reproduction.environment({"GITHUB_TOKEN": "x", "AWS_SECRET_ACCESS_KEY": "x", "OMP_NUM_THREADS": "2"}) == \
        {"OMP_NUM_THREADS": "2"}


def test_seeds_set_by_keras_are_found_and_declared_ones_kept(tmp_path):
    store = str(tmp_path / "s.db")
    code = """
    import os, sys
    os.environ["KERAS_BACKEND"] = "torch"
    import keras, trainprov as tp
    from conftest import training_flow
    keras.utils.set_random_seed(1234)
    with tp.start_run(training_flow(), sys.argv[1], seeds={"data_split": 99}) as run:
        pass
    print(run.id)
    """
    run_id = run_python(code, store, cwd=os.path.join(ROOT, "tests"), timeout=300).stdout.strip()
    seeds = reproduce.plan(run_id, store=store).seeds
    assert seeds["keras"] == 1234 and seeds["torch"] == 1234 and seeds["numpy"] == 1234 and seeds["python"] == 1234
    assert seeds["declared"] == {"data_split": 99}


def test_diff_across_stores_of_a_copied_run_finds_no_difference(tmp_path):
    laptop, team = str(tmp_path / "laptop.db"), str(tmp_path / "team.db")
    data = tmp_path / "d.csv"
    data.write_text("1\n")
    run_id = run_python(DATA_RUN, laptop, str(data), cwd=str(tmp_path)).stdout.strip()
    copy_runs(laptop, team)
    result = tp.diff(run_id, run_id, store=laptop, store_b=team)
    assert result.differing == [] and "no difference" in result.report()


NOTEBOOK_CELLS = [
    "import os\nos.environ['KERAS_BACKEND'] = 'torch'\nimport numpy as np, keras\nfrom trainprov.keras import ProvenanceCallback",
    "x = np.random.default_rng(0).normal(size=(32, 3)).astype('float32')\ny = x.sum(axis=1, keepdims=True)\n"
    "model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)])\n"
    "model.compile(optimizer='sgd', loss='mse')",
    "with ProvenanceCallback(store=STORE, name='from a notebook') as prov:\n"
    "    model.fit(x, y, epochs=2, verbose=0, callbacks=[prov])\nprint(prov.run.id)",
]


def _run_notebook(path, store, env):
    # the kernel gets the environment a Jupyter server gives it (JPY_SESSION_NAME: the notebook's path)
    cells = run_notebook(path, store, NOTEBOOK_CELLS, env)
    return cells[-1].outputs[0]["text"].strip()


@pytest.mark.parametrize("known", [True, False], ids=["jupyter-server", "no-path"])
def test_a_run_from_a_notebook_records_the_notebook_not_ipykernel(tmp_path, known):
    path = tmp_path / "explore.ipynb"
    store = str(tmp_path / "nb.db")
    env = {"JPY_SESSION_NAME": str(path)} if known else {}
    run_id = _run_notebook(path, store, env)
    program = tp.query("SELECT name, details FROM agents WHERE run_id = ? AND agent_id LIKE 'software:program:%'",
                       [run_id], store=store)[0]
    details = json.loads(program["details"])
    assert "ipykernel" not in program["name"]
    assert details["cells_run"] == 4 and len(details["cells_sha256"]) == 64
    if known:
        assert program["name"] == "explore.ipynb" and details["notebook"] == str(path)
        assert details["notebook_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    else:
        assert program["name"] == "unknown notebook" and details["notebook"] is None
    assert "notebook" in reproduce.plan(run_id, store=store).text()
