"""The simulator: BCS operation-record API + IAM token API on a local HTTP server.

:class:`Simulator` holds the state (clock, scenario, tokens, keys, faults, request log),
starts and stops the server, and offers the Python control API (advance the clock, inject
faults, schedule operations, read the truth) and a client's ``[[sources]]`` block. It is a
:class:`~notifier.simulator.http.Gateway`: the routes that answer requests, and the HTTP
layer that only moves bytes, are in :mod:`notifier.simulator.http`. The server only ever
listens on a loopback address.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Final

from notifier.simulator.auth import AkskVerifier, Credentials, TokenStore
from notifier.simulator.clock import NS_PER_SECOND, ManualClock, ScaledClock, SimClock, to_ns
from notifier.simulator.faults import Fault, FaultKind, FaultQueue
from notifier.simulator.http import Gateway, RequestLogEntry, SimServer
from notifier.simulator.scenario import Scenario, derived_hex
from notifier.simulator.stories import DEFAULT_STORY, OperationSpec

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS: Final = ("127.0.0.1", "localhost", "::1")
AUTH_TYPES: Final = ("token", "password", "aksk")


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string of printable ASCII is a TOML basic string


class Simulator(Gateway):
    """A local stand-in for the BCS operation-record API and the IAM token API.

    ``speed`` None (the default) gives a :class:`ManualClock` that moves only through
    :meth:`advance`; a number gives a :class:`ScaledClock` (simulated seconds per real
    second). ``start`` anchors the story (default: now, whole seconds); with the same seed and
    start, the records at the same simulated time are identical.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        speed: float | None = None,
        clock: SimClock | None = None,
        start: datetime | float | int | None = None,
        story: Sequence[OperationSpec] = DEFAULT_STORY,
        episodes: bool = True,
        period: float = 600.0,
        retention: float | None = 7 * 86_400.0,
        credentials: Credentials | None = None,
        project_id: str | None = None,
        domain_id: str | None = None,
        region: str = "cn-north-4",
        token_lifetime: float = 86_400.0,
        token_size: int = 8192,
        max_skew: float = 900.0,
        lock_after: int = 5,
        lock_seconds: float = 300.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if host not in LOOPBACK_HOSTS:
            raise ValueError(f"the simulator listens on loopback only, not {host!r}")
        if clock is None:
            clock = ManualClock(start) if speed is None else ScaledClock(speed, start)
        self.clock: SimClock = clock
        self.seed = seed
        self.speed = speed
        self.region = region
        self.token_lifetime = token_lifetime
        self.host = host
        self.port = port
        self.project_id = project_id or derived_hex(32, seed, "project")
        self.domain_id = domain_id or derived_hex(32, seed, "domain")
        self.credentials = credentials or Credentials.derived(seed)
        self.scenario = Scenario(
            seed=seed,
            origin_ns=clock.now_ns() if start is None else to_ns(start),
            project_id=self.project_id,
            domain_id=self.domain_id,
            story=story,
            episodes=episodes,
            period=period,
            retention=retention,
        )
        self.tokens = TokenStore(
            seed=seed,
            fixed_token=self.credentials.token,
            project_id=self.project_id,
            size=token_size,
        )
        self.verifier = AkskVerifier(
            max_skew=max_skew, lock_after=lock_after, lock_seconds=lock_seconds
        )
        self.verifier.add_key(self.credentials.access_key, self.credentials.secret_key)
        self.verifier.add_key(
            self.credentials.temporary_access_key,
            self.credentials.temporary_secret_key,
            self.credentials.security_token,
        )
        self.faults = FaultQueue()
        self._log: deque[RequestLogEntry] = deque(maxlen=10_000)
        self._lock = threading.Lock()
        self._server: SimServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Simulator:
        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        self._stopping.clear()
        server = SimServer((self.host, self.port), self)
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"bcs-simulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        logger.info("simulator listening on %s (project %s)", self.endpoint, self.project_id)
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """The BCS endpoint (``http://127.0.0.1:PORT``); also the IAM endpoint."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def iam_endpoint(self) -> str:
        return self.endpoint

    @property
    def stopping(self) -> threading.Event:
        return self._stopping

    # -- Python control API (the /_sim/ endpoints call these) ------------------------------------

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` of simulated time."""
        self.clock.advance(seconds)

    def records(self) -> list[dict[str, Any]]:
        """The true current records, unfiltered, exactly as the API would return them."""
        with self._lock:
            scenario = self.scenario
        return scenario.records_at(self.clock.now_ns())

    def inject(
        self,
        kind: FaultKind | str,
        count: int = 1,
        *,
        target: str = "bcs",
        delay: float = 5.0,
        retry_after: int | None = None,
        drop: int = 1,
    ) -> None:
        """Make the next ``count`` matching responses misbehave (see :class:`FaultKind`)."""
        fault = Fault(FaultKind(kind), target, delay, retry_after, drop)
        self.faults.inject(fault, count)

    def clear_faults(self) -> int:
        return self.faults.clear()

    def expire_tokens(self) -> int:
        """Revoke every token, the fixed one included; IAM issues valid new ones."""
        return self.tokens.expire_all()

    def issue_token(self) -> str:
        """A token as IAM would issue it for this project (a shortcut for tests)."""
        value, _ = self.tokens.issue(self.project_id, self.clock.wall_ns(), self.token_lifetime)
        return value

    def schedule(
        self,
        kind: str,
        blockchain: str,
        *,
        outcome: str = "finished",
        at_substep: str | None = None,
        delay: float = 0.0,
    ) -> str:
        """Add an operation that exists ``delay`` simulated seconds from now; returns its id.

        Its creation time lies within the second before that instant.
        """
        with self._lock:
            scenario = self.scenario
            # creation times carry up to a second of nanosecond jitter: start a second early
            # so the operation exists at ``now + delay``
            at = (self.clock.now_ns() - scenario.origin_ns) / NS_PER_SECOND + delay - 1.0
            spec = OperationSpec(at, kind, blockchain, outcome, at_substep)
            self.scenario = scenario.with_operations(spec)
            plan = self.scenario.story_plans[-1]
        return plan.operation_id

    def story_remaining(self) -> float:
        """Simulated seconds until every story operation is terminal (0 once they are)."""
        with self._lock:
            settled = self.scenario.story_settled_ns
        return max(settled - self.clock.now_ns(), 0) / NS_PER_SECOND

    def requests(self) -> list[RequestLogEntry]:
        with self._lock:
            return list(self._log)

    def state(self) -> dict[str, Any]:
        now = self.clock.now_ns()
        with self._lock:
            scenario = self.scenario
        records = scenario.records_at(now)
        return {
            "now_ns": now,
            "wall_ns": self.clock.wall_ns(),
            "origin_ns": scenario.origin_ns,
            "story_settled_ns": scenario.story_settled_ns,
            "seed": self.seed,
            "speed": self.speed,
            "project_id": self.project_id,
            "domain_id": self.domain_id,
            "count": len(records),
            "operation_records": records,
            "pending_faults": [fault.to_dict() for fault in self.faults.pending()],
            "tokens": self.tokens.counts(self.clock.wall_ns()),
            "requests": len(self._log),
        }

    # -- configuration for clients ---------------------------------------------------------------

    def config_snippet(self, auth: str = "password", *, name: str = "simulator") -> str:
        """A complete ``[[sources]]`` block for ``notifier.toml``."""
        credentials = self.credentials
        lines = [
            "[[sources]]",
            f"name = {_toml(name)}",
            f"endpoint = {_toml(self.endpoint)}",
            f"project_id = {_toml(self.project_id)}",
            "",
            "[sources.auth]",
            f"type = {_toml(auth)}",
        ]
        if auth == "token":
            lines.append(f"token = {_toml(credentials.token)}")
        elif auth == "password":
            lines += [
                f"iam_endpoint = {_toml(self.iam_endpoint)}",
                f"domain = {_toml(credentials.domain)}",
                f"username = {_toml(credentials.username)}",
                f"password = {_toml(credentials.password)}",
            ]
        elif auth == "aksk":
            lines += [
                f"access_key = {_toml(credentials.access_key)}",
                f"secret_key = {_toml(credentials.secret_key)}",
            ]
        else:
            raise ValueError(f"auth must be one of {AUTH_TYPES}, not {auth!r}")
        return "\n".join(lines) + "\n"
