"""job.round: the round of the last trial a multi-round method recorded, so a job's progress
(the API, `thresher submit --follow`, the dashboard) can say "round 7 of 30" without reading
its trials

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("round", sa.Integer(), nullable=True))
    # jobs recorded before: the round of their last trial
    op.execute("UPDATE job SET round = (SELECT trial.round FROM trial WHERE trial.job_id = job.id "
               "ORDER BY trial.number DESC LIMIT 1)")


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.drop_column("round")
