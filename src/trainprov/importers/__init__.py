"""Importers: runs that other tools logged (CSV logs, TensorBoard, MLflow) brought into a store as provenance."""

from .common import ImportSourceError, ImportSummary
from .csvlog import import_csv
from .mlflow import import_mlflow
from .tensorboard import import_tensorboard

__all__ = ["ImportSourceError", "ImportSummary", "import_csv", "import_mlflow", "import_tensorboard"]
