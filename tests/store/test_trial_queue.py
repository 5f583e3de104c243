"""Trial work items on real SQLite and PostgreSQL: queued under the job's fence, claimed once,
leases that expire, late writes fenced out, retries capped, cancelled jobs' items left alone."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from store import queue, records, trial_queue
from store.db import make_engine, make_sessionmaker, transaction
from store.models import Job, TrialItem, utcnow
from tests.helpers import seed_jobs


def _running_job(db_url: str, worker: str = "coordinator") -> tuple[queue.Lease, Any]:
    (job_id,) = seed_jobs(db_url, 1)
    sessions = make_sessionmaker(make_engine(db_url))
    with transaction(sessions) as s:
        lease = queue.claim(s, worker, lease_seconds=600)
    assert lease is not None and lease.job_id == job_id
    return lease, sessions


def test_items_are_queued_under_the_jobs_fence_and_numbers_stay_unique(db_url: str) -> None:
    lease, sessions = _running_job(db_url)
    with transaction(sessions) as s:
        trial_queue.enqueue(s, lease, [(0, 0, [-5.0, -4.0]), (1, 0, [-6.0, -3.0])])
    with transaction(sessions) as s:
        # a second coordinator queueing the same numbers keeps what is there
        trial_queue.enqueue(s, lease, [(1, 0, [9.0, 9.0]), (2, 1, [-7.0, -7.0])])
        items = trial_queue.items_of(s, lease.job_id)
    assert [(i.number, i.batch, i.candidate) for i in items] == [
        (0, 0, [-5.0, -4.0]), (1, 0, [-6.0, -3.0]), (2, 1, [-7.0, -7.0])]
    # a coordinator that lost the job writes nothing
    stale = queue.Lease(lease.job_id, lease.attempt - 1, 0, "old")
    with pytest.raises(queue.LeaseLost), transaction(sessions) as s:
        trial_queue.enqueue(s, stale, [(3, 1, [0.0, 0.0])])
    with transaction(sessions, write=False) as s:
        assert s.scalar(select(func.count()).select_from(TrialItem)) == 3


def test_concurrent_workers_claim_each_item_exactly_once(db_url: str) -> None:
    lease, sessions = _running_job(db_url)
    with transaction(sessions) as s:
        trial_queue.enqueue(s, lease, [(n, n // 4, [float(n)]) for n in range(80)])
    claimed: list[int] = []
    lock = threading.Lock()

    def claimer(i: int) -> None:
        own = make_sessionmaker(make_engine(db_url))
        while True:
            with transaction(own) as s:
                item = trial_queue.claim(s, f"w{i}", lease_seconds=300)
            if item is None:
                return
            with transaction(own) as s:
                trial_queue.finish(s, item, {"val_accuracy": 0.9}, None)
            with lock:
                claimed.append(item.number)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(claimed) == list(range(80))  # none twice, none lost
    with transaction(sessions, write=False) as s:
        done = trial_queue.items_of(s, lease.job_id)
    assert {i.status for i in done} == {"done"} and all(i.worker for i in done)


def test_an_expired_item_is_retried_and_its_old_worker_is_fenced_out(db_url: str) -> None:
    lease, sessions = _running_job(db_url)
    with transaction(sessions) as s:
        trial_queue.enqueue(s, lease, [(0, 0, [-5.0])])
    t0 = utcnow()
    with transaction(sessions) as s:
        first = trial_queue.claim(s, "a", lease_seconds=10, now=t0)
    assert first is not None and first.attempt == 1 and first.failures == 0
    with transaction(sessions) as s:
        assert trial_queue.claim(s, "b", lease_seconds=10, now=t0 + timedelta(seconds=5)) is None
        second = trial_queue.claim(s, "b", lease_seconds=10, now=t0 + timedelta(seconds=11))
    assert second is not None and second.attempt == 2 and second.failures == 1
    # the first worker wakes up (frozen, not dead): nothing it writes lands
    for write in (lambda s: trial_queue.heartbeat(s, first, 10),
                  lambda s: trial_queue.update_item(s, first, intermediate=[0.1]),
                  lambda s: trial_queue.finish(s, first, {"val_accuracy": 0.1}, None)):
        with pytest.raises(queue.LeaseLost), transaction(sessions) as s:
            write(s)
    with transaction(sessions) as s:
        trial_queue.finish(s, second, {"val_accuracy": 0.9}, None)
        (item,) = trial_queue.items_of(s, lease.job_id)
    assert item.status == "done" and item.worker == "b" and item.result == {"val_accuracy": 0.9}


def test_a_crashing_trial_is_retried_with_backoff_then_given_up(db_url: str) -> None:
    lease, sessions = _running_job(db_url)
    with transaction(sessions) as s:
        trial_queue.enqueue(s, lease, [(0, 0, [-5.0])])
    t0 = utcnow()
    outcomes = []
    for k in range(3):
        now = t0 + timedelta(seconds=100 * k)
        with transaction(sessions) as s:
            item = trial_queue.claim(s, f"w{k}", lease_seconds=10, now=now)
            assert item is not None
            outcomes.append(trial_queue.give_up_or_retry(s, item, "RuntimeError: boom",
                                                         max_attempts=3, delay_seconds=50, now=now))
        with transaction(sessions) as s:
            # backoff: not runnable again before the delay has passed
            assert trial_queue.claim(s, "x", lease_seconds=10, now=now + timedelta(seconds=1)) is None
    assert outcomes == [False, False, True]
    with transaction(sessions, write=False) as s:
        (item_row,) = trial_queue.items_of(s, lease.job_id)
    assert item_row.status == "done" and item_row.failures == 3
    assert item_row.result == {"error": "failed 3 times; last error: RuntimeError: boom"}


def test_items_of_a_cancelled_job_are_not_claimed_and_running_ones_are_fenced(db_url: str) -> None:
    lease, sessions = _running_job(db_url)
    with transaction(sessions) as s:
        trial_queue.enqueue(s, lease, [(0, 0, [1.0]), (1, 0, [2.0])])
        running = trial_queue.claim(s, "w", lease_seconds=300)
    assert running is not None
    with transaction(sessions) as s:
        assert records.cancel_job(s, lease.job_id) is not None
    with transaction(sessions) as s:
        assert trial_queue.claim(s, "w2", lease_seconds=300) is None
    with pytest.raises(queue.LeaseLost), transaction(sessions) as s:
        trial_queue.heartbeat(s, running, 300)
    with transaction(sessions, write=False) as s:
        job = s.get(Job, lease.job_id)
        assert job is not None and job.status == "cancelled"
