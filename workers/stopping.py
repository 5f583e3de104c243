"""Why a worker stops work it holds (shared by the job runner and the trial items)."""

from store.queue import LeaseLost


class Stop(Exception):
    """The worker was asked to drain (SIGTERM): what it holds goes back to the queue."""


class ItemLost(LeaseLost):
    """A trial item is no longer ours (its lease expired and another worker took it, or its job
    stopped): drop it without writing anything."""


__all__ = ["ItemLost", "LeaseLost", "Stop"]
