"""What reproducing a run needs, gathered once at its start: packages, code state, seeds, environment.

Every piece is bounded in time and size (git calls time out, the uncommitted diff is capped)
and none of it may fail a run: a missing `git`, a broken distribution or an unreadable
notebook leaves that piece out.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import os
import random
import re
import subprocess
import sys
from importlib import metadata
from typing import Any, Mapping

#: the uncommitted diff kept in the record, at most (larger diffs are cut and say so)
PATCH_LIMIT_BYTES = 1024 * 1024
#: untracked files listed, at most
UNTRACKED_LIMIT = 500
#: what an untracked file must look like to be listed as source (data and outputs are not)
SOURCE_PATTERNS = ("*.py", "*.ipynb", "*.pyx", "*.c", "*.cc", "*.cpp", "*.h", "*.cu", "*.sh", "*.toml", "*.cfg",
                   "*.ini", "*.yaml", "*.yml", "*.json", "*.txt", "*.md", "Makefile", "Dockerfile")
#: environment variables kept (shell patterns): what changes how training computes
ENV_ALLOW = ("CUDA_*", "CUBLAS_*", "CUDNN_*", "NCCL_*", "NVIDIA_*", "OMP_*", "MKL_*", "OPENBLAS_*",
             "KMP_*", "KERAS_*", "TF_CPP_*", "TF_ENABLE_*", "TF_DETERMINISTIC_*", "TF_CUDNN_*", "TF_GPU_*",
             "TF_FORCE_*", "TF_XLA_*", "TF_NUM_*", "TF_USE_*", "TF_INTRA_OP_*", "TF_INTER_OP_*", "TORCH_*", "PYTORCH_*", "PL_*", "LIGHTNING_*", "HF_*",
             "TRANSFORMERS_*", "TOKENIZERS_*", "ACCELERATE_*", "XLA_*", "JAX_*", "PYTHONHASHSEED",
             "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "TRAINPROV_RUN_ID", "VIRTUAL_ENV", "CONDA_DEFAULT_ENV")
#: never kept, even when allowed above: names that say they hold a secret
ENV_DENY = ("*KEY*", "*TOKEN*", "*SECRET*", "*PASSWORD*", "*PASSWD*", "*CREDENTIAL*", "*AUTH*",
            "*PRIVATE*", "*COOKIE*", "*SESSION*", "*CERT*")
#: in `git status --porcelain=v2`, how many fields come before a changed entry's path
_FIELDS_BEFORE_PATH = {"1 ": 8, "2 ": 9, "u ": 10}
#: torch's seed when nothing set one is drawn at random from 64 bits; a smaller one was set
_SMALL_SEED = 2**32


def _git(args: list[str], cwd: str, text: bool = True) -> Any:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=text, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def packages() -> dict[str, str]:
    """Every installed distribution on sys.path, name to version, sorted by name.

    Read from the `NAME-VERSION.dist-info` folder names (what pip writes) rather than by
    parsing each METADATA file, which costs ten times more; other layouts (eggs, odd
    folders) fall back to importlib.metadata.
    """
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for folder in names:
            if folder.endswith(".dist-info"):
                name, sep, version = folder[: -len(".dist-info")].partition("-")
                if sep and name.lower() not in found:
                    found[name.lower()] = version
                    continue
            if folder.endswith((".dist-info", ".egg-info")):
                try:
                    dist = metadata.PathDistribution(__import__("pathlib").Path(entry or ".", folder))
                    name = dist.metadata["Name"]
                except Exception:  # a broken distribution must not fail a run
                    continue
                if name and normal_name(name) not in found:
                    found[normal_name(name)] = dist.version
    return dict(sorted(found.items()))


def normal_name(name: str) -> str:
    """A distribution name as pip writes it in folder names (PEP 503, with underscores)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def git_state(code_dir: str) -> dict[str, Any]:
    """The repository of `code_dir`: remote, commit, branch, dirty flag, the uncommitted diff, untracked sources."""
    status = _git(["status", "--porcelain=v2", "--branch", "--untracked-files=all"], code_dir)
    if status is None:
        return {}
    state: dict[str, Any] = {}
    changed, untracked = [], []
    for line in status.splitlines():
        if line.startswith("# branch.oid "):
            oid = line.split()[2]
            state["git_commit"] = None if oid == "(initial)" else oid
        elif line.startswith("# branch.head "):
            head = line.split(" ", 2)[2]
            state["git_branch"] = None if head == "(detached)" else head
        elif line.startswith("? "):
            untracked.append(line[2:])
        elif line[:2] in _FIELDS_BEFORE_PATH:
            changed.append(line.split("\t")[0].split(" ", _FIELDS_BEFORE_PATH[line[:2]])[-1])
    if not state.get("git_commit"):
        return {}
    root = (_git(["rev-parse", "--show-toplevel"], code_dir) or "").strip()
    remote = _git(["config", "--get", "remote.origin.url"], code_dir)
    if remote is None:  # no origin: the first remote, if any
        names = (_git(["remote"], code_dir) or "").split()
        remote = _git(["config", "--get", f"remote.{names[0]}.url"], code_dir) if names else None
    state["git_remote"] = _without_credentials(remote.strip()) if remote else None
    state["git_root"] = root or None
    state["git_dirty"] = bool(changed)
    state["git_changed_files"] = sorted(changed)
    sources = sorted(p for p in untracked if any(fnmatch.fnmatch(os.path.basename(p), pat) for pat in SOURCE_PATTERNS))
    state["git_untracked_sources"] = sources[:UNTRACKED_LIMIT]
    if len(sources) > UNTRACKED_LIMIT:
        state["git_untracked_sources_omitted"] = len(sources) - UNTRACKED_LIMIT
    if changed:
        state["git_patch"] = patch(root or code_dir)
    return state


def patch(root: str) -> dict[str, Any]:
    """The uncommitted changes to tracked files (`git diff HEAD --binary`), capped at PATCH_LIMIT_BYTES."""
    raw = _git(["diff", "HEAD", "--binary", "--no-color", "--no-ext-diff"], root, text=False) or b""
    cut = len(raw) > PATCH_LIMIT_BYTES
    kept_bytes = raw[:PATCH_LIMIT_BYTES] if cut else raw
    kept = {
        "sha256": hashlib.sha256(raw).hexdigest(),
        "size_bytes": len(raw),
        "truncated": cut,
    }
    try:
        kept["text"] = kept_bytes.decode("utf-8")
    except UnicodeDecodeError:  # a file in another encoding: kept exactly, as base64
        kept["base64"] = base64.b64encode(kept_bytes).decode("ascii")
    return kept


def patch_bytes(patch: Mapping[str, Any]) -> bytes:
    """The bytes of a recorded patch, as git wrote them."""
    if "base64" in patch:
        return base64.b64decode(patch["base64"])
    return str(patch.get("text") or "").encode("utf-8")


def _without_credentials(url: str) -> str:
    """A remote URL without a user:password@ part (https remotes may carry a token)."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return url


def environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment variables on the allow-list, minus any whose name says it holds a secret."""
    env = os.environ if env is None else env
    kept = {}
    for name, value in env.items():
        upper = name.upper()
        if any(fnmatch.fnmatchcase(upper, pat) for pat in ENV_DENY):
            continue
        if any(fnmatch.fnmatchcase(upper, pat) for pat in ENV_ALLOW):
            kept[name] = value
    return dict(sorted(kept.items()))


def seeds(declared: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The random seeds the program set, as far as they can be told, plus those declared."""
    found: dict[str, Any] = {}
    keras_seed = None
    if "keras" in sys.modules:
        try:
            from keras.src.utils.rng_utils import get_random_seed
            keras_seed = get_random_seed()
        except Exception:  # another Keras layout: no seed known
            keras_seed = None
        if keras_seed is not None:
            found["keras"] = keras_seed
    if os.environ.get("PL_GLOBAL_SEED", "").lstrip("-").isdigit():
        found["lightning"] = int(os.environ["PL_GLOBAL_SEED"])
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            initial = int(torch.initial_seed())
            found["torch_initial_seed"] = initial
            if initial < _SMALL_SEED:
                found["torch"] = initial
        except Exception:  # a half-imported torch
            pass
    if os.environ.get("PYTHONHASHSEED"):
        found["pythonhashseed"] = os.environ["PYTHONHASHSEED"]
    # Python's and NumPy's generators keep no seed; a candidate seed is confirmed when the
    # generator's state is still exactly the state that seed gives (nothing drawn since)
    candidates = {v for k, v in found.items() if k in ("keras", "lightning", "torch") and isinstance(v, int)}
    candidates |= {v for v in (declared or {}).values() if isinstance(v, int)}
    state = random.getstate()
    for seed in sorted(candidates):
        if random.Random(seed).getstate() == state:
            found["python"] = seed
    numpy = sys.modules.get("numpy")
    if numpy is not None and candidates:
        current = numpy.random.get_state()
        for seed in sorted(candidates):
            if 0 <= seed < _SMALL_SEED:
                other = numpy.random.RandomState(seed).get_state()
                if current[0] == other[0] and current[2] == other[2] and numpy.array_equal(current[1], other[1]):
                    found["numpy"] = seed
    if declared:
        found["declared"] = dict(declared)
    return found


def notebook() -> dict[str, Any] | None:
    """In a Jupyter kernel: the notebook's path where the kernel can know it, a digest of its file and of the cells run so far."""
    if "ipykernel" not in sys.modules:
        return None
    try:
        from IPython import get_ipython
        shell = get_ipython()
    except Exception:  # IPython gone: not a notebook after all
        shell = None
    if shell is None:
        return None
    namespace = getattr(shell, "user_ns", {}) or {}
    path = namespace.get("__vsc_ipynb_file__") or namespace.get("__session__") or os.environ.get("JPY_SESSION_NAME")
    info: dict[str, Any] = {"notebook": None, "notebook_known": False}
    if path and str(path).endswith(".ipynb"):
        path = os.path.abspath(str(path))
        info.update(notebook=path, notebook_known=True)
        try:
            with open(path, "rb") as f:
                info["notebook_sha256"] = hashlib.sha256(f.read()).hexdigest()
        except OSError:
            info["notebook_sha256"] = None
    cells = [c for c in namespace.get("In", []) if c]
    info["cells_run"] = len(cells)
    info["cells_sha256"] = hashlib.sha256("\n\x00\n".join(cells).encode("utf-8", "backslashreplace")).hexdigest()
    return info
