"""The spool's drained-up-to marks, and which spool record a raw body came from

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 12:00:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "spool_mark",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("drained_upto", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    # A plain ALTER on every database: receipts, replies and activity point at raw_body, so
    # SQLite's copy-and-rename way of altering it would trip their foreign keys.
    op.add_column("raw_body", sa.Column("spooled", sa.String(length=200), nullable=True))


def downgrade():
    op.execute("ALTER TABLE raw_body DROP COLUMN spooled")
    op.drop_table("spool_mark")
