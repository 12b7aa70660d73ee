"""The agents of a run: the person, the machine and the software, as facts gathered at start."""

from __future__ import annotations

import getpass
import os
import platform
import shutil
import socket
import subprocess
import sys
from typing import Any, Mapping

from . import reproduction

# Packages whose versions say what produced a model: `key_packages` in the software agent,
# beside the full list of installed distributions in `packages`.
KEY_PACKAGES = (
    "trainprov",
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "torch",
    "keras",
    "tensorflow",
    "jax",
    "lightning",
    "pytorch-lightning",
    "transformers",
)


def _run(cmd: list[str], cwd: str | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def user() -> str:
    """The login name of the person running the process."""
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gpus() -> list[dict[str, Any]]:
    if shutil.which("nvidia-smi"):
        out = _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
        if out:
            gpus = []
            for line in out.splitlines():
                name, memory, driver = (part.strip() for part in line.split(",", 2))
                gpus.append({"name": name, "memory": memory, "driver": driver})
            return gpus
    torch = sys.modules.get("torch")  # only if the user already imported it: it is slow to load
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return [{"name": torch.cuda.get_device_name(i)} for i in range(torch.cuda.device_count())]
        except Exception:  # a broken CUDA set-up is not the run's problem
            pass
    return []


def _script() -> tuple[str | None, str, dict[str, Any] | None]:
    """The program's script (None when there is none), its name, and the notebook facts in Jupyter."""
    notebook = reproduction.notebook()
    if notebook is not None:
        path = notebook["notebook"]
        return path, os.path.basename(path) if path else "unknown notebook", notebook
    script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] and os.path.isfile(sys.argv[0]) else None
    return script, os.path.basename(script) if script else "python", None


def collect(run_id: str, seeds: Mapping[str, int] | None = None) -> list[tuple]:
    """Rows for the agents table: (run_id, agent_id, kind, name, details, acted_on_behalf_of)."""
    user_name = user()
    host = socket.gethostname()
    cwd = os.getcwd()
    person = f"person:{user_name}"
    machine = f"machine:{host}"
    person_details = {"user": user_name}
    for key in ("user.name", "user.email"):
        value = _run(["git", "config", key], cwd)
        if value:
            person_details["git_" + key.split(".")[1]] = value
    machine_details = {
        "hostname": host,
        "os": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "gpus": _gpus(),
    }
    python = f"Python {platform.python_version()}"
    software_details = {
        "implementation": platform.python_implementation(),
        "python_version": platform.python_version(),
        "executable": sys.executable,
    }
    installed = reproduction.packages()
    software_details["key_packages"] = {
        name: installed[reproduction.normal_name(name)] for name in KEY_PACKAGES if reproduction.normal_name(name) in installed}
    software_details["packages"] = installed
    script, program, notebook = _script()
    # the code's commit is the one of the script's repository, wherever it is started from
    # (a notebook's kernel starts in the notebook's folder)
    code_dir = os.path.dirname(script) if script and notebook is None else cwd
    program_details = {
        "command": " ".join(sys.argv), "argv": list(sys.argv), "working_dir": cwd, "script": script,
        **(notebook or {}), **reproduction.git_state(code_dir),
        "seeds": reproduction.seeds(seeds), "environment": reproduction.environment(),
    }
    return [
        (run_id, person, "person", user_name, person_details, None),
        (run_id, machine, "machine", host, machine_details, person),
        (run_id, f"software:python-{platform.python_version()}", "software", python, software_details, person),
        (run_id, f"software:program:{program}", "software", program, program_details, person),
    ]
