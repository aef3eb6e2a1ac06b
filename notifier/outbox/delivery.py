"""The one switch between a message target and an event target, and both ways of sending.

- a message target (chat, email: anything but ``webhook``) gets one message per operation:
  every pending row of the same (channel, operation) coalesced, in order, rendered with the
  channel's templates (a failing template falls back to the default message, odd stored
  data to a plain list), done under key ``"u<hash of the URL>"``;
- an event target (``webhook``) gets one CloudEvent per event, in order (a failed event
  holds back the operation's later ones), done under ``"u<hash of the URL>:<event id>"``.

:func:`is_event_target` is the only place that tells the two apart. :class:`Delivery` is a
part of :class:`~notifier.outbox.dispatcher.Dispatcher`: it sends and notes what happened
on the rows; the dispatcher paces, bounds each send by the stop, and records.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from notifier.channels.render import (
    Message,
    RenderOptions,
    TemplateError,
    Templates,
    plain_message,
    render_message,
)
from notifier.channels.targets import SendResult, Target
from notifier.config import ChannelConfig, Config
from notifier.errors import error_line
from notifier.model import Event, OperationRecord, event_body
from notifier.outbox.rows import DispatchStats, Row

logger = logging.getLogger("notifier.outbox")  # the log lines keep the module's old name


def is_event_target(target: Target) -> bool:
    """Whether ``target`` takes one event per request (a webhook), not one message."""
    return target.kind == "webhook"


class Delivery:
    """Sending to one target (a part of the Dispatcher)."""

    config: Config
    _templates: dict[str, Templates]
    _reported: set[tuple[str, str]]

    if TYPE_CHECKING:  # provided by the Dispatcher

        def _out_of_time(self) -> bool: ...
        def _pace(self, target: Target) -> bool: ...
        def _defer(self, rows: Sequence[Row], target: Target) -> None: ...
        def _deliver(self, target: Target, rows: Sequence[Row], **message: Any) -> SendResult: ...
        def _mark_done(self, rows: Sequence[Row], keys: Sequence[str]) -> None: ...
        def _report(self, channel: str, stage: str, exc: BaseException) -> None: ...

    def _send(
        self,
        channel: ChannelConfig,
        target: Target,
        rows: list[Row],
        stats: DispatchStats,
    ) -> None:
        """Send the events ``rows`` carry (routed to the channel when they were written)
        to ``target``, the way its kind takes them."""
        if is_event_target(target):
            self._send_webhook(channel, target, rows, stats)
        else:
            self._send_message(channel, target, rows, stats)

    @staticmethod
    def _target_done(target: Target, row: Row) -> bool:
        if is_event_target(target):
            return all(target.done(row.done, event.id) for event in row.events)
        return not row.events or target.done(row.done)

    def _send_message(
        self,
        channel: ChannelConfig,
        target: Target,
        rows: list[Row],
        stats: DispatchStats,
    ) -> None:
        key = target.key()
        waiting = [row for row in rows if not target.done(row.done)]
        if not waiting:
            return
        merged = [event for row in waiting for event in row.events]
        if not merged:  # nothing for this channel (e.g. reassigned): done for this target
            self._mark_done(waiting, [key] * len(waiting))
            return
        if self._out_of_time():
            return
        if not self._pace(target):
            self._defer(waiting, target)
            return
        record = next((row.record for row in reversed(waiting) if row.record is not None), None)
        options = target.render_options(channel.timezone)
        try:
            message = self._render(channel, merged, record, options)
        except Exception as exc:  # even the plain fallback failed: the content cannot be sent
            reason = f"{target.safe_url}: cannot render this content: {error_line(exc, 500)}"
            self._report(channel.name, "rendering", exc)
            for row in waiting:
                row.attempted = True
                row.errors.append(reason)
                row.permanent = reason
            return
        alternatives = self._alternatives(channel, target, merged, record, options)
        for row in waiting:
            row.attempted = True
        stats.messages += 1
        stats.channel(channel.name).messages += 1
        result = self._deliver(
            target,
            waiting,
            title=message.title,
            body=message.body,
            notify_type=message.notify_type,
            body_format=message.format,
            alternatives=alternatives,
        )
        if result.ok:
            self._mark_done(waiting, [key] * len(waiting))
        elif not waiting[0].interrupted:
            error = f"{target.safe_url}: {result.error}"
            logger.warning("channel %s: delivery failed: %s", channel.name, error)
            for row in waiting:
                row.errors.append(error)

    def _alternatives(
        self,
        channel: ChannelConfig,
        target: Target,
        merged: Sequence[Event],
        record: OperationRecord | None,
        options: RenderOptions,
    ) -> dict[str, str]:
        """The other formats the target's sender wants (email: the plain-text part), each
        rendered from the same events, with the channel's templates where they render."""
        result: dict[str, str] = {}
        for fmt in target.alternatives:
            if fmt == options.format:
                continue
            result[fmt] = self._render(channel, merged, record, options.alternative(fmt)).body
        return result

    def _render(
        self,
        channel: ChannelConfig,
        events: Sequence[Event],
        record: OperationRecord | None,
        options: RenderOptions,
    ) -> Message:
        """The channel's message; a failing template falls back to the default message, and
        a default message that fails on odd stored data to a plain list of the events."""
        try:
            try:
                return render_message(events, record, options, self._templates_for(channel))
            except TemplateError as exc:
                if (channel.name, str(exc)) not in self._reported:
                    self._reported.add((channel.name, str(exc)))
                    logger.warning(
                        "channel %s: %s; sending the default message instead (reported once "
                        "per kind of failure)",
                        channel.name,
                        exc,
                    )
                return render_message(events, record, options)
        except Exception as exc:  # any content problem: the plain fallback
            self._report(channel.name, "rendering", exc)
            return plain_message(events, options)

    def _send_webhook(
        self,
        channel: ChannelConfig,
        target: Target,
        rows: list[Row],
        stats: DispatchStats,
    ) -> None:
        blocked: str | None = None
        for row in rows:
            for event in row.events:
                key = target.key(event.id)
                if target.done(row.done, event.id):
                    continue
                if blocked is not None:
                    # Keep the operation's events in order: later ones wait with the failed one.
                    row.attempted = True
                    row.errors.append(blocked)
                    break
                if self._out_of_time():
                    return
                if not self._pace(target):
                    self._defer([row], target)
                    break
                row.attempted = True
                stats.messages += 1
                stats.channel(channel.name).messages += 1
                try:
                    body = event_body(event)
                except Exception as exc:  # odd stored data: this event can never be sent
                    reason = (
                        f"{target.safe_url}: cannot encode event {event.id}: {error_line(exc, 500)}"
                    )
                    self._report(channel.name, "encoding", exc)
                    row.attempted = True
                    row.errors.append(reason)
                    row.permanent = reason
                    break
                result = self._deliver(
                    target,
                    [row],
                    title=str(event.type),
                    body=body,
                    notify_type="info",
                    body_format="text",
                    event_id=event.id,
                )
                if result.ok:
                    self._mark_done([row], [key])
                    continue
                if row.interrupted:
                    return
                error = f"{target.safe_url}: {result.error}"
                logger.warning("channel %s: webhook failed: %s", channel.name, error)
                row.errors.append(error)
                blocked = f"{target.safe_url}: waiting for an earlier event of this operation"
                break

    def _templates_for(self, channel: ChannelConfig) -> Templates | None:
        if not channel.title and not channel.body:
            return None
        if channel.name not in self._templates:
            self._templates[channel.name] = Templates(title=channel.title, body=channel.body)
        return self._templates[channel.name]
