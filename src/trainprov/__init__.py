"""trainprov: W3C PROV provenance of deep-learning training in a SQL database.

Declare a dataflow, start a run, record what its tasks use and generate, and query the
store with SQL while the training runs.
"""

from .capture.steering import steer
from .capture.training import profile
from .capture import Element, FileRef, Run, SignalInterrupt, Task, new_run_id, start_run
from .errors import (CaptureError, QueryError, QueryTimeout, SpecError, SteeringError, StoreError, TrainprovError,
                     ValueTypeError)
from .query import Reader, connect, query, query_df
from .rundiff import diff
from .spec import Attribute, Dataflow, Dataset, Transformation

__version__ = "0.1.0"

__all__ = [
    "Attribute",
    "CaptureError",
    "Dataflow",
    "Dataset",
    "Element",
    "FileRef",
    "QueryError",
    "QueryTimeout",
    "Reader",
    "Run",
    "SignalInterrupt",
    "SpecError",
    "SteeringError",
    "StoreError",
    "Task",
    "TrainprovError",
    "Transformation",
    "ValueTypeError",
    "connect",
    "diff",
    "new_run_id",
    "profile",
    "query",
    "query_df",
    "start_run",
    "steer",
]
