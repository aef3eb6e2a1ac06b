"""Which channel gets which event (pure: config values and events in, booleans out)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

from notifier.config import ChannelConfig
from notifier.model import Event


def event_matches(channel: ChannelConfig, event: Event) -> bool:
    """True when every filter of ``channel`` admits ``event``.

    ``events`` are globs over the event type; ``statuses`` admit events whose new status is
    listed (events without a new status, like ``source.*``, pass); the other filters
    compare the operation's fields, and pass events that carry no operation.
    """
    if not any(fnmatchcase(str(event.type), pattern) for pattern in channel.events):
        return False
    if channel.statuses and event.to_status is not None and event.to_status not in channel.statuses:
        return False
    if channel.sources and event.source not in channel.sources:
        return False
    operation = event.operation
    if not operation:
        return True
    return (
        _admits(
            channel.blockchains, operation.get("blockchain_id"), operation.get("blockchain_name")
        )
        and _admits(channel.resource_types, operation.get("resource_type"))
        and _admits(channel.operation_types, operation.get("operation_type"))
    )


def _admits(allowed: Sequence[str], *values: object) -> bool:
    return not allowed or any(value in allowed for value in values if value)


def matching_events(channel: ChannelConfig, events: Iterable[Event]) -> list[Event]:
    return [event for event in events if event_matches(channel, event)]


def routes(
    channels: Iterable[ChannelConfig], events: Sequence[Event]
) -> dict[str, tuple[str, ...]]:
    """The one routing decision for one event group, made when its events are recorded:
    channel name -> ids of the ``events`` that channel's filters admit, in order (a channel
    that admits none is left out). The outbox row of each channel stores its ids."""
    routed: dict[str, tuple[str, ...]] = {}
    for channel in channels:
        admitted = tuple(event.id for event in events if event_matches(channel, event))
        if admitted:
            routed[channel.name] = admitted
    return routed


def channels_for(channels: Iterable[ChannelConfig], events: Sequence[Event]) -> list[str]:
    """Names of the channels that get at least one of ``events`` (one event group)."""
    return list(routes(channels, events))
