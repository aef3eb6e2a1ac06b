"""Table definitions (SQLAlchemy Core). Alembic migrations are the only way they reach a
database; ``tests/test_migrations.py`` checks the migrated schema matches these tables.

Times written by the service are integer milliseconds since the epoch (UTC); API times are
integer nanoseconds and kept as ``BigInteger``.

Values from the API never hit a column limit (PostgreSQL enforces them, SQLite does not):
statuses and other free text are ``Text``; operation ids are ``String(OPERATION_ID_MAX)``
(a key column, so MySQL can index it), and the parser skips a record with a longer id with
one warning instead of failing the write (migration 0004).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from notifier.model import OPERATION_ID_MAX

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: Latest snapshot of every operation record seen, per source.
snapshots = Table(
    "snapshots",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("operation_id", String(OPERATION_ID_MAX), primary_key=True),
    Column("content_hash", String(64), nullable=False),
    Column("data", Text, nullable=False),  # normalised record JSON (OperationRecord.to_dict)
    Column("status", Text, nullable=False),
    Column("record_time", BigInteger, nullable=False),
    Column("first_seen", BigInteger, nullable=False),
    Column("last_seen", BigInteger, nullable=False),
    Column("gone_at", BigInteger, nullable=True),  # set when missing from a complete response
    # hash of the record as the API sent it: an unchanged raw record is skipped unparsed
    Column("raw_hash", String(64), nullable=True),
)

#: Per-source polling state: baseline done, last poll, failures, health reporting.
source_state = Table(
    "source_state",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("baseline_at", BigInteger, nullable=True),  # first successful poll
    Column("last_poll_at", BigInteger, nullable=True),
    Column("last_success_at", BigInteger, nullable=True),
    Column("consecutive_failures", Integer, nullable=False, default=0),
    Column("failing_since", BigInteger, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("unreachable_reported", Boolean, nullable=False, default=False),
    # no request before this time: credentials were refused (AK/SK lock-out protection)
    Column("rest_until", BigInteger, nullable=True),
    # fingerprint of endpoint, project and filters: a change starts a new silent baseline
    Column("scope", String(64), nullable=True),
    # last successful complete listing (incremental mode runs one every full_poll_interval)
    Column("last_full_at", BigInteger, nullable=True),
)

#: A group of events to deliver together: one operation's changes in one cycle.
event_groups = Table(
    "event_groups",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("source", String(64), nullable=False),
    Column("operation_id", String(OPERATION_ID_MAX), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("record", Text, nullable=True),  # record JSON at that cycle (the step tree)
)

#: Every event recorded, oldest first by ``seq``.
events = Table(
    "events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("group_id", ForeignKey("event_groups.id"), nullable=False),
    Column("source", String(64), nullable=False),
    Column("operation_id", String(OPERATION_ID_MAX), nullable=False),
    Column("type", String(64), nullable=False),
    Column("record_time", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("payload", Text, nullable=False),  # Event.to_dict() JSON
    Index("ix_events_operation", "source", "operation_id"),
    Index("ix_events_group", "group_id"),
)

#: One delivery per (event group, channel): written with the events, sent by the dispatcher.
outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("group_id", ForeignKey("event_groups.id"), nullable=False),
    Column("channel", String(64), nullable=False),
    Column("state", String(16), nullable=False, default="pending"),  # pending|sent|dead
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", BigInteger, nullable=False),
    Column("next_attempt_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("last_error", Text, nullable=True),
    Column("done_targets", Text, nullable=False, default="[]"),  # JSON list of target keys sent
    Column("retried_at", BigInteger, nullable=True),  # last manual retry; max_age counts from it
    # a dispatcher's claim (store/claims.py): only the claim's owner sends or records the row
    Column("claim_token", String(64), nullable=True),
    Column("claim_expires_at", BigInteger, nullable=True),  # database clock, milliseconds
    # JSON list of the ids of the group's events routed to this channel when the row was
    # written (routing decided once); NULL: a row older than 0007, routed at dispatch
    Column("event_ids", Text, nullable=True),
    UniqueConstraint("group_id", "channel", name="uq_outbox_group_channel"),
    Index("ix_outbox_due", "state", "next_attempt_at"),
)

#: One lease per source (store/lease.py): the only instance that may poll it. ``epoch`` is
#: the fencing token, bumped on every takeover; times are the database's clock in ms.
leases = Table(
    "leases",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("acquired_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)

#: Every running ``bcs-notifier run`` on a shared database, refreshed with its leases.
instances = Table(
    "instances",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", BigInteger, nullable=False),
    Column("heartbeat_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)

#: Durations of finished, successful steps (``substep`` "") and sub-steps, learned for
#: stall detection; the newest ``notifier.stalls.MAX_SAMPLES`` per key are kept.
step_durations = Table(
    "step_durations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("resource_type", String(64), nullable=False),
    Column("operation_type", String(64), nullable=False),
    Column("step", Text, nullable=False),
    Column("substep", Text, nullable=False),
    Column("operation_id", String(OPERATION_ID_MAX), nullable=False),
    Column("source", String(64), nullable=False),
    Column("duration_ns", BigInteger, nullable=False),
    Column("ended_at", BigInteger, nullable=False),  # API time (ns) the step ended
    UniqueConstraint("operation_id", "step", "substep", name="uq_step_durations_sample"),
    Index("ix_step_durations_key", "resource_type", "operation_type", "step", "substep"),
)

#: Stalls alerted (one row per episode of a step or sub-step), so a restart never re-sends.
stall_alerts = Table(
    "stall_alerts",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("operation_id", String(OPERATION_ID_MAX), primary_key=True),
    Column("step", Text, primary_key=True),
    Column("substep", Text, primary_key=True),  # "" : the step
    Column("episode", Integer, primary_key=True),
    Column("started_at", BigInteger, nullable=False),
    Column("level", Integer, nullable=False),  # 0 alert, 1 and 2 the reminders
    Column("threshold_ns", BigInteger, nullable=False),
    Column("p95_ns", BigInteger, nullable=False),
    Column("samples", Integer, nullable=False),
    Column("alerted_at", BigInteger, nullable=False),  # API time (ns) of the last alert
    Column("ended_at", BigInteger, nullable=True),  # API time (ns) the step moved
    Index("ix_stall_alerts_open", "source", "ended_at"),
)
