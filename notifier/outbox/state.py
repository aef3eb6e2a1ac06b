"""An outbox row's state machine after a dispatch tried it: pure (no clock, no store).

Given what the dispatch did with a row (:class:`Attempt`), the ``[delivery]`` settings and
``now_ms``, :func:`next_state` says the row's new state and the columns to write:

==========================================  ========================================
what happened                               new state
==========================================  ========================================
every target has it                         ``sent`` (``last_error`` cleared)
not tried, only deferred by pacing          ``deferred``: due at ``deferred_until``
not tried, or a stop cut its send short     unchanged (bookkeeping only, if any)
tried, no error, deferred                   ``deferred``: due at ``deferred_until``
tried, a permanent failure                  ``dead`` at once
tried, ``max_attempts`` or ``max_age``      ``dead``
tried, failed otherwise                     ``pending`` (retry) after a backoff
==========================================  ========================================

The retry's delay is :func:`notifier.backoff.compute_backoff` with "equal jitter", never
earlier than a pacing deferral; ``draw`` is called only for it (one random draw per retry).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from notifier.backoff import compute_backoff
from notifier.config import DeliveryConfig
from notifier.store.outbox_queries import DEAD, PENDING, SENT

#: A row postponed by pacing (no attempt counted).
DEFERRED: Final = "deferred"
#: The row's state stays; only its bookkeeping (``done_targets``) is written.
UNCHANGED: Final = ""
#: Longest ``last_error`` stored.
ERROR_MAX: Final = 2000


@dataclass(frozen=True)
class Attempt:
    """What one dispatch did with a row."""

    attempts: int  # attempts counted before this dispatch
    created_at: int  # ms; max_age counts from here
    complete: bool = False  # every target of its channel has what the row carries
    attempted: bool = False
    errors: Sequence[str] = ()
    deferred_until: int | None = None  # ms; pacing postponed a send
    interrupted: bool = False  # a send was cut short by the stop
    permanent: str | None = None  # why it can never be delivered as stored
    unsaved: bool = False  # a success was noted for it during this dispatch


@dataclass(frozen=True)
class Transition:
    """The new state (a :class:`~notifier.outbox.DispatchStats` key) and what to write.

    ``dead_reason`` (``"permanent"``, ``"max_age reached"`` or ``"<n> attempts"``) and
    ``error`` are set when the row just became dead, for the log line."""

    state: str
    values: dict[str, Any] = field(default_factory=dict)
    dead_reason: str | None = None
    error: str | None = None


def next_state(
    row: Attempt, delivery: DeliveryConfig, now_ms: int, draw: Callable[[], float]
) -> Transition | None:
    """The row's transition, or None when nothing was tried and nothing is to be written."""
    if row.complete:
        return Transition(SENT, {"state": SENT, "last_error": None})
    if not row.attempted and row.deferred_until is not None:
        return Transition(DEFERRED, {"next_attempt_at": row.deferred_until})
    if not row.attempted or (row.interrupted and not row.errors):
        # Pulled into the bundle but nothing was tried for it, or only its bookkeeping changed.
        return Transition(UNCHANGED) if row.unsaved else None
    attempts = row.attempts + 1
    too_old = now_ms - row.created_at >= delivery.max_age * 1000
    error = "; ".join(dict.fromkeys(row.errors))[:ERROR_MAX] or None
    if row.deferred_until is not None and not row.errors:
        return Transition(DEFERRED, {"next_attempt_at": row.deferred_until})
    if row.permanent is not None:
        last_error = (
            f"permanent failure, not retried: {row.permanent} "
            "(retrying cannot help; `outbox retry` after a fix)"
        )[:ERROR_MAX]
        return Transition(
            DEAD,
            {"state": DEAD, "attempts": attempts, "last_error": last_error},
            dead_reason="permanent",
            error=row.permanent,
        )
    if attempts >= delivery.max_attempts or too_old:
        reason = "max_age reached" if too_old else f"{attempts} attempts"
        last_error = f"dead after {reason}: {error or 'no detail'}"[:ERROR_MAX]
        return Transition(
            DEAD,
            {"state": DEAD, "attempts": attempts, "last_error": last_error},
            dead_reason=reason,
            error=error,
        )
    delay = compute_backoff(
        attempts,
        base=delivery.backoff_initial,
        cap=delivery.backoff_max,
        jitter="equal",
        draw=draw(),
    )
    next_at = now_ms + int(delay * 1000)
    if row.deferred_until is not None:
        next_at = max(next_at, row.deferred_until)
    return Transition(
        PENDING, {"attempts": attempts, "next_attempt_at": next_at, "last_error": error}
    )


def backoff_seconds(
    attempts: int, initial: float, maximum: float, rand: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, capped."""
    if attempts <= 0:
        return 0.0
    return compute_backoff(attempts, base=initial, cap=maximum, jitter="equal", draw=rand())
