"""Stall detection policy (pure): usual durations, thresholds, which stalls are due.

A *sample* is the duration of one finished, successful step or sub-step, keyed by
(resource_type, operation_type, step, sub-step); a step's duration runs from its first
sub-step's ``start_time`` to its last sub-step's ``end_time``. The store keeps the newest
:data:`MAX_SAMPLES` per key.

Percentiles are **nearest-rank**: the p-th percentile of n sorted durations is the one at
rank ``ceil(p * n / 100)`` (1-based), so it is always one of the observed durations; the
median is the 50th percentile in the same sense (the lower middle value for an even n).

A step or sub-step that has been ``processing`` for longer than
``max(stall_floor, stall_factor x p95)`` of at least ``stall_min_samples`` samples is
stalled; elapsed time is measured on the API's clock (:func:`api_now_ns`). One alert per
stall, optionally reminders at 2x and 4x the threshold, never more. A step whose running
sub-step is stalled is reported through that sub-step only. A stall ends when its step
moves (another status, or a new ``start_time``); a later stall of the same step in the same
operation is a new *episode* with new event ids.

No I/O: plain values in, plain values out.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final

from notifier.model import Event, EventType, OperationRecord, StallFacts, Step, event_id

NS: Final = 1_000_000_000
#: Samples kept per key (the newest by end time).
MAX_SAMPLES: Final = 200
#: The alert and its reminders, as multiples of the threshold.
ALERT_FACTORS: Final = (1, 2, 4)
#: A duration longer than this is not a plausible sample (a bad API value): not learned.
MAX_DURATION_NS: Final = 30 * 86_400 * NS
PROCESSING: Final = "processing"
#: Steps and sub-steps with longer names (a bad API value) are neither learned nor watched:
#: the store indexes the names, and PostgreSQL's index entries are bounded.
MAX_NAME_LENGTH: Final = 512
#: Stored alerts are dropped this long after their step moved (or after their last alert):
#: only open stalls and the episode count of running operations need them. A stall seen
#: again after that has the ids it had, which the events table still knows.
ALERT_RETENTION_NS: Final = 30 * 86_400 * NS


@dataclass(frozen=True, slots=True, order=True)
class DurationKey:
    """What durations are learned per; ``substep`` "" is the step as a whole."""

    resource_type: str
    operation_type: str
    step: str
    substep: str = ""


@dataclass(frozen=True, slots=True)
class Sample:
    key: DurationKey
    operation_id: str
    duration_ns: int
    ended_at: int


@dataclass(frozen=True, slots=True)
class StallSettings:
    """``[service] stall_*`` (seconds)."""

    factor: float = 2.0
    min_samples: int = 10
    floor_seconds: float = 600.0
    reminders: bool = False


@dataclass(frozen=True, slots=True)
class Usual:
    """What the samples of one key say."""

    samples: int
    median_ns: int
    p95_ns: int
    #: None: fewer than ``min_samples`` samples, no alert
    threshold_ns: int | None


def percentile(values: Iterable[int], percent: int) -> int:
    """Nearest-rank percentile (``percent`` in 1..100) of a non-empty collection."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    if not 0 < percent <= 100:
        raise ValueError("percent must be in 1..100")
    rank = -(-percent * len(ordered) // 100)  # ceil without floats
    return ordered[rank - 1]


def threshold_ns(p95_ns: int, settings: StallSettings) -> int:
    """``max(stall_floor, stall_factor x p95)`` in nanoseconds."""
    return max(round(settings.floor_seconds * NS), round(settings.factor * p95_ns))


def usual(durations: Sequence[int], settings: StallSettings) -> Usual | None:
    """The usual duration of one key (None without samples)."""
    if not durations:
        return None
    p95 = percentile(durations, 95)
    enough = len(durations) >= settings.min_samples
    return Usual(
        samples=len(durations),
        median_ns=percentile(durations, 50),
        p95_ns=p95,
        threshold_ns=threshold_ns(p95, settings) if enough else None,
    )


# -- learning -----------------------------------------------------------------------------------


def key_of(record: OperationRecord, step: str, substep: str = "") -> DurationKey:
    return DurationKey(record.resource_type, record.operation_type, step, substep)


def _watchable(*names: str) -> bool:
    return all(len(name) <= MAX_NAME_LENGTH for name in names)


def _typed(record: OperationRecord) -> bool:
    """Resource and operation types fit the store's columns (64 characters)."""
    return len(record.resource_type) <= 64 and len(record.operation_type) <= 64


def step_span(step: Step) -> tuple[int, int]:
    """(start, end) of a step from its sub-steps; 0 where not known (yet)."""
    starts = [sub.start_time for sub in step.sub_steps if sub.start_time > 0]
    ends = [sub.end_time for sub in step.sub_steps]
    started = min(starts) if starts else 0
    ended = max(ends) if ends and all(end > 0 for end in ends) else 0
    return started, ended


def finished_samples(record: OperationRecord) -> list[Sample]:
    """Every duration ``record`` shows: its finished steps and sub-steps with sane times."""
    found: list[Sample] = []

    def add(step: str, substep: str, started: int, ended: int) -> None:
        plausible = 0 < started <= ended and ended - started <= MAX_DURATION_NS
        if plausible and _watchable(step, substep) and _typed(record):
            key = key_of(record, step, substep)
            found.append(Sample(key, record.operation_id, ended - started, ended))

    for step in record.steps:
        for sub in step.sub_steps:
            if sub.status == "finished":
                add(step.name, sub.name, sub.start_time, sub.end_time)
        finished = [sub.status == "finished" for sub in step.sub_steps]
        if step.status == "finished" and finished and all(finished):
            add(step.name, "", *step_span(step))
    return found


def learned_samples(before: OperationRecord | None, current: OperationRecord) -> list[Sample]:
    """The samples ``current`` adds to what ``before`` already showed (all of them for an
    operation seen for the first time, the baseline included)."""
    found = finished_samples(current)
    if before is None or not found:
        return found
    known = {(sample.key.step, sample.key.substep) for sample in finished_samples(before)}
    return [sample for sample in found if (sample.key.step, sample.key.substep) not in known]


class NewestSamples:
    """The newest :data:`MAX_SAMPLES` samples of each key, kept while a long history is
    read (the store keeps no more of a key): a silent baseline of 10,000 records shows a
    quarter of a million durations, and holds at most ``MAX_SAMPLES`` per step."""

    def __init__(self, limit: int = MAX_SAMPLES) -> None:
        self._limit = limit
        #: per key, a min-heap of (end time, arrival, sample): the oldest on top
        self._heaps: dict[DurationKey, list[tuple[int, int, Sample]]] = {}
        self._arrivals = 0

    def add(self, samples: Iterable[Sample]) -> None:
        for sample in samples:
            heap = self._heaps.setdefault(sample.key, [])
            # a later arrival wins a tie, as the store's newest-first order keeps it
            item = (sample.ended_at, self._arrivals, sample)
            self._arrivals += 1
            if len(heap) < self._limit:
                heapq.heappush(heap, item)
            elif item[:2] > heap[0][:2]:
                heapq.heapreplace(heap, item)

    def samples(self) -> tuple[Sample, ...]:
        """The samples kept, in the order they arrived."""
        kept = [item for heap in self._heaps.values() for item in heap]
        return tuple(sample for _ended, _arrival, sample in sorted(kept, key=lambda item: item[1]))


# -- the API's clock ----------------------------------------------------------------------------


#: A ``record_time`` later than the response's ``Date`` by more than this is a bad value
#: (or another clock) and does not move the API's clock.
MAX_RECORD_AHEAD_NS: Final = 600 * NS


def api_now_ns(server_time_ns: int | None, records: Iterable[OperationRecord]) -> int:
    """The API's time of a response: its ``Date`` header, or the latest ``record_time`` it
    holds when that is later (the server's clock is at least there; ``Date`` has whole
    seconds) but not by more than :data:`MAX_RECORD_AHEAD_NS`; without a ``Date``, the
    latest ``record_time``; 0 when neither is known. The host's clock is never used."""
    times = (record.record_time for record in records)
    if server_time_ns:
        limit = server_time_ns + MAX_RECORD_AHEAD_NS
        return max(
            (time for time in times if server_time_ns < time <= limit), default=server_time_ns
        )
    return max(times, default=0)


# -- running steps and alerts -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Running:
    """A step or sub-step processing now."""

    operation_id: str
    key: DurationKey
    started_at: int

    @property
    def item(self) -> tuple[str, str, str]:
        return (self.operation_id, self.key.step, self.key.substep)


def running_items(record: OperationRecord) -> list[Running]:
    """The processing steps and sub-steps of an active operation (with a known start)."""
    if not record.is_active or not _typed(record):
        return []
    found: list[Running] = []
    for step in record.steps:
        if not _watchable(step.name):
            continue
        for sub in step.sub_steps:
            if sub.status == PROCESSING and sub.start_time > 0 and _watchable(sub.name):
                key = key_of(record, step.name, sub.name)
                found.append(Running(record.operation_id, key, sub.start_time))
        started, _ended = step_span(step)
        if step.status == PROCESSING and started > 0:
            found.append(Running(record.operation_id, key_of(record, step.name), started))
    return found


@dataclass(frozen=True, slots=True)
class Alert:
    """The stored state of one stall (one episode of one step or sub-step)."""

    operation_id: str
    step: str
    substep: str  # "" : the step
    episode: int  # 0 for the first stall of this item in this operation, then 1, ...
    started_at: int
    level: int  # index into ALERT_FACTORS of the last alert sent
    threshold_ns: int
    p95_ns: int
    samples: int
    alerted_at: int  # API time of the last alert sent
    ended_at: int | None = None  # API time the step was seen moving

    @property
    def item(self) -> tuple[str, str, str]:
        return (self.operation_id, self.step, self.substep)

    @property
    def open(self) -> bool:
        return self.ended_at is None


@dataclass(frozen=True, slots=True)
class Notice:
    """One stall event to raise: ``alert`` as it is after this alert."""

    alert: Alert
    elapsed_ns: int


@dataclass(frozen=True, slots=True)
class StallPlan:
    notices: tuple[Notice, ...] = ()
    opened: tuple[Alert, ...] = ()  # new alert rows
    raised: tuple[Alert, ...] = ()  # open alerts with a reminder sent now
    closed: tuple[Alert, ...] = ()  # alerts whose step moved (ended_at set)

    def __bool__(self) -> bool:
        return bool(self.opened or self.raised or self.closed)


def due_level(elapsed_ns: int, threshold: int, settings: StallSettings) -> int:
    """Index into ALERT_FACTORS of the last alert due after ``elapsed_ns``; -1: none."""
    factors = ALERT_FACTORS if settings.reminders else ALERT_FACTORS[:1]
    level = -1
    for index, factor in enumerate(factors):
        if elapsed_ns > factor * threshold:
            level = index
    return level


def plan_stalls(
    records: Sequence[OperationRecord],
    alerts: Sequence[Alert],
    usual_by_key: Mapping[DurationKey, Usual],
    now_ns: int,
    settings: StallSettings,
) -> StallPlan:
    """What one cycle alerts, reminds and ends.

    ``records``: the current state of the operations this cycle saw; ``alerts``: the stored
    alerts of the source (every open one, and all earlier ones of these operations, which
    number the episodes); ``usual_by_key``: the usual durations of the running items.
    An open alert of an operation not in ``records`` stays open (no evidence it moved).
    """
    opened: list[Alert] = []
    raised: list[Alert] = []
    closed: list[Alert] = []
    notices: list[Notice] = []
    open_alerts = {alert.item: alert for alert in alerts if alert.open}
    episodes = Counter(alert.item for alert in alerts)
    by_operation: dict[str, list[Alert]] = {}
    for alert in open_alerts.values():
        by_operation.setdefault(alert.operation_id, []).append(alert)

    for record in records:
        operation_alerts = by_operation.get(record.operation_id, [])
        if not record.is_active and not operation_alerts:
            continue
        running = {item.item: item for item in running_items(record)}
        staying: dict[tuple[str, str, str], Alert] = {}
        for alert in operation_alerts:
            item = running.get(alert.item)
            if item is None or item.started_at != alert.started_at:
                closed.append(replace(alert, ended_at=now_ns))
            else:
                staying[alert.item] = alert
        # sub-steps first: a step whose running sub-step is stalled is reported through it
        stalled_steps: set[str] = set()
        for item in sorted(running.values(), key=lambda item: item.key.substep == ""):
            if item.key.substep == "" and item.key.step in stalled_steps:
                continue
            elapsed = now_ns - item.started_at
            current = staying.get(item.item)
            if current is not None:
                if item.key.substep:
                    stalled_steps.add(item.key.step)
                level = due_level(elapsed, current.threshold_ns, settings)
                if level > current.level:
                    current = replace(current, level=level, alerted_at=now_ns)
                    raised.append(current)
                    notices.append(Notice(current, elapsed))
                continue
            known = usual_by_key.get(item.key)
            if known is None or known.threshold_ns is None:
                continue
            level = due_level(elapsed, known.threshold_ns, settings)
            if level < 0:
                continue
            alert = Alert(
                operation_id=item.operation_id,
                step=item.key.step,
                substep=item.key.substep,
                episode=episodes[item.item],
                started_at=item.started_at,
                level=level,
                threshold_ns=known.threshold_ns,
                p95_ns=known.p95_ns,
                samples=known.samples,
                alerted_at=now_ns,
            )
            opened.append(alert)
            notices.append(Notice(alert, elapsed))
            if item.key.substep:
                stalled_steps.add(item.key.step)
    return StallPlan(tuple(notices), tuple(opened), tuple(raised), tuple(closed))


def running_keys(records: Iterable[OperationRecord]) -> set[DurationKey]:
    """The keys whose usual durations :func:`plan_stalls` needs for ``records``."""
    return {item.key for record in records for item in running_items(record)}


def stall_event(source: str, record: OperationRecord, notice: Notice, now_ns: int) -> Event:
    """The ``step.stalled`` / ``substep.stalled`` event of one notice.

    Its id depends on the item, the episode, the alert level and the start: the same stall
    always has the same id (across restarts), a later stall of the same step a new one.
    """
    alert = notice.alert
    kind = EventType.SUBSTEP_STALLED if alert.substep else EventType.STEP_STALLED
    return Event(
        id=event_id(
            source,
            alert.operation_id,
            alert.step,
            alert.substep or None,
            PROCESSING,
            f"stalled#{alert.episode}.{alert.level}",
            alert.started_at,
        ),
        type=kind,
        source=source,
        operation_id=alert.operation_id,
        record_time=now_ns,
        operation=record.summary(),
        step=alert.step,
        substep=alert.substep or None,
        from_status=PROCESSING,
        to_status=None,
        started_at=alert.started_at,
        stall=StallFacts(
            elapsed_seconds=round(notice.elapsed_ns / NS, 3),
            threshold_seconds=round(alert.threshold_ns / NS, 3),
            p95_seconds=round(alert.p95_ns / NS, 3),
            samples=alert.samples,
            reminder=alert.level,
        ),
    )
