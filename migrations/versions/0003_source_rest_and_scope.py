"""Source state: credential rest and watched scope.

``rest_until``: after a refused AK/SK signature (five in a row lock the key for 5 minutes)
or a refused IAM login, no request is sent before it, also across restarts of the service
and between ``poll`` invocations.

``scope``: a fingerprint of what the source watches (endpoint, project, filters). When it
changes, operations seen for the first time are stored silently, like a first poll,
instead of being reported as created.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("source_state") as batch:
        batch.add_column(sa.Column("rest_until", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("scope", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("source_state") as batch:
        batch.drop_column("scope")
        batch.drop_column("rest_until")
