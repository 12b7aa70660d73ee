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


class ExportError(TrainprovError, ValueError):
    """An export was asked for something that cannot be done (unknown format, no runs)."""


class DashboardError(TrainprovError):
    """The dashboard cannot start: it cannot listen on the address it was given."""


class DashboardSettingError(DashboardError, ValueError):
    """A dashboard setting refused for safety: a non-loopback address without consent, a weak token."""


class QueryTimeout(QueryError):
    """A read query ran longer than its time limit and was stopped."""


class GraphvizMissing(ExportError):
    """A picture format needs Graphviz's `dot` program, which is not installed."""


class GraphError(TrainprovError):
    """A graph cannot be drawn (an unknown dataflow or run)."""


class ConsoleBusy(TrainprovError):
    """As many console statements as allowed are running; try again when one ends."""


class SteeringError(TrainprovError, ValueError):
    """A steering request that cannot be made: an unknown run or action, a value that is not one, a store that refuses it."""
