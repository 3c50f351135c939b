"""What a receipt or reply was read with by coercion (a code or price given as text, a
missing message taken from the code table, a sendTime in ISO 8601 or as an epoch number)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-14 10:00:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("receipt", schema=None) as batch_op:
        batch_op.add_column(sa.Column("coerced", sa.Text(), nullable=True))
    with op.batch_alter_table("reply", schema=None) as batch_op:
        batch_op.add_column(sa.Column("coerced", sa.Text(), nullable=True))


def downgrade():
    with op.batch_alter_table("reply", schema=None) as batch_op:
        batch_op.drop_column("coerced")
    with op.batch_alter_table("receipt", schema=None) as batch_op:
        batch_op.drop_column("coerced")
