"""Incremental polling: the raw record hash and the last complete listing.

``snapshots.raw_hash``: a hash of the record exactly as the API sent it (its JSON, keys
sorted). A complete listing skips a record whose raw hash, ``record_time`` and status are
those stored, before building any model object; the service rebuilds its in-memory index of
these from this column at start. NULL for snapshots written before this revision: such a
record is parsed once more and gets its hash.

``source_state.last_full_at``: when the last complete listing of the source succeeded
(milliseconds); in ``poll_mode = "incremental"`` the next one runs ``full_poll_interval``
seconds later.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.add_column(sa.Column("raw_hash", sa.String(64), nullable=True))
    with op.batch_alter_table("source_state") as batch:
        batch.add_column(sa.Column("last_full_at", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("source_state") as batch:
        batch.drop_column("last_full_at")
    with op.batch_alter_table("snapshots") as batch:
        batch.drop_column("raw_hash")
