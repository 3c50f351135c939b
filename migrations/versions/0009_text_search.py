"""Text search over the registered texts of messages and the texts of replies: FTS5 tables
kept by triggers on SQLite, GIN indexes on to_tsvector('simple', text) on PostgreSQL, filled
from the rows already stored

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-15 10:00:00

"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade():
    from app.records import search

    for table in ("message", "reply"):
        search.create(op.get_bind(), table, fill=True)


def downgrade():
    from app.records import search

    for table in ("reply", "message"):
        search.drop(op.get_bind(), table)
