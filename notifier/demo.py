"""``bcs-notifier demo``: the embedded simulator, the real service, a console channel.

Everything runs in this process and is gone afterwards:

* a :class:`~notifier.simulator.Simulator` on 127.0.0.1 (a free port) plays the scripted
  story ``speed`` times faster than real time (15x: the story settles in about 35 s);
* a temporary directory holds the SQLite store, migrated by Alembic like a real install;
* the configuration is TOML text parsed and validated by the real loader (channel URLs
  included); its only source is the simulator, with the simulator's own credentials;
* the service's own run loop (:class:`~notifier.daemon.Daemon` with the components ``run``
  builds: the poller and the outbox dispatcher on worker threads) polls, diffs, stores and
  delivers to one ``console://`` channel, which prints what a chat user would see.

The first poll is a silent baseline, as in production (``notify_existing = false``): the
operations already there (three finished ones and an upgrade in progress) are stored without
a message, and the running upgrade produces the first notifications right away. Reporting
the history instead (``notify_existing = true``) would open the demo with three messages
about operations that finished hours or days ago, which is exactly what a real install must
never do.

One sub-step of the new blockchain hangs far longer than the history says it takes, so the
channel shows a ``substep.stalled`` alert (stall detection learns the durations from the
baseline's finished operations) before the sub-step moves on.

The demo ends by itself once every story operation is terminal, a poll has seen that, and
the outbox is empty; :meth:`Demo.request_stop` (Ctrl-C) ends it early. Either way the
simulator is stopped, the engine disposed of and the temporary directory removed.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import textwrap
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from notifier.clock import SYSTEM_CLOCK, Clock
from notifier.config import AuthConfig, Config, Secret, SourceConfig, parse_config
from notifier.errors import NotifierError
from notifier.model import OPERATION_TYPE_NAMES, TERMINAL_STATUSES
from notifier.simulator.clock import NS_PER_SECOND, ScaledClock
from notifier.simulator.scenario import OperationPlan
from notifier.simulator.server import AUTH_TYPES, Simulator
from notifier.simulator.stories import DEMO_STALL, DEMO_STORY

if TYPE_CHECKING:
    from notifier.store.db import Engine

logger = logging.getLogger(__name__)

DEFAULT_SPEED: Final = 15.0
#: Real seconds between two polls (the real service's ``active_poll_interval``).
DEFAULT_INTERVAL: Final = 1.0
#: The demo gives up after this many real seconds beyond the story's expected end.
DEADLINE_MARGIN: Final = 60.0
SOURCE_NAME: Final = "demo"
CHANNEL_NAME: Final = "chat"
#: What the console channel reports: an operation's life and its steps (sub-steps are
#: recorded too, and shown inside each message's step tree).
CHANNEL_EVENTS: Final = ("operation.*", "step.*", "*.stalled")
#: Stall detection in the demo (simulated seconds): the history has two finished creates,
#: so two samples are enough here; production keeps ``stall_min_samples = 10``.
STALL_SETTINGS: Final = ("stall_factor = 2.0", "stall_min_samples = 2", "stall_floor = 30")
WIDTH: Final = 88


@dataclass(frozen=True)
class DemoOptions:
    speed: float = DEFAULT_SPEED
    seed: int = 0
    auth: str = "aksk"
    interval: float = DEFAULT_INTERVAL
    #: ``console://`` stream: ``stdout`` or ``stderr``
    stream: str = "stdout"

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise ValueError("speed must be positive")
        if self.auth not in AUTH_TYPES:
            raise ValueError(f"auth must be one of {AUTH_TYPES}, not {self.auth!r}")
        if self.interval < 0.2:
            raise ValueError("interval must be at least 0.2 s")


@dataclass(frozen=True)
class OperationOutcome:
    blockchain: str
    operation: str  # OpCreate, OpAddOrg, ...
    status: str  # as the service last recorded it
    operation_id: str
    message: str | None = None  # the API's message of a failed or stopped operation


@dataclass
class DemoReport:
    """What happened, for the closing summary."""

    completed: bool = False  # the story ended and everything was delivered
    interrupted: bool = False  # request_stop() (Ctrl-C) before that
    elapsed: float = 0.0
    polls: int = 0
    failed_polls: int = 0
    events: int = 0  # events recorded in the store
    notifications: int = 0  # deliveries (outbox rows) sent
    messages: int = 0  # messages the channel printed
    pending: int = 0
    dead: int = 0
    operations: list[OperationOutcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def demo_config_text(simulator: Simulator, options: DemoOptions, database: str) -> str:
    """The ``notifier.toml`` the demo runs with (it holds the simulator's credentials)."""
    interval = f"{options.interval:g}"
    events = ", ".join(f'"{name}"' for name in CHANNEL_EVENTS)
    return "\n".join(
        [
            "[service]",
            f'database = "{database}"',
            f"poll_interval = {max(options.interval, 1.0):g}",
            f"active_poll_interval = {interval}",
            # a complete listing every few polls: the story's fast operations (created and
            # ended between two polls) are told within seconds, not after 15 minutes
            f"full_poll_interval = {max(options.interval * 5, 1.0):g}",
            "poll_jitter = 0",
            "notify_existing = false",
            "unreachable_after = 30",
            *STALL_SETTINGS,
            "",
            "[delivery]",
            "backoff_initial = 1",
            "backoff_max = 5",
            "timeout = 5",
            "",
            simulator.config_snippet(options.auth, name=SOURCE_NAME)
            .replace("[[sources]]\n", "[[sources]]\ntimeout = 5\nmax_retries = 2\n", 1)
            .rstrip("\n"),
            "",
            "[[channels]]",
            f'name = "{CHANNEL_NAME}"',
            f'urls = ["console://{options.stream}"]',
            f"events = [{events}]",
            "",
        ]
    )


def source_config(
    simulator: Simulator, auth: str = "password", *, name: str = "simulator"
) -> SourceConfig:
    """A :class:`SourceConfig` pointing at ``simulator`` with working credentials.

    The service's side of :meth:`Simulator.config_snippet` (the simulator knows nothing of
    the service's config model): the same source, ready to hand to a client.
    """
    credentials = simulator.credentials
    if auth == "token":
        auth_config = AuthConfig(type="token", token=Secret(credentials.token))
    elif auth == "password":
        auth_config = AuthConfig(
            type="password",
            iam_endpoint=simulator.iam_endpoint,
            domain=credentials.domain,
            username=credentials.username,
            password=Secret(credentials.password),
        )
    elif auth == "aksk":
        auth_config = AuthConfig(
            type="aksk",
            access_key=Secret(credentials.access_key),
            secret_key=Secret(credentials.secret_key),
        )
    else:
        raise ValueError(f"auth must be one of {AUTH_TYPES}, not {auth!r}")
    return SourceConfig(
        name=name, endpoint=simulator.endpoint, project_id=simulator.project_id, auth=auth_config
    )


def story_outline(simulator: Simulator, speed: float) -> list[str]:
    """One line per story operation still to come or in progress, in story order."""
    scenario = simulator.scenario
    origin = scenario.origin_ns
    lines = []
    for plan in scenario.story_plans:
        if plan.ended_ns <= origin:
            continue
        name = _operation_name(plan)
        if plan.created_ns <= origin:
            when = "running"
        else:
            when = f"~{(plan.created_ns - origin) / NS_PER_SECOND / speed:.0f} s"
        line = f"  {when:>8}  {name:<14} {plan.spec.blockchain}"
        if DEMO_STALL in plan.spec.took:
            line += f" ({DEMO_STALL[0].lower()} hangs: a stall alert)"
        lines.append(line)
    return lines


def _operation_name(plan: OperationPlan) -> str:
    operation_type = plan.spec.template.operation_type
    return OPERATION_TYPE_NAMES.get(operation_type, operation_type)


class _HeldClock:
    """The clock's monotonic reading, standing still until :meth:`release` (for a
    ScaledClock, which takes a plain function: the simulator imports nothing of the service)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._held_at = clock.monotonic()
        self._released_at: float | None = None

    def __call__(self) -> float:
        released = self._released_at
        if released is None:
            return self._held_at
        return self._held_at + (self._clock.monotonic() - released)

    def release(self) -> None:
        if self._released_at is None:
            self._released_at = self._clock.monotonic()


class _ObservedPoller:
    """The real :class:`~notifier.pipeline.Poller`, counting polls for the demo."""

    def __init__(self, poller: Any, demo: Demo) -> None:
        self._poller = poller
        self._demo = demo

    def poll_source(self, source: SourceConfig, /) -> Any:
        settled = self._demo.simulator_settled()
        result = self._poller.poll_source(source)
        if result.error is None:
            # the baseline is stored: only now may the story move on, so however long
            # the first poll took (imports, the IAM login, a busy machine) no operation
            # can start inside it and be stored silently
            self._demo.start_story()
        self._demo.observe_poll(result, story_settled=settled)
        return result

    def close(self) -> None:
        self._poller.close()


class _CountedDispatcher:
    """The real :class:`~notifier.outbox.Dispatcher`, counting console messages."""

    def __init__(self, dispatcher: Any, demo: Demo) -> None:
        self._dispatcher = dispatcher
        self._demo = demo

    def dispatch_due(self, limit: int | None = None) -> Any:
        stats = self._dispatcher.dispatch_due(limit)
        self._demo.count_messages(stats.messages)
        return stats


class Demo:
    """One demo run; :meth:`run` blocks until the story is over or a stop is requested."""

    def __init__(
        self, options: DemoOptions, *, say: Callable[[str], None], clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.options = options
        self.say = say
        self.clock = clock
        self.report = DemoReport()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._simulator: Simulator | None = None
        self._daemon: Any = None
        self._hold = _HeldClock(clock)
        self._seen_settled = False

    # -- control (signal handlers) --

    def request_stop(self) -> None:
        """End the demo early (safe from a signal handler)."""
        self._stop.set()
        daemon = self._daemon
        if daemon is not None:
            daemon.request_stop()

    # -- callbacks from the pipeline --

    def start_story(self) -> None:
        """Let the story's clock run: called once the first poll has stored the baseline
        (then a no-op)."""
        self._hold.release()

    def simulator_settled(self) -> bool:
        simulator = self._simulator
        return simulator is not None and simulator.story_remaining() == 0

    def observe_poll(self, result: Any, *, story_settled: bool) -> None:
        with self._lock:
            self.report.polls += 1
            if result.error is not None:
                self.report.failed_polls += 1
                self.report.errors.append(result.error.one_line())
                return
            if story_settled and not result.active:
                self._seen_settled = True
        if result.baseline:
            text = (
                f"First poll: {result.records} operation(s) already there, stored silently "
                "as the baseline (starting the service never floods a channel with "
                "history). From now on every change is a notification:"
            )
            self.say("\n".join(textwrap.wrap(text, WIDTH)) + "\n")

    def count_messages(self, messages: int) -> None:
        with self._lock:
            self.report.messages += messages

    # -- the run --

    def run(self) -> DemoReport:
        from notifier.channels.targets import validate_channel
        from notifier.store import db

        started = self.clock.monotonic()
        scratch = Path(tempfile.mkdtemp(prefix="bcs-notifier-demo-"))
        engine: Engine | None = None
        # the story's clock stands still until the first poll has stored the baseline:
        # however long the set-up and that poll take, at any speed, the baseline is the
        # story's start and every later change is a notification
        hold = _HeldClock(self.clock)
        simulator = Simulator(
            seed=self.options.seed,
            speed=self.options.speed,
            clock=ScaledClock(self.options.speed, monotonic=hold),
            story=DEMO_STORY,
            episodes=False,
        )
        self._hold = hold
        try:
            simulator.start()
            self._simulator = simulator
            database = f"sqlite:///{scratch / 'state.db'}"
            config = parse_config(
                demo_config_text(simulator, self.options, database),
                filename="<demo>",
                base_dir=scratch,
                channel_validators=(validate_channel,),
            )
            engine = db.make_engine(database)
            db.upgrade(engine, backup=False)
            self._header(simulator, config)
            self._loop(simulator, config, engine)
            self._summarise(engine)
        finally:
            simulator.stop()
            self._simulator = None
            if engine is not None:
                engine.dispose()
            shutil.rmtree(scratch, ignore_errors=True)
            self.report.elapsed = self.clock.monotonic() - started
        return self.report

    def _deadline(self, simulator: Simulator) -> float:
        return (
            self.clock.monotonic()
            + simulator.story_remaining() / self.options.speed
            + DEADLINE_MARGIN
        )

    def _loop(self, simulator: Simulator, config: Config, engine: Engine) -> None:
        """The real run loop (:class:`~notifier.daemon.Daemon`) until the story is over."""
        from notifier.daemon import Components, Daemon, DaemonOptions, default_components

        def components(settings: Config, store: Engine) -> Components:
            # exactly what `run` builds, observed for the header lines and the summary
            real = default_components(settings, store)
            return Components(
                poller=_ObservedPoller(real.poller, self),
                dispatcher=_CountedDispatcher(real.dispatcher, self),
            )

        daemon = Daemon(
            config,
            engine,
            components=components,
            options=DaemonOptions(stop_grace=5.0, jitter_seed=self.options.seed),
            clock=self.clock,
        )
        finished = threading.Event()
        watcher = threading.Thread(
            target=self._watch,
            args=(daemon, engine, self._deadline(simulator), finished),
            name="bcs-notifier-demo-watch",
            daemon=True,
        )
        with self._lock:
            self._daemon = daemon
        if self._stop.is_set():
            daemon.request_stop()
        watcher.start()
        try:
            daemon.run()
        finally:
            finished.set()
            watcher.join(timeout=5)
            with self._lock:
                self._daemon = None
        if self._stop.is_set() and not self.report.completed:
            self.report.interrupted = True

    def _watch(
        self, daemon: Any, engine: Engine, deadline: float, finished: threading.Event
    ) -> None:
        """Stop the run loop once the story is over and everything is delivered."""
        from notifier.outbox import counts_by_state

        while not finished.wait(0.1):
            if self._stop.is_set():
                return
            if self._seen_settled:
                try:
                    pending = counts_by_state(engine)["pending"]
                except Exception:  # the store is busy or gone: look again next time
                    logger.debug("cannot read the outbox", exc_info=True)
                    continue
                if pending == 0:
                    self.report.completed = True
                    daemon.request_stop()
                    return
            if self.clock.monotonic() > deadline:
                self.report.errors.append(
                    "the story did not finish in time (is the machine very busy?)"
                )
                daemon.request_stop()
                return

    # -- output --

    def _header(self, simulator: Simulator, config: Config) -> None:
        options = self.options
        source = config.sources[0]
        expected = simulator.story_remaining() / options.speed
        auth = {
            "aksk": "AK/SK-signed requests (SDK-HMAC-SHA256)",
            "password": "an IAM token fetched with a password",
            "token": "an IAM token",
        }[source.auth.type]
        intro = (
            f"A BCS simulator on {simulator.endpoint} (seed {options.seed}) plays a scripted "
            f"story {options.speed:g} times faster than real time, about {expected:.0f} s "
            "here:"
        )
        service = (
            f"The real service polls it every {config.service.active_poll_interval:g} s "
            f"with {auth}, stores snapshots and events in a temporary SQLite database, and "
            "delivers each operation's changes through the outbox to a console:// channel "
            "that prints what a chat user would see (events: "
            f"{', '.join(CHANNEL_EVENTS)}). Times in the messages are simulated time."
        )
        lines = [
            "bcs-notifier demo",
            "=================",
            *textwrap.wrap(intro, WIDTH),
            "",
            "      when  operation      blockchain",
            *story_outline(simulator, options.speed),
            "",
            *textwrap.wrap(service, WIDTH),
            "Ctrl-C stops early; nothing is left behind.",
            "",
        ]
        self.say("\n".join(lines))

    def _summarise(self, engine: Engine) -> None:
        from notifier.outbox import counts_by_state
        from notifier.store.repository import Repository

        report = self.report
        try:
            counts = counts_by_state(engine)
            repository = Repository(engine)
            report.events = repository.event_count()
            index = repository.snapshot_index(SOURCE_NAME)
            records = repository.load_records(SOURCE_NAME, index)
        except NotifierError as exc:
            report.errors.append(str(exc))
            return
        report.notifications = counts["sent"]
        report.pending = counts["pending"]
        report.dead = counts["dead"]
        if report.dead:
            report.errors.append(
                f"{report.dead} notification(s) could not be delivered (see the warnings above)"
            )
        simulator = self._simulator
        baseline_ns = simulator.scenario.origin_ns if simulator is not None else 0
        for record in sorted(records.values(), key=lambda record: record.operation_id):
            if record.record_time < baseline_ns and record.status in TERMINAL_STATUSES:
                continue  # history that was already over before the demo started
            report.operations.append(
                OperationOutcome(
                    blockchain=record.blockchain_name or record.blockchain_id or "-",
                    operation=OPERATION_TYPE_NAMES.get(
                        record.operation_type, record.operation_type or "-"
                    ),
                    status=record.status,
                    operation_id=record.operation_id,
                    message=record.message[0] if record.message else None,
                )
            )


def summary_lines(report: DemoReport) -> list[str]:
    """The closing summary, as the CLI prints it."""
    if report.completed:
        heading = f"Demo finished in {report.elapsed:.1f} s."
    elif report.interrupted:
        heading = f"Demo interrupted after {report.elapsed:.1f} s."
    else:
        heading = f"Demo stopped after {report.elapsed:.1f} s without finishing the story."
    lines = [
        "",
        heading,
        f"  polls: {report.polls} ({report.failed_polls} failed)",
        f"  events recorded: {report.events}",
        f"  notifications delivered: {report.notifications} "
        f"({report.messages} console message(s)); still pending: {report.pending}, "
        f"dead: {report.dead}",
    ]
    if report.operations:
        lines.append("  operations:")
        width = max(len(item.operation) for item in report.operations)
        for item in report.operations:
            line = f"    {item.operation:<{width}}  {item.blockchain:<12} {item.status}"
            if item.message and item.status != "finished":
                line += f": {textwrap.shorten(item.message, 60, placeholder='...')}"
            lines.append(line)
    lines.extend(f"  error: {error}" for error in dict.fromkeys(report.errors))
    lines.append("The temporary database was removed.")
    lines.append(
        "Next: `bcs-notifier simulate` serves the simulator alone for your own notifier.toml."
    )
    return lines
