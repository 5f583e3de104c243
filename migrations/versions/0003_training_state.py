"""training state of multi-round jobs (OLMP): weights, masks and optimizer state as a blob

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("state_sha256", sa.String(64), nullable=True))
        batch.create_foreign_key("fk_job_state_blob", "blob", ["state_sha256"], ["sha256"])


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.drop_constraint("fk_job_state_blob", type_="foreignkey")
        batch.drop_column("state_sha256")
