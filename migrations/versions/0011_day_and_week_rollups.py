"""Outcomes per day and latency bins per week, filled from the messages already stored

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 22:00:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "outcome_day",
        sa.Column("day", sa.DateTime(), nullable=False),
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
        sa.PrimaryKeyConstraint("day", "status", "code", "anomaly", "currency", "rate_type"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "latency_week",
        sa.Column("week", sa.DateTime(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("code", sa.Integer(), nullable=False),
        sa.Column("anomaly", sa.Boolean(), nullable=False),
        sa.Column("bin", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("low", sa.Float(), nullable=False),
        sa.Column("high", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("week", "kind", "status", "code", "anomaly", "bin"),
        sqlite_with_rowid=False,
    )
    # The messages stored before this revision count in them too.
    from app.records import rollup

    rollup.fill(op.get_bind(), only=("outcome_day", "latency_week"))


def downgrade():
    op.drop_table("latency_week")
    op.drop_table("outcome_day")
