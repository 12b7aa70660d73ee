"""Which runs are still alive: a run whose process died without ending it is interrupted."""

from __future__ import annotations

import datetime as _dt
import os
import socket
import time

from .base import Backend

#: a run on another machine whose writer sent no heartbeat for this long is taken as dead
STALE_SECONDS = 120.0


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_started(pid: int) -> str | None:
    """The kernel's start time of a process (tells a reused pid apart), where it is known."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def is_alive(pid: int, started: str | None) -> bool:
    """True if that process still runs (and is the same process, where that can be told)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _proc_stat(pid)
    if fields is None:
        return not os.path.isdir("/proc")  # no procfs: the signal test is all we have
    if fields[0] == "Z":  # killed, waiting for its parent to collect it
        return False
    return started is None or len(fields) <= 19 or fields[19] == started


def reap(backend: Backend) -> list[str]:
    """Mark runs whose process is gone as interrupted; return their ids."""
    try:
        result = backend.query(
            "SELECT run_id, host, pid, process_started, started_at, heartbeat_at "
            "FROM runs WHERE status = 'running'"
        )
    except Exception:  # no catalog yet, or unreadable: nothing to reap
        return []
    host = socket.gethostname()
    now = time.time()
    dead = []
    for run_id, run_host, pid, started, started_at, heartbeat_at in result.rows:
        last = heartbeat_at or started_at
        last_ts = last.timestamp() if isinstance(last, _dt.datetime) else now
        if run_host == host and pid is not None:
            gone = not is_alive(int(pid), started)
            why = f"process {pid} on {host} ended without ending the run"
        else:
            gone = now - last_ts > STALE_SECONDS
            why = f"no heartbeat from {run_host} for more than {STALE_SECONDS:.0f} s"
        if gone:
            begin = started_at.timestamp() if isinstance(started_at, _dt.datetime) else last_ts
            dead.append((run_id, last_ts, max(0.0, last_ts - begin), why))
    if dead:
        try:
            backend.mark_interrupted(dead)
        except Exception:  # a read-only store: the status is corrected by the next writer
            return []
    return [d[0] for d in dead]
