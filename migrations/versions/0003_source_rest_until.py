"""Source state: remember until when a source's credentials must rest.

After a refused AK/SK signature (five in a row lock the key for 5 minutes) or a refused
IAM login, no request is sent before ``rest_until``, also across restarts of the service
and between ``poll`` invocations.

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


def downgrade() -> None:
    with op.batch_alter_table("source_state") as batch:
        batch.drop_column("rest_until")
