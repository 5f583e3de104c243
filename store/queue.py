"""The job queue: one-statement claims, leases renewed by heartbeats, the attempt as fencing token.

Every write a worker makes to a claimed job goes through `fenced()`: it matches only while the job
is still running under the same attempt, so a worker that lost its lease (crash, freeze, cancel)
changes nothing when it wakes up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, delete, func, or_, select, update
from sqlalchemy.orm import Session

from store.models import Job, TrialItem, Worker, utcnow


class LeaseLost(Exception):
    """The job is no longer ours: cancelled, or claimed by another worker after our lease expired."""


@dataclass(frozen=True)
class Lease:
    job_id: str
    attempt: int
    failures: int
    worker: str


def claim(session: Session, worker: str, lease_seconds: float, now: datetime | None = None) -> Lease | None:
    """Claim the oldest runnable job in one UPDATE (FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite
    serializes it through BEGIN IMMEDIATE, see store.db)."""
    now = now or utcnow()
    runnable = or_(
        and_(Job.status == "queued", or_(Job.not_before.is_(None), Job.not_before <= now)),
        and_(Job.status == "running", Job.lease_expires_at < now),
    )
    pick = (
        select(Job.id)
        .where(runnable)
        .order_by(Job.created_at, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    stmt = (
        update(Job)
        .where(Job.id == pick)
        .values(
            # A running job whose lease expired lost its worker: that counts as a failure.
            failures=Job.failures + case((Job.status == "running", 1), else_=0),
            status="running",
            lease_owner=worker,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempt=Job.attempt + 1,
            started_at=func.coalesce(Job.started_at, now),
            updated_at=now,
        )
        .returning(Job.id, Job.attempt, Job.failures)
        .execution_options(synchronize_session=False)
    )
    row = session.execute(stmt).first()
    if row is None:
        return None
    return Lease(job_id=row[0], attempt=row[1], failures=row[2], worker=worker)


def fenced(lease: Lease) -> ColumnElement[bool]:
    return and_(Job.id == lease.job_id, Job.attempt == lease.attempt, Job.status == "running")


def update_job(session: Session, lease: Lease, **values: Any) -> None:
    """A fenced write; raises LeaseLost when the job is no longer ours (the caller rolls back)."""
    values.setdefault("updated_at", utcnow())
    result = session.execute(
        update(Job).where(fenced(lease)).values(**values).execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise LeaseLost(lease.job_id)


def heartbeat(session: Session, lease: Lease, lease_seconds: float) -> None:
    now = utcnow()
    update_job(session, lease, lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)


def requeue(session: Session, lease: Lease, error: str, delay_seconds: float) -> None:
    """Give the job back after a crash, to be retried after `delay_seconds` (backoff)."""
    now = utcnow()
    update_job(
        session, lease, status="queued", lease_owner=None, lease_expires_at=None,
        failures=lease.failures + 1, not_before=now + timedelta(seconds=delay_seconds), error=error,
    )


def release(session: Session, lease: Lease) -> None:
    """Give the job back at once, without counting a failure (a draining worker)."""
    update_job(session, lease, status="queued", lease_owner=None, lease_expires_at=None)


def fail(session: Session, lease: Lease, error: str) -> None:
    now = utcnow()
    update_job(session, lease, status="failed", error=error, finished_at=now, lease_expires_at=None)
    # trials under way or queued will never be collected; their finished outcomes are trials
    session.execute(delete(TrialItem).where(TrialItem.job_id == lease.job_id))


def register_worker(session: Session, name: str, host: str, pid: int, device: str) -> None:
    now = utcnow()
    row = session.get(Worker, name)
    if row is None:
        session.add(Worker(name=name, host=host, pid=pid, device=device, started_at=now, last_seen=now))
    else:
        row.host, row.pid, row.device, row.started_at, row.last_seen = host, pid, device, now, now
        row.current_job_id = None


def touch_worker(session: Session, name: str, current_job_id: str | None) -> None:
    session.execute(
        update(Worker).where(Worker.name == name).values(last_seen=utcnow(), current_job_id=current_job_id)
    )
