"""The control plane: a Dask SchedulerPlugin holding dserve's goal state."""
from .plugin import CONTROLLER_NAME, Controller

__all__ = ["Controller", "CONTROLLER_NAME"]
