"""Capture: runs, tasks and the background writer."""

from .run import Element, FileRef, Run, SignalInterrupt, Task, new_run_id, start_run
from .writer import Writer, writer_for

__all__ = ["Element", "FileRef", "Run", "SignalInterrupt", "Task", "Writer", "new_run_id", "start_run", "writer_for"]
