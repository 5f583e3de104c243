"""Why a worker stops work it holds (shared by the job runner and the trial items)."""

from store.queue import LeaseLost
from store.trial_queue import ItemLost


class Stop(Exception):
    """The worker was asked to drain (SIGTERM): what it holds goes back to the queue."""


__all__ = ["ItemLost", "LeaseLost", "Stop"]
