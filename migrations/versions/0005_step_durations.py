"""Stall detection: learned step durations and the stalls alerted.

``step_durations``: one row per finished, successful step or sub-step of an operation (its
duration in API nanoseconds), the newest 200 per (resource_type, operation_type, step,
sub-step) kept. ``stall_alerts``: one row per stall episode with the last alert level sent,
so a restart never sends a stall again.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

OPERATION_ID_MAX = 512  # as migration 0004 (notifier.model.OPERATION_ID_MAX)


def upgrade() -> None:
    op.create_table(
        "step_durations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("operation_type", sa.String(64), nullable=False),
        sa.Column("step", sa.Text(), nullable=False),
        sa.Column("substep", sa.Text(), nullable=False),
        sa.Column("operation_id", sa.String(OPERATION_ID_MAX), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("duration_ns", sa.BigInteger(), nullable=False),
        sa.Column("ended_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_step_durations"),
        sa.UniqueConstraint("operation_id", "step", "substep", name="uq_step_durations_sample"),
    )
    op.create_index(
        "ix_step_durations_key",
        "step_durations",
        ["resource_type", "operation_type", "step", "substep"],
    )
    op.create_table(
        "stall_alerts",
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("operation_id", sa.String(OPERATION_ID_MAX), nullable=False),
        sa.Column("step", sa.Text(), nullable=False),
        sa.Column("substep", sa.Text(), nullable=False),
        sa.Column("episode", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("threshold_ns", sa.BigInteger(), nullable=False),
        sa.Column("p95_ns", sa.BigInteger(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("alerted_at", sa.BigInteger(), nullable=False),
        sa.Column("ended_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint(
            "source", "operation_id", "step", "substep", "episode", name="pk_stall_alerts"
        ),
    )
    op.create_index("ix_stall_alerts_open", "stall_alerts", ["source", "ended_at"])


def downgrade() -> None:
    op.drop_index("ix_stall_alerts_open", table_name="stall_alerts")
    op.drop_table("stall_alerts")
    op.drop_index("ix_step_durations_key", table_name="step_durations")
    op.drop_table("step_durations")
