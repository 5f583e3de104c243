"""Tables. Timestamps are UTC computed in Python; SQLite's naive datetimes come back as UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use store.models.utcnow()")
        if value is not None and dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime
    }


class Blob(Base):
    __tablename__ = "blob"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    chunk_size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BlobChunk(Base):
    __tablename__ = "blob_chunk"

    sha256: Mapped[str] = mapped_column(
        String(64), ForeignKey("blob.sha256", ondelete="CASCADE"), primary_key=True
    )
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Model(Base):
    __tablename__ = "model"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    architecture: Mapped[str] = mapped_column(String(100))
    weights_sha256: Mapped[str] = mapped_column(String(64), ForeignKey("blob.sha256"))
    summary: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    __tablename__ = "dataset"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    builtin: Mapped[str | None] = mapped_column(String(50))
    blob_sha256: Mapped[str | None] = mapped_column(String(64), ForeignKey("blob.sha256"))
    summary: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "job"
    __table_args__ = (Index("ix_job_status_created", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    model_id: Mapped[str] = mapped_column(String(36), ForeignKey("model.id"))
    dataset_id: Mapped[str] = mapped_column(String(36), ForeignKey("dataset.id"))
    spec: Mapped[dict[str, Any]]
    # queued → running → succeeded | failed | cancelled
    status: Mapped[str] = mapped_column(String(20), default="queued")
    trials_done: Mapped[int] = mapped_column(Integer, default=0)
    trials_total: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str | None] = mapped_column(String(40))
    # the round of the last trial recorded (multi-round methods: olmp's rounds, then its attempts)
    round: Mapped[int | None] = mapped_column(Integer)
    reference: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    best: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    # Resumable training state of multi-round methods (weights, masks, optimizer state, RNG).
    state_sha256: Mapped[str | None] = mapped_column(String(64), ForeignKey("blob.sha256"))
    error: Mapped[str | None] = mapped_column(Text)
    # lease and fencing (DESIGN §4)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # the downloads a finished job offers (written with the job's result, read with the job)
    artifacts: Mapped[list[Artifact]] = relationship(lazy="selectin", order_by="Artifact.id",
                                                     viewonly=True)


class Trial(Base):
    __tablename__ = "trial"
    # A retried worker can never write a trial twice.
    __table_args__ = (UniqueConstraint("job_id", "number", name="uq_trial_job_number"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("job.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(40))
    round: Mapped[int] = mapped_column(Integer, default=0)
    candidate: Mapped[list[Any]]
    keep_ratios: Mapped[dict[str, Any]]
    val_accuracy: Mapped[float | None] = mapped_column(Float)
    accuracy_drop: Mapped[float | None] = mapped_column(Float)
    scored_on: Mapped[int] = mapped_column(Integer)  # validation samples the score used
    nonzero: Mapped[int | None] = mapped_column(BigInteger)
    total: Mapped[int] = mapped_column(BigInteger)
    compression_ratio: Mapped[float | None] = mapped_column(Float)
    weights_ratio: Mapped[float | None] = mapped_column(Float)
    objective: Mapped[float | None] = mapped_column(Float)
    feasible: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float] = mapped_column(Float)
    # Training trials (methods l0, sgl): who ran it, whether a pruner stopped it, its validation
    # accuracy after each epoch, and its pruned weights (kept: any trial's model may be the best).
    worker: Mapped[str | None] = mapped_column(String(200))
    pruned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    intermediate: Mapped[list[Any] | None] = mapped_column(JSON)
    params_sha256: Mapped[str | None] = mapped_column(String(64), ForeignKey("blob.sha256"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TrialItem(Base):
    """A training trial queued for any worker (DESIGN §4's queue rules, one level down): claimed in
    one statement, leased with heartbeats, `attempt` fencing every write. The job's coordinator
    turns finished items into trials."""

    __tablename__ = "trial_item"
    __table_args__ = (UniqueConstraint("job_id", "number", name="uq_trial_item_job_number"),
                      Index("ix_trial_item_status", "status", "created_at"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("job.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)
    batch: Mapped[int] = mapped_column(Integer)
    candidate: Mapped[list[Any]]
    # queued → running → done (result holds the outcome, or the error after the last attempt)
    status: Mapped[str] = mapped_column(String(20), default="queued")
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[datetime | None]
    worker: Mapped[str | None] = mapped_column(String(200))
    intermediate: Mapped[list[Any]] = mapped_column(JSON, default=list)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    params_sha256: Mapped[str | None] = mapped_column(String(64), ForeignKey("blob.sha256"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Worker(Base):
    __tablename__ = "worker"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(100))
    current_job_id: Mapped[str | None] = mapped_column(String(36))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)


class Token(Base):
    """An API token: only its sha256 is stored. Its name is the principal that owns resources."""

    __tablename__ = "token"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class Artifact(Base):
    """One download a finished job offers: its format (`pruned`: the uploaded architecture with
    zeros; `compact`: smaller dense shapes; a method may add its own), the architecture and config
    its family's builder rebuilds it from, and the safetensors blob (whose manifest says the same)."""

    __tablename__ = "artifact"
    __table_args__ = (UniqueConstraint("job_id", "format", name="uq_artifact_job_format"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("job.id", ondelete="CASCADE"),
                                        index=True)
    format: Mapped[str] = mapped_column(String(40))
    architecture: Mapped[str] = mapped_column(String(100))
    architecture_config: Mapped[dict[str, Any]]
    blob_sha256: Mapped[str] = mapped_column(String(64), ForeignKey("blob.sha256"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
