"""End-to-end helpers: a simulator that records what each poll saw, an independent oracle of
the events that must follow, a signed-webhook receiver, and the real CLI as a subprocess.

The oracle does not use ``notifier.diff``: it re-derives, from the raw API records the
simulator served, which transitions a reader must be told about (README.md, "Events").

It reads the simulator's record requests as polling cycles (:func:`group_cycles`): a complete
listing is a cycle on its own (``poll_mode = "full"``, and the baseline, reconciling and
``poll --full`` listings of incremental polling); an incremental cycle is the ``waiting`` list,
the ``processing`` list and the ``operation_id`` follow-ups. A cycle commits only when every
request of it was answered intact (:class:`CycleReader`), and the service then stores what its
responses showed; the expected transitions are the changes between consecutive committed views.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import config_support
from net_support import WAIT, Received, Receiver, http_receiver, verify_standard_webhook

from notifier.simulator import ReceivedRequest, SimResponse, Simulator

NS = 1_000_000_000
RECORD_PATH = re.compile(r"^/v2/[^/]+/operation/record/?$")
KNOWN_STATUSES = {"waiting", "processing", "finished", "failed", "stop"}
ACTIVE_STATUSES = frozenset({"waiting", "processing"})
TERMINAL = frozenset({"finished", "failed", "stop"})
#: the status lists of an incremental cycle, in the order the service asks for them
STATUS_LISTS = ("waiting", "processing")
SECRET = "whsec_" + base64.b64encode(b"end-to-end-webhook-secret-32byte").decode()
ROOT = Path(__file__).parent.parent


# -- a simulator that knows what every poll saw ---------------------------------------------


def request_kind(query: str) -> str:
    """What a record request with ``query`` asks for: "complete" (a complete listing),
    "waiting" or "processing" (a status list), "follow-up" (``?operation_id=``)."""
    params = {key: value for key, value in parse_qsl(query) if value}
    if "operation_id" in params:
        return "follow-up"
    return params.get("operation_status", "complete")


@dataclass(frozen=True)
class Observation:
    """One operation-record request: the simulated time it was answered at, how, and what it
    asked for (its query string)."""

    now_ns: int
    status: int | None
    fault: str | None
    auth: str
    query: str = ""

    @property
    def valid(self) -> bool:
        """The client got this body intact (no fault, 200)."""
        return self.status == 200 and self.fault is None

    @property
    def params(self) -> dict[str, str]:
        return {key: value for key, value in parse_qsl(self.query) if value}

    @property
    def complete(self) -> bool:
        """A complete listing: neither a status list nor a follow-up."""
        return self.kind == "complete"

    @property
    def status_list(self) -> str | None:
        """The status a short list asked for (None: not a status list)."""
        kind = self.kind
        return None if kind in ("complete", "follow-up") else kind

    @property
    def follow_up(self) -> str | None:
        """The operation a follow-up asked for (None: not a follow-up)."""
        return self.params.get("operation_id")

    @property
    def kind(self) -> str:
        """What it asked for (:func:`request_kind`)."""
        return request_kind(self.query)

    def records(self, records_at: Callable[[int], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """What the API answered: the records at ``now_ns`` its query selects."""
        params = self.params
        return [
            record
            for record in records_at(self.now_ns)
            if all(str(record.get(key)) == value for key, value in params.items())
        ]


class GatedSimulator(Simulator):
    """Requests are answered one at a time under ``gate``, and the clock only moves under it,
    so every answered record request has one exact simulated time, kept in ``observations``.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("episodes", False)
        super().__init__(**kwargs)
        self.gate = threading.Condition()
        self.observations: list[Observation] = []
        self._records_at: dict[int, list[dict[str, Any]]] = {}
        self._records_of = self.scenario
        self._reader = CycleReader(self._records_then)
        self._armed: list[tuple[str | None, str, dict[str, Any]]] = []
        self._moves: list[tuple[str, int]] = []
        #: the observation index of each request a ``move_on`` move was made for
        self.moved: list[int] = []

    def handle(self, request: ReceivedRequest) -> SimResponse:
        with self.gate:
            now = self.clock.now_ns()
            if request.method == "GET" and RECORD_PATH.match(request.path):
                kind = request_kind(request.query)
                self._fire(kind)
                now = self._move(kind, now)
            response = super().handle(request)
            if request.method == "GET" and RECORD_PATH.match(request.path):
                entry = self.requests()[-1]
                self.observations.append(
                    Observation(now, entry.status, entry.fault, entry.auth, entry.query)
                )
            self.gate.notify_all()
        return response

    def inject_on(self, where: str | None, kind: str, **options: Any) -> None:
        """A fault (``Simulator.inject`` arguments; "expire-tokens": every token revoked) for
        the next record request of the kind ``where`` (:func:`request_kind`; None: any):
        injected as that request arrives, so that one request takes it, wherever it falls in
        a cycle."""
        with self.gate:
            self._armed.append((where, kind, options))

    def armed(self) -> list[tuple[str | None, str, dict[str, Any]]]:
        """The faults of ``inject_on`` no request has taken yet."""
        with self.gate:
            return list(self._armed)

    def move_on(self, where: str, target_ns: int) -> None:
        """Set the clock to ``target_ns`` as the next record request of the kind ``where``
        arrives, before it is answered: a cycle then straddles two instants."""
        with self.gate:
            self._moves.append((where, target_ns))

    def _move(self, request: str, now: int) -> int:
        if not self._moves or self._moves[0][0] != request:
            return now
        _where, target = self._moves.pop(0)
        self.moved.append(len(self.observations))
        self.move_to(target)
        return self.clock.now_ns()

    def _fire(self, request: str) -> None:
        for position, (where, kind, options) in enumerate(self._armed):
            if where in (None, request):
                del self._armed[position]
                if kind == "expire-tokens":
                    self.expire_tokens()
                else:
                    self.inject(kind, **options)
                return

    def _records_then(self, now_ns: int) -> list[dict[str, Any]]:
        """The records at ``now_ns`` (kept: the oracle reads each instant many times)."""
        if self._records_of is not self.scenario:  # an operation was scheduled since
            self._records_at.clear()
            self._records_of = self.scenario
        found = self._records_at.get(now_ns)
        if found is None:
            found = self._records_at[now_ns] = self.scenario.records_at(now_ns)
        return found

    def cycles(self) -> list[Cycle]:
        """Every polling cycle so far, the last one possibly still running."""
        with self.gate:
            return self._reader.read(self.observations)

    def mark(self) -> int:
        with self.gate:
            return len(self.observations)

    def move_to(self, target_ns: int) -> int:
        """Set the simulated clock to ``target_ns``; returns the observation mark after it."""
        with self.gate:
            delta = target_ns - self.clock.now_ns()
            if delta > 0:
                self.clock.advance(delta / NS)
            return len(self.observations)

    def wait_for(
        self, predicate: Callable[[list[Observation]], bool], timeout: float = WAIT
    ) -> None:
        deadline = time.monotonic() + timeout
        with self.gate:
            while not predicate(self.observations):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"timed out; last observations: {self.observations[-5:]!r}"
                    )
                self.gate.wait(remaining)

    def wait_valid_after(self, mark: int, timeout: float = WAIT) -> None:
        """Until a record request after ``mark`` was answered intact."""
        self.wait_for(lambda seen: any(o.valid for o in seen[mark:]), timeout)

    def wait_committed_after(self, mark: int, timeout: float = WAIT) -> None:
        """Until a whole cycle that started after ``mark`` was answered intact (committed)."""

        def committed(seen: list[Observation]) -> bool:
            for cycle in reversed(self._reader.read(seen)):
                if cycle.requests[0] < mark:
                    return False
                if cycle.committed:
                    return True
            return False

        self.wait_for(committed, timeout)

    def wait_requests_after(self, mark: int, count: int = 1, timeout: float = WAIT) -> None:
        self.wait_for(lambda seen: len(seen) >= mark + count, timeout)

    def story_instants(self, parts: int) -> list[int]:
        """``parts`` evenly spaced instants from the origin to 1 s after the story settles."""
        origin = self.scenario.origin_ns
        end = self.scenario.story_settled_ns + NS
        return [origin + (end - origin) * k // parts for k in range(1, parts + 1)]

    def change_instants(self) -> list[int]:
        """Every simulated instant after now at which a story record changes."""
        now = self.clock.now_ns()
        return sorted({t for plan in self.scenario.story_plans for t in plan.times() if t > now})

    def truths(self) -> list[tuple[int, list[dict[str, Any]]]]:
        """What the service stores after every committed cycle, in order, as ``(index of the
        cycle's last request, records)`` (``poll_mode = "full"``: every intact answer)."""
        return committed_views(self.cycles())


# -- polling cycles ---------------------------------------------------------------------------


COMMITTED, FAILED, UNFINISHED = "committed", "failed", "unfinished"


@dataclass(frozen=True)
class Cycle:
    """One polling cycle as the simulator saw it."""

    #: indices of its requests in the observations (a 401 and its re-send included)
    requests: tuple[int, ...]
    #: a complete listing (else the short lists of incremental polling)
    complete: bool
    #: COMMITTED (every request answered intact, none missing), FAILED (a request was not
    #: answered intact: the service changes nothing), UNFINISHED (still running, or its
    #: process ended before the last request)
    state: str
    #: the simulated instants its requests were answered at
    instants: frozenset[int]
    #: committed: what its responses showed per operation (the latest record_time)
    shown: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: committed: every operation as the service stores it afterwards
    view: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: committed: the operations followed up on (``?operation_id=``)
    follow_ups: tuple[str, ...] = ()

    @property
    def index(self) -> int:
        return self.requests[-1]

    @property
    def committed(self) -> bool:
        return self.state == COMMITTED

    @property
    def failed(self) -> bool:
        return self.state == FAILED


def _resent(observations: Sequence[Observation], index: int) -> bool:
    """The request at ``index`` is the one before it sent again: password auth answers a 401
    with one new login and the same request."""
    if index == 0:
        return False
    before = observations[index - 1]
    return before.status == 401 and before.query == observations[index].query


def group_cycles(observations: Sequence[Observation], start: int = 0) -> list[tuple[int, ...]]:
    """The observation indices of each polling cycle from ``start`` (where one begins): a
    complete listing or a ``waiting`` list begins a cycle; the ``processing`` list and the
    follow-ups continue it; a request sent again after a 401 stays with it."""
    groups: list[list[int]] = []
    for index in range(start, len(observations)):
        observation = observations[index]
        begins = observation.complete or observation.status_list == STATUS_LISTS[0]
        if groups and (not begins or _resent(observations, index)):
            groups[-1].append(index)
        else:
            groups.append([index])
    return [tuple(group) for group in groups]


class CycleReader:
    """Reads observations as cycles, each as the service commits it or not, keeping the view
    (operation id -> record) the service stores. Reading again only reads what is new: closed
    cycles are final, the last one is read again until the next one begins.

    It fails (AssertionError) where the service asks what it must not: a request after a
    failed one in the same cycle, a follow-up on an operation it does not store as active or
    that a status list showed, one twice, a cycle left without its follow-ups while the same
    process goes on (the next cycle is not the complete listing a new ``run`` starts with), or
    short lists before any baseline.
    """

    def __init__(self, records_at: Callable[[int], list[dict[str, Any]]]) -> None:
        self._records_at = records_at
        self._closed: list[Cycle] = []
        self._view: dict[str, dict[str, Any]] = {}
        self._baseline = False  # a complete listing was committed
        self._next = 0  # the first observation of the open (last) cycle

    def read(self, observations: Sequence[Observation]) -> list[Cycle]:
        groups = group_cycles(observations, self._next)
        for group, following in pairwise(groups):
            cycle = self._cycle(observations, group, observations[following[0]])
            self._closed.append(cycle)
            if cycle.committed:
                self._view = cycle.view
                self._baseline = True
            self._next = following[0]
        if not groups:
            return list(self._closed)
        return [*self._closed, self._cycle(observations, groups[-1], None)]

    def _cycle(
        self,
        observations: Sequence[Observation],
        group: tuple[int, ...],
        closed_by: Observation | None,
    ) -> Cycle:
        last = group[-1]
        requests = [i for i in group if not (i < last and _resent(observations, i + 1))]
        asked = [observations[i] for i in requests]
        instants = frozenset(observations[i].now_ns for i in group)
        complete = asked[0].complete
        where = f"cycle of requests {group[0]}-{last}"
        broken = [position for position, observation in enumerate(asked) if not observation.valid]
        if broken:
            assert broken[0] == len(asked) - 1, f"{where}: asked on after a failed request"
            return Cycle(group, complete, FAILED, instants)
        if complete:
            assert len(asked) == 1, f"{where}: short requests after a complete listing"
            shown = _merged(asked, self._records_at)
            return Cycle(group, True, COMMITTED, instants, shown, shown)
        assert self._baseline, f"{where}: short lists before any baseline"
        lists = tuple(o.status_list for o in asked[:2])
        assert lists == STATUS_LISTS[: len(lists)], f"{where}: status lists {lists}"
        follow_ups = [o.follow_up or "" for o in asked[2:]]
        assert "" not in follow_ups, f"{where}: a status list after the follow-ups"
        listed = {r["operation_id"] for o in asked[:2] for r in o.records(self._records_at)}
        due = {
            operation_id
            for operation_id, record in self._view.items()
            if _status(record["operation_status"]) in ACTIVE_STATUSES
        } - listed
        assert len(set(follow_ups)) == len(follow_ups), f"{where}: a follow-up asked twice"
        unexpected = set(follow_ups) - due
        assert not unexpected, f"{where}: followed up on {sorted(unexpected)} (due: {sorted(due)})"
        if len(lists) < len(STATUS_LISTS) or set(follow_ups) != due:
            missing = sorted(due - set(follow_ups))
            assert closed_by is None or closed_by.complete, (
                f"{where}: the next cycle began without the follow-ups on {missing}"
            )
            return Cycle(group, False, UNFINISHED, instants)
        shown = _merged(asked, self._records_at)
        view = {**self._view, **shown}
        return Cycle(group, False, COMMITTED, instants, shown, view, tuple(follow_ups))


def _merged(
    asked: Sequence[Observation], records_at: Callable[[int], list[dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """The records the answers showed, per operation; one shown twice (it moved between two
    requests) as its latest ``record_time``, the later answer winning a tie."""
    shown: dict[str, dict[str, Any]] = {}
    for observation in asked:
        for record in observation.records(records_at):
            operation_id = record["operation_id"]
            before = shown.get(operation_id)
            if before is None or int(record["record_time"]) >= int(before["record_time"]):
                shown[operation_id] = record
    return shown


def committed_views(cycles: Sequence[Cycle]) -> list[tuple[int, list[dict[str, Any]]]]:
    """The view after every committed cycle as ``(index of its last request, records)``: what
    ``expected_transitions`` and ``assert_chains`` read."""
    return [(cycle.index, list(cycle.view.values())) for cycle in cycles if cycle.committed]


def seen_alone(cycles: Sequence[Cycle]) -> set[int]:
    """The instants some committed cycle saw alone (each of its requests answered then)."""
    return {next(iter(c.instants)) for c in cycles if c.committed and len(c.instants) == 1}


# -- the oracle ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    source: str
    type: str
    operation_id: str
    step: str | None
    substep: str | None
    from_status: str | None
    to_status: str | None
    record_time: int

    @property
    def key(self) -> tuple[str, str, str | None, str | None]:
        return (self.source, self.operation_id, self.step, self.substep)


def _status(value: Any, detail: Any = None) -> str:
    text = str(value or "").strip().lower()
    if not text and str(detail or "").strip().lower() in KNOWN_STATUSES:
        return str(detail).strip().lower()
    return text


def _steps(record: dict[str, Any]) -> list[tuple[str, str, list[tuple[str, str]]]]:
    steps = []
    process = record.get("operation_process") or {}
    for name, step in sorted(process.items(), key=lambda item: item[1]["serial_num"]):
        subs = sorted((step.get("sub_steps") or {}).items(), key=lambda i: i[1]["serial_num"])
        steps.append(
            (
                name,
                _status(step.get("status"), step.get("detail")),
                [(sub, _status(data.get("status"), data.get("detail"))) for sub, data in subs],
            )
        )
    return steps


def transitions_between(
    source: str, previous: dict[str, Any] | None, current: dict[str, Any]
) -> list[Transition]:
    """What a reader must be told about one record between two intact observations."""
    op = current["operation_id"]
    at = int(current["record_time"])
    status = _status(current["operation_status"])
    if previous is None:
        return [Transition(source, "operation.created", op, None, None, None, status, at)]
    found: list[Transition] = []
    old_steps = {name: (st, dict(subs)) for name, st, subs in _steps(previous)}
    for name, step_status, subs in _steps(current):
        old = old_steps.get(name)
        if old is None:
            found.append(Transition(source, "step.created", op, name, None, None, step_status, at))
        elif old[0] != step_status:
            found.append(
                Transition(source, "step.status_changed", op, name, None, old[0], step_status, at)
            )
        old_subs = old[1] if old is not None else {}
        for sub, sub_status in subs:
            if sub not in old_subs:
                found.append(
                    Transition(source, "substep.created", op, name, sub, None, sub_status, at)
                )
            elif old_subs[sub] != sub_status:
                found.append(
                    Transition(
                        source,
                        "substep.status_changed",
                        op,
                        name,
                        sub,
                        old_subs[sub],
                        sub_status,
                        at,
                    )
                )
    old_status = _status(previous["operation_status"])
    if old_status != status:
        found.append(
            Transition(source, "operation.status_changed", op, None, None, old_status, status, at)
        )
    return found


def expected_transitions(
    source: str, truths: Sequence[tuple[int, list[dict[str, Any]]]]
) -> dict[Transition, int]:
    """Every transition the intact observations show, with the observation it appeared in;
    the first observation is the silent baseline."""
    expected: dict[Transition, int] = {}
    known: dict[str, dict[str, Any]] = {}
    for position, (index, records) in enumerate(truths):
        for record in records:
            op = record["operation_id"]
            if position > 0:
                for transition in transitions_between(source, known.get(op), record):
                    assert transition not in expected, f"oracle saw {transition} twice"
                    expected[transition] = index
            known[op] = record
    return expected


def transition_of(cloudevent: dict[str, Any]) -> Transition:
    data = cloudevent["data"]
    return Transition(
        cloudevent["source"].removeprefix("bcs-notifier/"),
        cloudevent["type"].removeprefix("bcs_notifier."),
        cloudevent["subject"],
        data.get("step"),
        data.get("substep"),
        data.get("from"),
        data.get("to"),
        _ns(cloudevent["time"]),
    )


def _ns(rfc3339: str) -> int:
    from datetime import datetime

    base, _, fraction = rfc3339.rstrip("Z").partition(".")
    seconds = int(datetime.fromisoformat(base + "+00:00").timestamp())
    return seconds * NS + int((fraction or "0").ljust(9, "0")[:9])


def _seed(
    last: dict[tuple[str, str, str | None, str | None], str | None],
    source: str,
    record: dict[str, Any],
) -> None:
    op = record["operation_id"]
    last[(source, op, None, None)] = _status(record["operation_status"])
    for name, step_status, subs in _steps(record):
        last[(source, op, name, None)] = step_status
        for sub, sub_status in subs:
            last[(source, op, name, sub)] = sub_status


def assert_chains(
    deliveries: Sequence[Delivery],
    source: str,
    truths: Sequence[tuple[int, list[dict[str, Any]]]],
    expected: dict[Transition, int],
) -> None:
    """Per operation, step and sub-step of ``source`` the statuses told form one unbroken
    chain in delivery order (``from`` is the previous ``to``), starting from the baseline or
    from the record as it was when ``operation.created`` was told; each chain ends at the
    status of the last intact observation."""
    records = {index: {r["operation_id"]: r for r in found} for index, found in truths}
    last: dict[tuple[str, str, str | None, str | None], str | None] = {}
    for record in truths[0][1]:
        _seed(last, source, record)
    seen: set[str] = set()
    for delivery in operation_deliveries(deliveries):
        transition = delivery.transition
        if transition.source != source or delivery.webhook_id in seen:
            continue
        seen.add(delivery.webhook_id)
        key = transition.key
        if transition.type == "operation.created":
            assert key not in last, f"{transition}: created twice"
            _seed(last, source, records[expected[transition]][transition.operation_id])
            continue
        if transition.type.endswith(".created"):
            assert key not in last, f"{transition}: created twice"
        else:
            assert last.get(key) == transition.from_status, (
                f"{transition} does not follow {last.get(key)!r}"
            )
        last[key] = transition.to_status
    final: dict[tuple[str, str, str | None, str | None], str | None] = {}
    for record in truths[-1][1]:
        _seed(final, source, record)
    assert last == final


# -- a signed-webhook receiver ----------------------------------------------------------------


@dataclass
class Delivery:
    webhook_id: str
    signature_ok: bool
    document: dict[str, Any]

    @property
    def transition(self) -> Transition:
        return transition_of(self.document)


@dataclass
class WebhookReceiver:
    """The deliveries of one signed webhook channel, over a local ``Receiver`` (``http``)."""

    http: Receiver
    secret: str = SECRET

    @property
    def url(self) -> str:
        return f"webhook://{self.http.base}/hooks/bcs?secret={self.secret}"

    def deliveries(self, requests: Sequence[Received]) -> list[Delivery]:
        return [
            Delivery(
                request.headers.get("webhook-id", ""),
                verify_standard_webhook(self.secret, request.headers, request.body),
                request.json(),
            )
            for request in requests
        ]

    def snapshot(self) -> list[Delivery]:
        return self.deliveries(self.http.snapshot())

    def wait_for(self, predicate: Callable[[list[Delivery]], bool], timeout: float = WAIT) -> None:
        self.http.wait_for(lambda requests: predicate(self.deliveries(requests)), timeout)


@contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    with http_receiver(default_status=204) as http:
        yield WebhookReceiver(http)


def assert_exactly_once(
    deliveries: Sequence[Delivery],
    expected: dict[Transition, int],
    *,
    repeats: frozenset[str] = frozenset(),
) -> None:
    """Every expected transition delivered, nothing else, each id once (``repeats``: ids
    allowed, and required, to arrive exactly twice), every signature valid, ids stable."""
    assert all(d.signature_ok for d in deliveries), "a webhook signature did not verify"
    assert all(d.webhook_id == d.document["id"] for d in deliveries)
    deliveries = operation_deliveries(deliveries)
    counts = Counter(d.webhook_id for d in deliveries)
    twice = {webhook_id for webhook_id, n in counts.items() if n > 1}
    assert twice == repeats, f"repeated ids {twice} (allowed: {repeats})"
    assert all(counts[webhook_id] == 2 for webhook_id in repeats)
    unique: dict[str, Transition] = {}
    for delivery in deliveries:
        transition = delivery.transition
        assert unique.setdefault(delivery.webhook_id, transition) == transition
    told = sorted(unique.values(), key=repr)
    assert len(set(told)) == len(told), "two ids for one transition"
    missing = set(expected) - set(told)
    invented = set(told) - set(expected)
    assert not missing, f"lost: {sorted(missing, key=repr)[:5]}"
    assert not invented, f"invented: {sorted(invented, key=repr)[:5]}"


def operation_deliveries(deliveries: Sequence[Delivery]) -> list[Delivery]:
    """The deliveries about operations (not ``source.*`` health events)."""
    return [d for d in deliveries if not d.document["type"].startswith("bcs_notifier.source.")]


def health_types(deliveries: Sequence[Delivery]) -> list[str]:
    """The ``source.*`` events delivered, in order, as short type names."""
    return [
        d.document["type"].removeprefix("bcs_notifier.")
        for d in deliveries
        if d.document["type"].startswith("bcs_notifier.source.")
    ]


def assert_in_order(deliveries: Sequence[Delivery], expected: dict[Transition, int]) -> None:
    """Per operation, events arrive in the order they were observed (first deliveries)."""
    seen: set[str] = set()
    position: dict[tuple[str, str], int] = defaultdict(int)
    for delivery in operation_deliveries(deliveries):
        if delivery.webhook_id in seen:
            continue
        seen.add(delivery.webhook_id)
        transition = delivery.transition
        index = expected[transition]
        operation = (transition.source, transition.operation_id)
        assert index >= position[operation], f"{transition} out of order"
        position[operation] = index


# -- the real CLI ------------------------------------------------------------------------------


def cli_env() -> dict[str, str]:
    """The environment for a CLI subprocess: unbuffered, no proxies for loopback."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
        and not key.startswith("BCS_NOTIFIER")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env["NO_PROXY"] = "127.0.0.1,localhost"
    return env


def run_cli(*arguments: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "notifier", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
        cwd=ROOT,
        check=False,
    )


class Service:
    """``bcs-notifier run`` as a real process; output goes to files (no pipe can fill up)."""

    def __init__(self, config: Path, logs: Path) -> None:
        self.config = config
        self.logs = logs
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self) -> Service:
        self.runs += 1
        stdout = (self.logs / f"run{self.runs}.out").open("wb")
        stderr = (self.logs / f"run{self.runs}.err").open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "notifier",
                "--config",
                str(self.config),
                "--log-level",
                "info",
                "run",
                "--log-format",
                "text",
                "--stop-grace",
                "5",
            ],
            stdout=stdout,
            stderr=stderr,
            env=cli_env(),
            cwd=ROOT,
        )
        stdout.close()
        stderr.close()
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = WAIT) -> int:
        process = self.process
        assert process is not None
        process.send_signal(sig)
        try:
            return process.wait(timeout)
        finally:
            self.kill()

    def send(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = WAIT) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)

    def stderr(self, run: int | None = None) -> str:
        return (self.logs / f"run{run or self.runs}.err").read_text(errors="replace")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def write_config(directory: Path, sources: Sequence[str], webhook_url: str, **service: Any) -> Path:
    """The service with its polling paced for tests, ``sources`` (``sim_source`` blocks) and
    one webhook channel, "automation"."""
    settings = {
        "poll_interval": 1,
        "active_poll_interval": 0.2,
        # one complete listing a cycle unless a test asks for "incremental" (the oracle reads
        # both: CycleReader)
        "poll_mode": "full",
        "poll_jitter": 0,
        "unreachable_after": 600,
        **service,
    }
    return config_support.write_config(
        directory,
        service=settings,
        delivery={"backoff_initial": 0.2, "backoff_max": 1, "timeout": 5},
        sources=sources,
        channels=[config_support.channel("automation", webhook_url)],
    )
