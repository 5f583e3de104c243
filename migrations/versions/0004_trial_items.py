"""trial work items (methods l0, sgl): each trial a training run any worker may claim; trials record
the worker that ran them, whether a pruner stopped them, their per-epoch accuracies and their pruned
weights; jobs keep a compacted checkpoint

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trial_item",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("job_id", sa.String(36), sa.ForeignKey("job.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("candidate", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("worker", sa.String(200), nullable=True),
        sa.Column("intermediate", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("params_sha256", sa.String(64), sa.ForeignKey("blob.sha256"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("job_id", "number", name="uq_trial_item_job_number"),
    )
    op.create_index("ix_trial_item_status", "trial_item", ["status", "created_at"])
    with op.batch_alter_table("trial") as batch:
        batch.add_column(sa.Column("worker", sa.String(200), nullable=True))
        batch.add_column(sa.Column("pruned", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("intermediate", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("params_sha256", sa.String(64), nullable=True))
        batch.create_foreign_key("fk_trial_params_blob", "blob", ["params_sha256"], ["sha256"])
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("compact_sha256", sa.String(64), nullable=True))
        batch.create_foreign_key("fk_job_compact_blob", "blob", ["compact_sha256"], ["sha256"])


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.drop_constraint("fk_job_compact_blob", type_="foreignkey")
        batch.drop_column("compact_sha256")
    with op.batch_alter_table("trial") as batch:
        batch.drop_constraint("fk_trial_params_blob", type_="foreignkey")
        batch.drop_column("params_sha256")
        batch.drop_column("intermediate")
        batch.drop_column("pruned")
        batch.drop_column("worker")
    op.drop_index("ix_trial_item_status", table_name="trial_item")
    op.drop_table("trial_item")
