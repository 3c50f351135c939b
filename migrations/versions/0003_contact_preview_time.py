"""The time of a phone's last preview, so the newest message always wins the preview

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 09:00:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("contact") as batch_op:
        batch_op.add_column(sa.Column("last_preview_at", sa.DateTime(), nullable=True))
    # The previews kept so far were written by their phone's latest activity at the latest.
    op.execute(
        "UPDATE contact SET last_preview_at = last_activity_at WHERE last_preview IS NOT NULL"
    )


def downgrade():
    with op.batch_alter_table("contact") as batch_op:
        batch_op.drop_column("last_preview_at")
