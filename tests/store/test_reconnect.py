"""Telling an outage from a bad statement, and waiting an outage out, on real databases."""

from __future__ import annotations

import logging
import threading

import pytest
from sqlalchemy import exc, select, text

from store import queue
from store.db import make_engine, make_sessionmaker, transaction
from store.models import Worker
from store.reconnect import describe, is_unavailable, retrying
from tests.helpers import seed_jobs
from tests.pg_cluster import free_port
from tests.processes import wait_for


def _error(url: str, statement: str, **engine_args: object) -> exc.DBAPIError:
    engine = make_engine(url, **engine_args)  # type: ignore[arg-type]
    try:
        with pytest.raises(exc.DBAPIError) as caught, transaction(make_sessionmaker(engine)) as s:
            s.execute(text(statement))
        return caught.value
    finally:
        engine.dispose()


def test_a_server_that_is_not_there_is_an_outage() -> None:
    error = _error(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/thresher", "select 1")
    assert is_unavailable(error)
    assert "Connection refused" in describe(error) and "\n" not in describe(error)


def test_a_bad_statement_or_a_broken_constraint_is_not_an_outage(db_url: str) -> None:
    assert not is_unavailable(_error(db_url, "select * from no_such_table"))
    (job_id,) = seed_jobs(db_url, 1)
    duplicate = _error(db_url, f"insert into job select * from job where id = '{job_id}'")
    assert isinstance(duplicate, exc.IntegrityError) and not is_unavailable(duplicate)


def test_retrying_waits_out_a_locked_sqlite_database(sqlite_url: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="store.reconnect")
    sessions = make_sessionmaker(make_engine(sqlite_url, sqlite_busy_timeout=0.1))
    done = threading.Event()

    def register() -> None:
        retrying(sessions, lambda s: queue.register_worker(s, "w", "host", 1, "cpu"),
                 what="registering worker w")
        done.set()

    with transaction(make_sessionmaker(make_engine(sqlite_url))):  # holds the write lock
        thread = threading.Thread(target=register)
        thread.start()
        wait_for(lambda: "database unavailable while registering worker w (database is locked)"
                 in caplog.text, "the write meets the lock", timeout=60)
        assert not done.is_set()
    thread.join(timeout=60)
    assert done.is_set() and "database reachable again: registering worker w went through" in caplog.text
    with transaction(sessions, write=False) as s:
        assert s.scalar(select(Worker.name)) == "w"


def test_retrying_never_retries_a_lost_lease(db_url: str) -> None:
    seed_jobs(db_url, 1)
    sessions = make_sessionmaker(make_engine(db_url))
    with transaction(sessions) as s:
        lease = queue.claim(s, "a", lease_seconds=60)
    assert lease is not None
    with transaction(sessions) as s:
        queue.release(s, lease)  # the job is no longer a's
    calls: list[int] = []

    def heartbeat(s: object) -> None:
        calls.append(1)
        queue.heartbeat(s, lease, 60)  # type: ignore[arg-type]

    with pytest.raises(queue.LeaseLost):
        retrying(sessions, heartbeat, what="a heartbeat")
    assert calls == [1]
