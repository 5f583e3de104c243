"""Trial work items: the training trials of one job (methods l0, sgl), claimable by any worker.

The same rules as the job queue (store.queue), one level down: a claim is one UPDATE (FOR UPDATE
SKIP LOCKED on PostgreSQL, BEGIN IMMEDIATE on SQLite); a lease renewed by heartbeats; the item's
`attempt` fences every write, so a worker that lost its item (killed, frozen past its lease) changes
nothing when it wakes. Only items of live jobs (queued or running) are claimed: a cancelled or
failed job's items stay put and go with the job. A job handed back by a draining coordinator is
queued again, and its trials under way carry on: the next coordinator collects them. The job's coordinator (the worker holding the job's lease) enqueues items under its
own fence and turns finished ones into trials; a trial is counted once because its number is unique
per job in both tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from store.models import Job, TrialItem, utcnow
from store.queue import Lease, LeaseLost, update_job


class ItemLost(LeaseLost):
    """A trial item is no longer ours (its lease expired and another worker took it, or its job
    stopped): its holder drops it without writing anything. Not its job's lease: a coordinator
    whose own trial was taken keeps coordinating."""


@dataclass(frozen=True)
class ItemLease:
    item_id: int
    job_id: str
    number: int
    batch: int
    candidate: list[float]
    attempt: int
    failures: int
    worker: str


def enqueue(session: Session, lease: Lease, items: Sequence[tuple[int, int, list[float]]]) -> None:
    """Queue (number, batch, candidate) items of the coordinator's job; numbers already queued by an
    earlier coordinator of the same job are kept as they are (their work may be under way)."""
    update_job(session, lease)  # still ours? raises LeaseLost before anything is written
    if not items:
        return
    now = utcnow()
    insert = postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(
        insert(TrialItem).on_conflict_do_nothing(index_elements=["job_id", "number"]),
        [{"job_id": lease.job_id, "number": n, "batch": b, "candidate": list(c), "status": "queued",
          "attempt": 0, "failures": 0, "intermediate": [], "created_at": now, "updated_at": now}
         for n, b, c in items],
    )


def items_of(session: Session, job_id: str, numbers: Sequence[int] | None = None) -> list[TrialItem]:
    query = select(TrialItem).where(TrialItem.job_id == job_id)
    if numbers is not None:
        query = query.where(TrialItem.number.in_(list(numbers)))
    return list(session.scalars(query.order_by(TrialItem.number)))


def claim(session: Session, worker: str, lease_seconds: float, *, job_id: str | None = None,
          now: datetime | None = None) -> ItemLease | None:
    """Claim the oldest runnable item of a live job (of `job_id` only, when given)."""
    now = now or utcnow()
    runnable = or_(
        and_(TrialItem.status == "queued",
             or_(TrialItem.not_before.is_(None), TrialItem.not_before <= now)),
        and_(TrialItem.status == "running", TrialItem.lease_expires_at < now),
    )
    where = [runnable, TrialItem.job_id.in_(_live_jobs())]
    if job_id is not None:
        where.append(TrialItem.job_id == job_id)
    pick = (
        select(TrialItem.id).where(*where)
        .order_by(TrialItem.created_at, TrialItem.job_id, TrialItem.number)
        .limit(1).with_for_update(skip_locked=True).scalar_subquery()
    )
    stmt = (
        update(TrialItem).where(TrialItem.id == pick)
        .values(
            # a running item whose lease expired lost its worker: that counts as a failure
            failures=TrialItem.failures + case((TrialItem.status == "running", 1), else_=0),
            status="running", lease_owner=worker, attempt=TrialItem.attempt + 1,
            lease_expires_at=now + timedelta(seconds=lease_seconds), intermediate=[],
            updated_at=now,
        )
        .returning(TrialItem.id, TrialItem.job_id, TrialItem.number, TrialItem.batch,
                   TrialItem.candidate, TrialItem.attempt, TrialItem.failures)
        .execution_options(synchronize_session=False)
    )
    row = session.execute(stmt).first()
    if row is None:
        return None
    return ItemLease(item_id=row[0], job_id=row[1], number=row[2], batch=row[3],
                     candidate=[float(v) for v in row[4]], attempt=row[5], failures=row[6],
                     worker=worker)


def _live_jobs() -> Select[str]:
    return select(Job.id).where(Job.status.in_(("queued", "running")))


def fenced(lease: ItemLease) -> ColumnElement[bool]:
    return and_(TrialItem.id == lease.item_id, TrialItem.attempt == lease.attempt,
                TrialItem.status == "running",
                TrialItem.job_id.in_(_live_jobs()))


def update_item(session: Session, lease: ItemLease, **values: Any) -> None:
    """A fenced write; raises LeaseLost when the item is no longer ours or its job stopped."""
    values.setdefault("updated_at", utcnow())
    result = session.execute(update(TrialItem).where(fenced(lease)).values(**values)
                             .execution_options(synchronize_session=False))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise ItemLost(f"trial {lease.number} of job {lease.job_id}")


def heartbeat(session: Session, lease: ItemLease, lease_seconds: float) -> None:
    update_item(session, lease, lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))


def finish(session: Session, lease: ItemLease, result: dict[str, Any],
           params_sha256: str | None) -> None:
    update_item(session, lease, status="done", result=result, params_sha256=params_sha256,
                worker=lease.worker, lease_expires_at=None)


def give_up_or_retry(session: Session, lease: ItemLease, error: str, *, max_attempts: int,
                     delay_seconds: float, now: datetime | None = None) -> bool:
    """After a crash: queue the item again after `delay_seconds`, or, once it has failed
    `max_attempts` times, finish it with the error (the trial is recorded as failed). True when it
    was given up."""
    failures = lease.failures + 1
    if failures >= max_attempts:
        update_item(session, lease, status="done", failures=failures, worker=lease.worker,
                    lease_expires_at=None,
                    result={"error": f"failed {failures} times; last error: {error}"})
        return True
    update_item(session, lease, status="queued", failures=failures, lease_owner=None,
                lease_expires_at=None,
                not_before=(now or utcnow()) + timedelta(seconds=delay_seconds))
    return False


def release(session: Session, lease: ItemLease) -> None:
    """Hand the item back at once, without counting a failure (a draining worker)."""
    update_item(session, lease, status="queued", lease_owner=None, lease_expires_at=None)


def delete_items(session: Session, lease: Lease) -> None:
    """Drop a finished job's items; their outcomes live on as trials."""
    update_job(session, lease)
    session.execute(delete(TrialItem).where(TrialItem.job_id == lease.job_id))


__all__ = ["ItemLease", "ItemLost", "LeaseLost", "claim", "delete_items", "enqueue", "finish",
           "give_up_or_retry", "heartbeat", "items_of", "release", "update_item"]
