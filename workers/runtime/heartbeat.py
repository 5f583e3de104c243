"""Keeping a lease alive from a thread, for a job (its coordinator) or a trial (its trainer)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from store.db import transaction
from store.queue import LeaseLost
from store.reconnect import describe, is_unavailable

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Runs `beat` (a fenced lease renewal) in its own transaction every `interval` seconds; sets
    `lost` when the lease is no longer ours. A database hiccup is logged and the next beat tries
    again: the lease has slack for that."""

    def __init__(self, sessions: sessionmaker[Session], beat: Callable[[Session], None],
                 interval: float, what: str) -> None:
        super().__init__(name=f"heartbeat {what}", daemon=True)
        self.sessions, self.beat, self.interval, self.what = sessions, beat, interval, what
        self.lost = threading.Event()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                with transaction(self.sessions) as s:
                    self.beat(s)
            except LeaseLost:
                self.lost.set()
                return
            except Exception as exc:
                if is_unavailable(exc):
                    log.warning("heartbeat of %s failed: database unavailable (%s)", self.what,
                                describe(exc))
                else:
                    log.warning("heartbeat of %s failed", self.what, exc_info=True)

    def stop(self) -> None:
        self._done.set()
