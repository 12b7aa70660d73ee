"""Exceptions raised by trainprov; every message names the thing that is wrong."""


class TrainprovError(Exception):
    """Base class of every error trainprov raises on purpose."""


class SpecError(TrainprovError, ValueError):
    """A dataflow, dataset or attribute declaration is invalid or conflicts with the store."""


class ValueTypeError(TrainprovError, TypeError):
    """A captured value does not have the type its attribute declares."""


class StoreError(TrainprovError):
    """The store is missing, unreadable, not a trainprov store, or a write to it failed."""


class QueryError(TrainprovError, ValueError):
    """A read query is invalid, or it tried to modify the store."""


class CaptureError(TrainprovError, RuntimeError):
    """A capture call was made on an ended run or task, or captured rows could not be written."""


class QueryTimeout(QueryError):
    """A read query ran longer than its time limit and was stopped."""
