"""A message's tags (campaigns) and the rate type it was sent with, from its registrations

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 09:30:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rate_type", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("tags", sa.Text(), nullable=True))
    op.create_table(
        "message_tag",
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("tag", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("request_id", "tag"),
    )
    with op.batch_alter_table("message_tag", schema=None) as batch_op:
        batch_op.create_index("ix_message_tag_tag", ["tag", "request_id"], unique=False)


def downgrade():
    with op.batch_alter_table("message_tag", schema=None) as batch_op:
        batch_op.drop_index("ix_message_tag_tag")
    op.drop_table("message_tag")
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.drop_column("tags")
        batch_op.drop_column("rate_type")
