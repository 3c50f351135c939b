"""Sign-ins kept server-side; webhook signatures already used (replays are refused);
never-applied bodies deleted for REJECTED_KEEP_BYTES, per minute

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 05:10:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "retention_drop",
        sa.Column("minute", sa.DateTime(), nullable=False),
        sa.Column("bodies", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("minute"),
    )
    op.create_table(
        "user_session",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["app_user.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("user_session", schema=None) as batch_op:
        batch_op.create_index("ix_user_session_user", ["user_id", "ended_at"], unique=False)

    op.create_table(
        "webhook_signature",
        sa.Column("sign", sa.String(length=64), nullable=False),
        sa.Column("access_key", sa.String(length=128), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("sign"),
    )
    with op.batch_alter_table("webhook_signature", schema=None) as batch_op:
        batch_op.create_index("ix_webhook_signature_seen_at", ["seen_at"], unique=False)


def downgrade():
    with op.batch_alter_table("webhook_signature", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_signature_seen_at")
    op.drop_table("webhook_signature")
    with op.batch_alter_table("user_session", schema=None) as batch_op:
        batch_op.drop_index("ix_user_session_user")
    op.drop_table("user_session")
    op.drop_table("retention_drop")
