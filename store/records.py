"""Reading and writing models, datasets, jobs and trials. Callers own the transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from store.models import Dataset, Job, Model, Trial, TrialItem, Worker, utcnow
from store.queue import Lease, update_job

LOCAL_OWNER = "local"
FINAL_STATUSES = ("succeeded", "failed", "cancelled")


def new_id() -> str:
    return str(uuid.uuid4())


def add_model(session: Session, *, architecture: str, weights_sha256: str, summary: dict[str, Any],
              name: str | None, owner: str = LOCAL_OWNER) -> Model:
    row = Model(id=new_id(), owner=owner, name=name, architecture=architecture,
                weights_sha256=weights_sha256, summary=summary, created_at=utcnow())
    session.add(row)
    session.flush()
    return row


def add_dataset(session: Session, *, summary: dict[str, Any], builtin: str | None,
                blob_sha256: str | None, name: str | None, owner: str = LOCAL_OWNER) -> Dataset:
    row = Dataset(id=new_id(), owner=owner, name=name, builtin=builtin, blob_sha256=blob_sha256,
                  summary=summary, created_at=utcnow())
    session.add(row)
    session.flush()
    return row


def add_job(session: Session, *, model_id: str, dataset_id: str, spec: dict[str, Any],
            trials_total: int, owner: str = LOCAL_OWNER) -> Job:
    now = utcnow()
    row = Job(id=new_id(), owner=owner, model_id=model_id, dataset_id=dataset_id, spec=spec,
              status="queued", trials_done=0, trials_total=trials_total, attempt=0, failures=0,
              created_at=now, updated_at=now)
    session.add(row)
    session.flush()
    return row


def list_jobs(session: Session, *, offset: int, limit: int, status: str | None = None,
              owner: str | None = None) -> tuple[list[Job], int]:
    """Newest first; `owner=None` lists every principal's jobs."""
    query = select(Job)
    count = select(func.count()).select_from(Job)
    if owner is not None:
        query = query.where(Job.owner == owner)
        count = count.where(Job.owner == owner)
    if status is not None:
        query = query.where(Job.status == status)
        count = count.where(Job.status == status)
    rows = session.scalars(query.order_by(Job.created_at.desc(), Job.id).offset(offset).limit(limit))
    return list(rows), int(session.scalar(count) or 0)


def count_active_jobs(session: Session, owner: str) -> int:
    return int(session.scalar(select(func.count()).select_from(Job).where(
        Job.owner == owner, Job.status.in_(("queued", "running")))) or 0)


def cancel_job(session: Session, job_id: str) -> Job | None:
    """Cancel a queued or running job; the running worker's fenced writes then match nothing and it
    stops at its next write or heartbeat. Returns None when the job is already final."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(("queued", "running")))
        .values(status="cancelled", finished_at=now, updated_at=now, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    # queued trials go; a worker training one finds it gone at its next write and drops it
    session.execute(delete(TrialItem).where(TrialItem.job_id == job_id))
    return session.get(Job, job_id, populate_existing=True)


# Sort keys a trial listing accepts: name → column. Unscored trials (no metrics) sort last either way.
TRIAL_SORTS: dict[str, Any] = {
    "number": Trial.number, "ratio": Trial.compression_ratio, "accuracy": Trial.val_accuracy,
    "drop": Trial.accuracy_drop, "nonzero": Trial.nonzero, "duration": Trial.duration_ms,
}


def list_trials(session: Session, job_id: str, *, offset: int, limit: int, sort: str = "number",
                descending: bool = False, stage: str | None = None) -> tuple[list[Trial], int]:
    where = [Trial.job_id == job_id]
    if stage is not None:
        where.append(Trial.stage == stage)
    column = TRIAL_SORTS[sort]
    key = (column.desc() if descending else column.asc()).nulls_last()
    rows = session.scalars(
        select(Trial).where(*where).order_by(key, Trial.number).offset(offset).limit(limit)
    )
    total = session.scalar(select(func.count()).select_from(Trial).where(*where))
    return list(rows), int(total or 0)


@dataclass(frozen=True)
class TrialPoint:
    """What the dashboard's charts need of a trial, without its per-layer JSON."""

    number: int
    stage: str
    round: int
    val_accuracy: float | None
    accuracy_drop: float | None
    scored_on: int
    nonzero: int | None
    compression_ratio: float | None
    feasible: bool
    pruned: bool = False  # stopped early by a pruner (methods l0, sgl): not a finished model


def trial_points(session: Session, job_id: str) -> list[TrialPoint]:
    t = Trial.__table__.c
    # a Core select on the session's connection: no ORM row processing (a third of the time)
    rows = session.connection().execute(
        select(t.number, t.stage, t.round, t.val_accuracy, t.accuracy_drop, t.scored_on, t.nonzero,
               t.compression_ratio, t.feasible, t.pruned).where(t.job_id == job_id).order_by(t.number)
    ).all()
    return [TrialPoint(*row[:9], pruned=bool(row[9])) for row in rows]


def page_of(session: Session, table: type[Model] | type[Dataset], *, offset: int, limit: int,
            owner: str | None) -> tuple[list[Any], int]:
    """One page of models or datasets, newest first, and how many there are; `owner=None` lists
    every principal's."""
    query = select(table)
    count = select(func.count()).select_from(table)
    if owner is not None:
        query = query.where(table.owner == owner)
        count = count.where(table.owner == owner)
    rows = session.scalars(query.order_by(table.created_at.desc(), table.id).offset(offset).limit(limit))
    return list(rows), int(session.scalar(count) or 0)


def list_models(session: Session, owner: str | None, limit: int = 100) -> list[Model]:
    """Newest first; `owner=None` lists every principal's."""
    rows, _ = page_of(session, Model, offset=0, limit=limit, owner=owner)
    return rows


def list_datasets(session: Session, owner: str | None, limit: int = 100) -> list[Dataset]:
    rows, _ = page_of(session, Dataset, offset=0, limit=limit, owner=owner)
    return rows


def trials_numbered(session: Session, job_id: str, numbers: Sequence[int]) -> list[Trial]:
    return list(session.scalars(select(Trial).where(Trial.job_id == job_id,
                                                    Trial.number.in_(list(numbers)))
                                .order_by(Trial.number)))


def all_trials(session: Session, job_id: str) -> list[Trial]:
    return list(session.scalars(select(Trial).where(Trial.job_id == job_id).order_by(Trial.number)))


def write_trials(session: Session, lease: Lease, trials: Sequence[dict[str, Any]],
                 **job_values: Any) -> None:
    """Write a population's trials and the job's progress in one fenced transaction.

    The fenced job UPDATE comes first: it raises LeaseLost before any trial row is inserted when the
    job is no longer ours, and it holds the job's row lock while the trials go in. A number already
    stored is skipped: that happens only when a COMMIT was cut off by an outage after the database
    had applied it, and the worker wrote the same population again (store.reconnect)."""
    update_job(session, lease, **job_values)
    if trials:
        now = utcnow()
        insert = postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        session.execute(insert(Trial).on_conflict_do_nothing(index_elements=["job_id", "number"]),
                        [{"job_id": lease.job_id, "created_at": now, **t} for t in trials])


def list_workers(session: Session) -> list[Worker]:
    return list(session.scalars(select(Worker).order_by(Worker.last_seen.desc())))


@dataclass(frozen=True)
class FleetFigures:
    """What every API process reads alike from the database for /metrics."""

    jobs_by_status: dict[str, int]
    trials_by_method: dict[str, int]
    trial_seconds_sum: float
    trial_count: int
    trial_seconds_buckets: dict[float, int]  # upper bound (s) → trials at most that long
    workers: dict[str, float]  # worker name → seconds since its last heartbeat


TRIAL_BUCKETS = (0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0)


def fleet_figures(session: Session, now: datetime) -> FleetFigures:
    jobs = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).tuples().all())
    per_job = session.execute(select(Trial.job_id, func.count()).group_by(Trial.job_id)).tuples().all()
    methods: dict[str, dict[str, Any]] = dict(session.execute(select(Job.id, Job.spec)).tuples().all())
    by_method: dict[str, int] = {}
    for job_id, n in per_job:
        method = str((methods.get(job_id) or {}).get("method", "unknown"))
        by_method[method] = by_method.get(method, 0) + int(n)
    seconds = Trial.duration_ms / 1000.0
    total, count = session.execute(select(func.coalesce(func.sum(seconds), 0.0), func.count())
                                   .select_from(Trial)).one()
    buckets = {b: int(session.scalar(select(func.count()).select_from(Trial).where(seconds <= b)) or 0)
               for b in TRIAL_BUCKETS}
    workers = {w.name: max(0.0, (now - _aware(w.last_seen)).total_seconds())
               for w in session.scalars(select(Worker))}
    return FleetFigures(jobs_by_status={k: int(v) for k, v in jobs.items()}, trials_by_method=by_method,
                        trial_seconds_sum=float(total), trial_count=int(count),
                        trial_seconds_buckets=buckets, workers=workers)


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)
