"""The queue on real SQLite and PostgreSQL: claims are exclusive, leases expire, writes are fenced."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from store import blobs, queue, records
from store.db import make_engine, make_sessionmaker, transaction
from store.models import Blob, Job, utcnow
from tests.helpers import seed_jobs


def test_concurrent_claimers_take_each_job_exactly_once(db_url: str) -> None:
    ids = seed_jobs(db_url, 60)
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer(i: int) -> None:
        sessions = make_sessionmaker(make_engine(db_url))  # its own engine: its own connections
        while True:
            with transaction(sessions) as s:
                lease = queue.claim(s, f"w{i}", lease_seconds=300)
            if lease is None:
                return
            with lock:
                claimed.append(lease.job_id)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(claimed) == sorted(ids)  # none twice, none lost


def test_expired_lease_is_reclaimed_and_the_old_owner_is_fenced_out(db_url: str) -> None:
    (job_id,) = seed_jobs(db_url, 1)
    sessions = make_sessionmaker(make_engine(db_url))
    t0 = utcnow()
    with transaction(sessions) as s:
        first = queue.claim(s, "a", lease_seconds=10, now=t0)
    assert first is not None and first.attempt == 1
    with transaction(sessions) as s:  # still leased: nobody else gets it
        assert queue.claim(s, "b", lease_seconds=10, now=t0 + timedelta(seconds=5)) is None
    with transaction(sessions) as s:
        second = queue.claim(s, "b", lease_seconds=10, now=t0 + timedelta(seconds=11))
    assert second is not None and second.attempt == 2 and second.failures == 1
    # the first worker wakes up: its writes change nothing
    with pytest.raises(queue.LeaseLost), transaction(sessions) as s:
        records.write_trials(s, first, [], trials_done=99)
    with pytest.raises(queue.LeaseLost), transaction(sessions) as s:
        queue.heartbeat(s, first, 10)
    with transaction(sessions) as s:
        records.write_trials(s, second, [], trials_done=3)
        job = s.get(Job, job_id)
        assert job is not None and job.trials_done == 3 and job.lease_owner == "b"


def test_cancel_fences_the_running_worker(db_url: str) -> None:
    (job_id,) = seed_jobs(db_url, 1)
    sessions = make_sessionmaker(make_engine(db_url))
    with transaction(sessions) as s:
        lease = queue.claim(s, "a", lease_seconds=60)
    assert lease is not None
    with transaction(sessions) as s:
        assert records.cancel_job(s, job_id) is not None
    with pytest.raises(queue.LeaseLost), transaction(sessions) as s:
        queue.heartbeat(s, lease, 60)
    with transaction(sessions) as s:
        assert records.cancel_job(s, job_id) is None  # already final
        assert s.scalar(select(Job.status).where(Job.id == job_id)) == "cancelled"


def test_requeued_job_waits_for_its_backoff(db_url: str) -> None:
    seed_jobs(db_url, 1)
    sessions = make_sessionmaker(make_engine(db_url))
    with transaction(sessions) as s:
        lease = queue.claim(s, "a", lease_seconds=60)
        assert lease is not None
        queue.requeue(s, lease, "boom", delay_seconds=30)
    with transaction(sessions) as s:
        assert queue.claim(s, "b", lease_seconds=60) is None
    with transaction(sessions) as s:
        again = queue.claim(s, "b", lease_seconds=60, now=utcnow() + timedelta(seconds=31))
    assert again is not None and again.failures == 1


def test_blobs_round_trip_in_chunks(db_url: str) -> None:
    sessions = make_sessionmaker(make_engine(db_url))
    data = bytes(range(256)) * (blobs.CHUNK_SIZE // 256 * 2 + 7)  # two full chunks and a bit
    with transaction(sessions) as s:
        sha = blobs.put(s, data)
        assert blobs.put(s, data) == sha  # idempotent
    with transaction(sessions, write=False) as s:
        assert len(list(blobs.iter_chunks(s, sha))) == 3
        assert blobs.read(s, sha) == data


def test_concurrent_puts_of_the_same_bytes_store_one_blob(db_url: str) -> None:
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    data = b"the same checkpoint" * 1000
    first = sessions()
    first.connection(execution_options={"thresher_immediate": True})
    sha = blobs.put(first, data)  # not committed yet
    result: list[str] = []
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with transaction(sessions) as s:  # waits for the first transaction
                result.append(blobs.put(s, data))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=second)
    thread.start()
    thread.join(timeout=1.0)
    assert thread.is_alive()  # blocked behind the first writer, not failed
    first.commit()
    first.close()
    thread.join(timeout=30)
    assert not errors and result == [sha]
    with transaction(sessions, write=False) as s:
        assert blobs.read(s, sha) == data
        assert s.scalar(select(func.count()).select_from(Blob)) == 1
    engine.dispose()
