"""Hourly analytics rollups, filled from the messages already stored

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 19:40:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _latency_bins(table, period):
    op.create_table(
        table,
        sa.Column(period, sa.DateTime(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("code", sa.Integer(), nullable=False),
        sa.Column("anomaly", sa.Boolean(), nullable=False),
        sa.Column("bin", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("low", sa.Float(), nullable=False),
        sa.Column("high", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint(period, "kind", "status", "code", "anomaly", "bin"),
        sqlite_with_rowid=False,
    )


def upgrade():
    op.create_table(
        "outcome_hour",
        sa.Column("hour", sa.DateTime(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("code", sa.Integer(), nullable=False),
        sa.Column("anomaly", sa.Boolean(), nullable=False),
        sa.Column("currency", sa.String(length=16), nullable=False),
        sa.Column("rate_type", sa.String(length=32), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("delivered", sa.BigInteger(), nullable=False),
        sa.Column("seen", sa.BigInteger(), nullable=False),
        sa.Column("priced", sa.BigInteger(), nullable=False),
        sa.Column(
            "local_price", sa.Numeric(precision=24, scale=6, asdecimal=False), nullable=False
        ),
        sa.Column(
            "original_price", sa.Numeric(precision=24, scale=6, asdecimal=False), nullable=False
        ),
        sa.PrimaryKeyConstraint("hour", "status", "code", "anomaly", "currency", "rate_type"),
        sqlite_with_rowid=False,
    )
    for table, period in (("latency_hour", "hour"), ("latency_day", "day")):
        _latency_bins(table, period)
    # The messages stored before this revision count in the rollups too.
    from app.records import rollup

    rollup.fill(op.get_bind(), only=("outcome_hour", "latency_hour", "latency_day"))


def downgrade():
    op.drop_table("latency_day")
    op.drop_table("latency_hour")
    op.drop_table("outcome_hour")
