"""initial schema: blob, model, dataset, job, trial, worker

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

from store.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blob",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "blob_chunk",
        sa.Column("sha256", sa.String(64), sa.ForeignKey("blob.sha256", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("idx", sa.Integer(), primary_key=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "model",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False, index=True),
        sa.Column("name", sa.String(200)),
        sa.Column("architecture", sa.String(100), nullable=False),
        sa.Column("weights_sha256", sa.String(64), sa.ForeignKey("blob.sha256"), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "dataset",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False, index=True),
        sa.Column("name", sa.String(200)),
        sa.Column("builtin", sa.String(50)),
        sa.Column("blob_sha256", sa.String(64), sa.ForeignKey("blob.sha256")),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "job",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False, index=True),
        sa.Column("model_id", sa.String(36), sa.ForeignKey("model.id"), nullable=False),
        sa.Column("dataset_id", sa.String(36), sa.ForeignKey("dataset.id"), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("trials_done", sa.Integer(), nullable=False),
        sa.Column("trials_total", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(40)),
        sa.Column("reference", sa.JSON()),
        sa.Column("best", sa.JSON()),
        sa.Column("test_accuracy", sa.Float()),
        sa.Column("checkpoint_sha256", sa.String(64), sa.ForeignKey("blob.sha256")),
        sa.Column("error", sa.Text()),
        sa.Column("lease_owner", sa.String(200)),
        sa.Column("lease_expires_at", UTCDateTime()),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("not_before", UTCDateTime()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime()),
        sa.Column("finished_at", UTCDateTime()),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_job_status_created", "job", ["status", "created_at"])
    op.create_table(
        "trial",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("job_id", sa.String(36), sa.ForeignKey("job.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(40), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("candidate", sa.JSON(), nullable=False),
        sa.Column("keep_ratios", sa.JSON(), nullable=False),
        sa.Column("val_accuracy", sa.Float()),
        sa.Column("accuracy_drop", sa.Float()),
        sa.Column("scored_on", sa.Integer(), nullable=False),
        sa.Column("nonzero", sa.BigInteger()),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("compression_ratio", sa.Float()),
        sa.Column("weights_ratio", sa.Float()),
        sa.Column("objective", sa.Float()),
        sa.Column("feasible", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("job_id", "number", name="uq_trial_job_number"),
    )
    op.create_table(
        "worker",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(100), nullable=False),
        sa.Column("current_job_id", sa.String(36)),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("worker")
    op.drop_table("trial")
    op.drop_index("ix_job_status_created", table_name="job")
    op.drop_table("job")
    op.drop_table("dataset")
    op.drop_table("model")
    op.drop_table("blob_chunk")
    op.drop_table("blob")
