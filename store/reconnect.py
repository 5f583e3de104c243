"""Riding out database outages: which errors mean "the database is unreachable for now", and
running a unit of work again, after a growing pause, until the database answers.

Workers never give up on the database: a worker whose database is gone keeps its job and its
unwritten trials and retries. The lease rules still hold when it comes back: every write is
fenced, so a worker whose lease was taken over meanwhile gets LeaseLost (not retried) and drops
the job. The API does not retry: it answers 503 (service.errors) and the pool reconnects on the
next request (pre-ping).
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Engine, exc
from sqlalchemy.orm import Session, sessionmaker

from store.db import transaction

log = logging.getLogger(__name__)
T = TypeVar("T")

FIRST_DELAY_SECONDS = 0.5
MAX_DELAY_SECONDS = 15.0

# SQLite reports a held lock (past busy_timeout) and a missing or failing file as OperationalError,
# like it reports a missing table: only these messages are outages.
_SQLITE_OUTAGES = ("database is locked", "database table is locked", "unable to open database file",
                   "disk i/o error", "database or disk is full")


def is_unavailable(error: BaseException) -> bool:
    """True when `error` says the database cannot be reached or used right now (connection refused
    or lost, server shutting down or starting up, SQLite file locked or unreadable), as opposed to
    a bad statement, a constraint or a lost lease."""
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    if not isinstance(error, exc.OperationalError | exc.InterfaceError):
        return False
    orig = getattr(error, "orig", None)
    if isinstance(orig, sqlite3.Error):
        text = str(orig).lower()
        return any(m in text for m in _SQLITE_OUTAGES)
    # psycopg: OperationalError covers connection failures (SQLSTATE class 08), admin shutdown and
    # "starting up" (57P), resource exhaustion (53) and serialization/deadlock rollbacks (40).
    return True


def describe(error: BaseException) -> str:
    """One line naming the problem, without SQLAlchemy's statement dump or a password."""
    orig = getattr(error, "orig", None) or error
    lines = [line.strip() for line in str(orig).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(orig).__name__


class Backoff:
    """Doubling pauses with jitter (so that many workers do not reconnect in lockstep), capped."""

    def __init__(self, first: float = FIRST_DELAY_SECONDS, cap: float = MAX_DELAY_SECONDS) -> None:
        self.first, self.cap = first, cap
        self.failures = 0

    def next_delay(self) -> float:
        base = min(self.cap, self.first * 2 ** self.failures)
        self.failures += 1
        return float(base * random.uniform(0.75, 1.25))

    def reset(self) -> None:
        self.failures = 0


def retrying(sessions: sessionmaker[Session], work: Callable[[Session], T], *, what: str,
             write: bool = True) -> T:
    """`work(session)` in one transaction; while the database is unavailable, again after a backoff,
    for as long as it takes. Any other error (LeaseLost included) propagates at once.

    A transaction whose COMMIT was cut off may have been applied: every unit of work given here
    must be safe to run twice (fenced updates are; trial inserts skip numbers already stored)."""
    backoff = Backoff()
    down_since: float | None = None
    while True:
        try:
            with transaction(sessions, write=write) as s:
                result = work(s)
        except exc.DBAPIError as error:
            if not is_unavailable(error):
                raise
            down_since = down_since or time.monotonic()
            delay = backoff.next_delay()
            log.warning("database unavailable while %s (%s); retrying in %.1f s", what,
                        describe(error), delay)
            time.sleep(delay)
            continue
        if down_since is not None:
            log.info("database reachable again: %s went through after %.1f s", what,
                        time.monotonic() - down_since)
        return result


def wait_for_database(engine: Engine, what: str) -> None:
    """Block until `engine` connects (a process started before its database, or during an outage)."""
    backoff = Backoff()
    while True:
        try:
            with engine.connect():
                return
        except exc.DBAPIError as error:
            if not is_unavailable(error):
                raise
            delay = backoff.next_delay()
            log.warning("%s: database %s unavailable (%s); retrying in %.1f s", what,
                        engine.url.render_as_string(hide_password=True), describe(error), delay)
            time.sleep(delay)
