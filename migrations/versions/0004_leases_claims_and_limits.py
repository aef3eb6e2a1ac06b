"""Scale-out: source leases, instances, outbox claims; column limits that fit the API.

``leases``: one row per source (holder, epoch, expiry); the epoch is the fencing token a
poll's transaction checks last. ``instances``: every running service on the database.
``outbox.claim_token`` / ``claim_expires_at``: a dispatcher's claim on a due row.

Column limits: PostgreSQL enforces ``VARCHAR(n)`` (SQLite does not), so an
``operation_status`` over 32 characters or an ``operation_id`` over 128 failed every later
poll of the source. Statuses become ``TEXT``, operation ids ``VARCHAR(512)``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

OPERATION_ID_MAX = 512


def upgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.alter_column(
            "operation_id",
            existing_type=sa.String(128),
            type_=sa.String(OPERATION_ID_MAX),
            existing_nullable=False,
        )
        batch.alter_column(
            "status", existing_type=sa.String(32), type_=sa.Text(), existing_nullable=False
        )
    for table in ("event_groups", "events"):
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                "operation_id",
                existing_type=sa.String(128),
                type_=sa.String(OPERATION_ID_MAX),
                existing_nullable=False,
            )
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("claim_token", sa.String(64), nullable=True))
        batch.add_column(sa.Column("claim_expires_at", sa.BigInteger(), nullable=True))
    op.create_table(
        "leases",
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("acquired_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("source", name="pk_leases"),
    )
    op.create_table(
        "instances",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("heartbeat_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_instances"),
    )


def downgrade() -> None:
    op.drop_table("instances")
    op.drop_table("leases")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("claim_expires_at")
        batch.drop_column("claim_token")
    for table in ("events", "event_groups"):
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                "operation_id",
                existing_type=sa.String(OPERATION_ID_MAX),
                type_=sa.String(128),
                existing_nullable=False,
            )
    with op.batch_alter_table("snapshots") as batch:
        batch.alter_column(
            "status", existing_type=sa.Text(), type_=sa.String(32), existing_nullable=False
        )
        batch.alter_column(
            "operation_id",
            existing_type=sa.String(OPERATION_ID_MAX),
            type_=sa.String(128),
            existing_nullable=False,
        )
