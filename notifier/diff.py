"""The pure diff: the previous snapshot of a record and its current form in, events out.

No I/O and no clock: the same inputs always give the same events with the same ids.
Steps are visited in ``serial_num`` order, sub-steps likewise within their step. The
operation's own status event comes first when it starts (waiting/processing) and last when
it ends, so a reader sees a finished step before the operation that it finished.
"""

from __future__ import annotations

from notifier.model import (
    TERMINAL_STATUSES,
    Event,
    EventType,
    OperationRecord,
    Step,
    SubStep,
    event_id,
)


def diff_record(
    source: str, previous: OperationRecord | None, current: OperationRecord
) -> list[Event]:
    """Events that turn ``previous`` into ``current`` (``previous`` None: a new operation)."""
    make = _EventFactory(source, current)

    if previous is None:
        return [
            make(
                EventType.OPERATION_CREATED,
                to_status=current.status,
                detail=current.desc,
                message=current.message,
                started_at=_operation_start(current),
            )
        ]

    step_events: list[Event] = []
    for step in current.steps:
        old_step = previous.step(step.name)
        started, ended = _step_times(step)
        if old_step is None:
            step_events.append(
                make(
                    EventType.STEP_CREATED,
                    step=step.name,
                    to_status=step.status,
                    detail=step.detail,
                    started_at=started,
                    ended_at=ended,
                )
            )
        elif old_step.status != step.status:
            step_events.append(
                make(
                    EventType.STEP_STATUS_CHANGED,
                    step=step.name,
                    from_status=old_step.status,
                    to_status=step.status,
                    detail=step.detail,
                    started_at=started,
                    ended_at=ended,
                )
            )
        for sub in step.sub_steps:
            old_sub = old_step.sub_step(sub.name) if old_step is not None else None
            if old_sub is None:
                step_events.append(make.substep(EventType.SUBSTEP_CREATED, step, sub, None))
            elif old_sub.status != sub.status:
                step_events.append(
                    make.substep(EventType.SUBSTEP_STATUS_CHANGED, step, sub, old_sub.status)
                )

    if previous.status == current.status:
        return step_events
    operation_event = make(
        EventType.OPERATION_STATUS_CHANGED,
        from_status=previous.status,
        to_status=current.status,
        detail=current.desc,
        message=current.message,
        started_at=_operation_start(current),
        ended_at=_operation_end(current),
    )
    if current.status in TERMINAL_STATUSES:
        return [*step_events, operation_event]
    return [operation_event, *step_events]


class _EventFactory:
    """Builds the events of one record, each with its stable id."""

    def __init__(self, source: str, current: OperationRecord) -> None:
        self.source = source
        self.current = current
        self.summary = current.summary()

    def __call__(
        self,
        kind: EventType,
        *,
        step: str | None = None,
        substep: str | None = None,
        from_status: str | None = None,
        to_status: str | None = None,
        detail: str | None = None,
        message: tuple[str, ...] = (),
        started_at: int = 0,
        ended_at: int = 0,
    ) -> Event:
        current = self.current
        return Event(
            id=event_id(
                self.source,
                current.operation_id,
                step,
                substep,
                from_status,
                to_status,
                current.record_time,
            ),
            type=kind,
            source=self.source,
            operation_id=current.operation_id,
            record_time=current.record_time,
            operation=self.summary,
            step=step,
            substep=substep,
            from_status=from_status,
            to_status=to_status,
            detail=detail,
            message=message,
            started_at=started_at,
            ended_at=ended_at,
        )

    def substep(self, kind: EventType, step: Step, sub: SubStep, from_status: str | None) -> Event:
        return self(
            kind,
            step=step.name,
            substep=sub.name,
            from_status=from_status,
            to_status=sub.status,
            detail=sub.detail,
            message=sub.message,
            started_at=sub.start_time,
            ended_at=sub.end_time,
        )


def _step_times(step: Step) -> tuple[int, int]:
    """A step's start and end: the earliest sub-step start, the latest end once all ended;
    a failed or stopped step ends with the latest sub-step that ended (those after the
    failure never run, so they never end)."""
    starts = [sub.start_time for sub in step.sub_steps if sub.start_time > 0]
    ends = [sub.end_time for sub in step.sub_steps]
    started = min(starts) if starts else 0
    ended = max(ends) if ends and all(end > 0 for end in ends) else 0
    if not ended and step.status in TERMINAL_STATUSES:
        ended = max((end for end in ends if end > 0), default=0)
    return started, ended


def _operation_start(record: OperationRecord) -> int:
    starts = [_step_times(step)[0] for step in record.steps]
    starts = [start for start in starts if start > 0]
    return min(starts) if starts else 0


def _operation_end(record: OperationRecord) -> int:
    if record.status not in TERMINAL_STATUSES:
        return 0
    ends = [sub.end_time for step in record.steps for sub in step.sub_steps if sub.end_time > 0]
    return max(ends) if ends else record.record_time
