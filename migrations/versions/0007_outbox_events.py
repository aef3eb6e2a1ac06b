"""Outbox: the events routed to the row's channel, decided once when the events are recorded.

``outbox.event_ids``: a JSON list of the ids of the group's events that the channel's
filters admitted when the cycle wrote the row (``notifier.cycle.group``). The dispatcher
sends exactly those events, so a later config reload that changes the channel's filters
does not change what a pending row carries. ``outbox reassign OLD NEW`` keeps of them what
NEW's filters admit.

NULL for rows written before this revision: such a row keeps the old behaviour, its events
are routed through the channel's filters as configured when it is dispatched.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("event_ids", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("event_ids")
