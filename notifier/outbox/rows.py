"""What a dispatch counts (:class:`DispatchStats`) and the rows it works on (:class:`Row`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from notifier.outbox.state import DEFERRED
from notifier.store.outbox_queries import DEAD, PENDING, SENT, StoredRow


@dataclass
class ChannelStats:
    sent: int = 0
    failed: int = 0
    dead: int = 0
    deferred: int = 0
    messages: int = 0  # requests made (messages or webhook events), successful or not


@dataclass
class DispatchStats:
    """What one :meth:`Dispatcher.dispatch_due` did (counts of outbox rows)."""

    sent: int = 0
    failed: int = 0
    dead: int = 0
    deferred: int = 0
    messages: int = 0
    channels: dict[str, ChannelStats] = field(default_factory=dict)

    def channel(self, name: str) -> ChannelStats:
        return self.channels.setdefault(name, ChannelStats())

    def count(self, channel: str, state: str, by: int = 1) -> None:
        stats = self.channel(channel)
        attribute = {SENT: "sent", DEAD: "dead", PENDING: "failed", DEFERRED: "deferred"}[state]
        setattr(stats, attribute, getattr(stats, attribute) + by)
        setattr(self, attribute, getattr(self, attribute) + by)

    @property
    def handled(self) -> int:
        return self.sent + self.failed + self.dead + self.deferred


@dataclass
class Row(StoredRow):
    """A claimed row and what this dispatch did with it so far."""

    errors: list[str] = field(default_factory=list)
    deferred_until: int | None = None
    attempted: bool = False
    interrupted: bool = False  # a send was cut short by the stop: the row stays as it was
    #: why this row can never be delivered as stored (retrying cannot help): dead at once
    permanent: str | None = None
