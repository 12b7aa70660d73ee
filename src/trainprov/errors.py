"""Exceptions raised by trainprov; every message names the thing that is wrong."""


class TrainprovError(Exception):
    """Base class of every error trainprov raises on purpose."""


class SpecError(TrainprovError, ValueError):
    """A dataflow, dataset or attribute declaration is invalid or conflicts with the store."""


class ValueTypeError(TrainprovError, TypeError):
    """A captured value does not have the type its attribute declares."""


class StoreError(TrainprovError):
    """The store is missing, unreadable, not a trainprov store, or a write to it failed."""


class StoreUnreachable(StoreError):
    """The store cannot be reached for now (a server down or restarting): rows wait and are retried."""


class QueryError(TrainprovError, ValueError):
    """A read query is invalid, or it tried to modify the store."""


class CaptureError(TrainprovError, RuntimeError):
    """A capture call was made on an ended run or task, or captured rows could not be written."""
