"""artifacts: every download a job offers is a row (format, architecture, its config, the blob),
instead of one column per format on the job; the job's checkpoint_sha256 and compact_sha256 move
into it

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "artifact",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("job_id", sa.String(36), sa.ForeignKey("job.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("format", sa.String(40), nullable=False),
        sa.Column("architecture", sa.String(100), nullable=False),
        sa.Column("architecture_config", sa.JSON(), nullable=False),
        sa.Column("blob_sha256", sa.String(64), sa.ForeignKey("blob.sha256"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("job_id", "format", name="uq_artifact_job_format"),
    )
    conn = op.get_bind()
    rows = conn.execute(sa.text(
        "SELECT job.id, job.checkpoint_sha256, job.compact_sha256, job.best, job.finished_at, "
        "job.created_at, model.architecture FROM job JOIN model ON model.id = job.model_id "
        "WHERE job.checkpoint_sha256 IS NOT NULL")).all()
    insert = sa.text("INSERT INTO artifact (job_id, format, architecture, architecture_config, "
                     "blob_sha256, created_at) VALUES (:job, :format, :arch, :config, :sha, :at)")
    for job_id, pruned, compact, best, finished, created, arch in rows:
        at = finished or created
        conn.execute(insert, {"job": job_id, "format": "pruned", "arch": arch, "config": "{}",
                              "sha": pruned, "at": at})
        if compact is not None:
            best = json.loads(best) if isinstance(best, str) else (best or {})
            config = (best.get("compact") or {}).get("architecture_config") or {}
            conn.execute(insert, {"job": job_id, "format": "compact",
                                  "arch": config.get("base", arch), "config": json.dumps(config),
                                  "sha": compact, "at": at})
    with op.batch_alter_table("job") as batch:
        if conn.dialect.name == "sqlite":
            pass  # batch mode rebuilds the table without the columns and their foreign keys
        else:
            batch.drop_constraint("fk_job_compact_blob", type_="foreignkey")
            batch.drop_constraint("job_checkpoint_sha256_fkey", type_="foreignkey")
        batch.drop_column("compact_sha256")
        batch.drop_column("checkpoint_sha256")


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("checkpoint_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("compact_sha256", sa.String(64), nullable=True))
        batch.create_foreign_key("job_checkpoint_sha256_fkey", "blob", ["checkpoint_sha256"],
                                 ["sha256"])
        batch.create_foreign_key("fk_job_compact_blob", "blob", ["compact_sha256"], ["sha256"])
    conn = op.get_bind()
    for column, fmt in (("checkpoint_sha256", "pruned"), ("compact_sha256", "compact")):
        conn.execute(sa.text(
            f"UPDATE job SET {column} = (SELECT blob_sha256 FROM artifact "
            f"WHERE artifact.job_id = job.id AND artifact.format = '{fmt}')"))
    op.drop_table("artifact")
