"""Rollups per tag for the campaigns pages, filled from the messages already stored

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 11:00:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "tag_day",
        sa.Column("tag", sa.String(length=128), nullable=False),
        sa.Column("day", sa.DateTime(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("code", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=16), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("delivered", sa.BigInteger(), nullable=False),
        sa.Column("seen", sa.BigInteger(), nullable=False),
        sa.Column("replied", sa.BigInteger(), nullable=False),
        sa.Column("replies", sa.BigInteger(), nullable=False),
        sa.Column("priced", sa.BigInteger(), nullable=False),
        sa.Column("local_price", sa.Numeric(precision=24, scale=6), nullable=False),
        sa.Column("original_price", sa.Numeric(precision=24, scale=6), nullable=False),
        sa.PrimaryKeyConstraint("tag", "status", "code", "currency", "day"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "tag_hour",
        sa.Column("tag", sa.String(length=128), nullable=False),
        sa.Column("hour", sa.DateTime(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("delivered", sa.BigInteger(), nullable=False),
        sa.Column("seen", sa.BigInteger(), nullable=False),
        sa.Column("replied", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tag", "hour", "status"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "tag_latency",
        sa.Column("tag", sa.String(length=128), nullable=False),
        sa.Column("day", sa.DateTime(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("bin", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("low", sa.Float(), nullable=False),
        sa.Column("high", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("tag", "kind", "bin", "day"),
        sqlite_with_rowid=False,
    )
    # The tagged messages stored before this revision count in the rollups too.
    from app.records import tag_rollup

    tag_rollup.fill(op.get_bind())


def downgrade():
    op.drop_table("tag_latency")
    op.drop_table("tag_hour")
    op.drop_table("tag_day")
