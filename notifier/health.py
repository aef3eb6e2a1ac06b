"""Service health: a small metrics registry and the optional ``[service.http]`` listener.

``/metrics`` answers in the Prometheus text exposition format (0.0.4); ``/healthz`` answers
200 while polling is fresh and 503 when it is stale (the loop or a source stopped making
progress), with a JSON body saying why. Nothing else is served. The listener runs in a
daemon thread and binds 127.0.0.1 unless the config says otherwise.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from notifier import __version__

logger = logging.getLogger(__name__)

PREFIX: Final = "bcs_notifier"
CONTENT_TYPE_METRICS: Final = "text/plain; version=0.0.4; charset=utf-8"
POLL_DURATION_BUCKETS: Final = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Labels = tuple[tuple[str, str], ...]


def _labels(values: Mapping[str, str]) -> Labels:
    return tuple(sorted(values.items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _render_labels(labels: Labels, extra: Sequence[tuple[str, str]] = ()) -> str:
    pairs = [*labels, *extra]
    if not pairs:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in pairs) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


@dataclass
class _Family:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    samples: dict[Labels, float] = field(default_factory=dict)
    buckets: tuple[float, ...] = ()
    histograms: dict[Labels, list[float]] = field(default_factory=dict)  # counts..., sum, count


class Metrics:
    """Counters, gauges and histograms with labels; thread-safe; renders the text format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, _Family] = {}
        self._define()

    def _define(self) -> None:
        self.counter("polls_total", "Polls of a source, successful or not.")
        self.counter("poll_errors_total", "Failed polls by source and kind of error.")
        self.counter("events_total", "Events recorded, by type.")
        self.counter("deliveries_total", "Delivery attempts by result (sent, retry, dead).")
        self.gauge("outbox_depth", "Deliveries waiting in the outbox (pending).")
        self.gauge("outbox_dead", "Dead-lettered deliveries.")
        self.gauge("outbox_oldest_pending_age_seconds", "Age of the oldest pending delivery.")
        self.gauge("source_up", "1 when the last poll of the source succeeded.")
        self.gauge("source_consecutive_failures", "Failed polls in a row, by source.")
        self.gauge(
            "source_last_success_timestamp_seconds", "Unix time of the last successful poll."
        )
        self.gauge("last_cycle_timestamp_seconds", "Unix time the run loop last went round.")
        self.gauge("database_lost", "1 once the SQLite database file was deleted or replaced.")
        self.gauge("build_info", "Always 1; the version is a label.")
        self.gauge("leader", "1 while this instance leads (polls) the source, by source.")
        self.histogram(
            "poll_duration_seconds", "Time one poll took, by source.", POLL_DURATION_BUCKETS
        )
        self.set("build_info", 1, version=__version__)

    def counter(self, name: str, help_text: str) -> None:
        self._families[name] = _Family(name, "counter", help_text)

    def gauge(self, name: str, help_text: str) -> None:
        self._families[name] = _Family(name, "gauge", help_text)

    def histogram(self, name: str, help_text: str, buckets: Iterable[float]) -> None:
        self._families[name] = _Family(name, "histogram", help_text, buckets=tuple(buckets))

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = _labels(labels)
        with self._lock:
            family = self._families[name]
            family.samples[key] = family.samples.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._families[name].samples[_labels(labels)] = float(value)

    def remove(self, name: str, **labels: str) -> None:
        with self._lock:
            self._families[name].samples.pop(_labels(labels), None)

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = _labels(labels)
        with self._lock:
            family = self._families[name]
            state = family.histograms.setdefault(key, [0.0] * (len(family.buckets) + 2))
            for index, bound in enumerate(family.buckets):
                if value <= bound:
                    state[index] += 1
            state[-2] += value
            state[-1] += 1

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when never set); histograms give their count."""
        key = _labels(labels)
        with self._lock:
            family = self._families[name]
            if family.kind == "histogram":
                state = family.histograms.get(key)
                return state[-1] if state else 0.0
            return family.samples.get(key, 0.0)

    def render(self) -> str:
        out: list[str] = []
        with self._lock:
            for family in self._families.values():
                name = f"{PREFIX}_{family.name}"
                out.append(f"# HELP {name} {family.help}")
                out.append(f"# TYPE {name} {family.kind}")
                if family.kind == "histogram":
                    for labels, state in sorted(family.histograms.items()):
                        for index, bound in enumerate(family.buckets):
                            extra = (("le", _number(bound)),)
                            out.append(
                                f"{name}_bucket{_render_labels(labels, extra)} "
                                f"{_number(state[index])}"
                            )
                        inf = (("le", "+Inf"),)
                        out.append(
                            f"{name}_bucket{_render_labels(labels, inf)} {_number(state[-1])}"
                        )
                        out.append(f"{name}_sum{_render_labels(labels)} {_number(state[-2])}")
                        out.append(f"{name}_count{_render_labels(labels)} {_number(state[-1])}")
                    continue
                for labels, value in sorted(family.samples.items()):
                    out.append(f"{name}{_render_labels(labels)} {_number(value)}")
        return "\n".join(out) + "\n"


@dataclass(frozen=True)
class HealthReport:
    healthy: bool
    reasons: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        document = {
            "status": "ok" if self.healthy else "stale",
            "reasons": list(self.reasons),
            **self.details,
        }
        return json.dumps(document, sort_keys=True)


class HealthServer:
    """``/healthz`` and ``/metrics`` over HTTP in a daemon thread."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        metrics: Metrics,
        health: Callable[[], HealthReport],
    ) -> None:
        handler = _make_handler(metrics, health)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="bcs-notifier-http",
            daemon=True,
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()
        logger.info("health endpoint listening on http://%s:%d", *self.address)

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()


def _make_handler(
    metrics: Metrics, health: Callable[[], HealthReport]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"bcs-notifier/{__version__}"
        sys_version = ""

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, metrics.render(), CONTENT_TYPE_METRICS)
            elif path == "/healthz":
                try:
                    report = health()
                except Exception as exc:  # a broken probe is an unhealthy service
                    logger.exception("health check failed")
                    report = HealthReport(False, (f"health check failed: {type(exc).__name__}",))
                self._answer(
                    200 if report.healthy else 503, report.to_json() + "\n", "application/json"
                )
            else:
                self._answer(
                    404, "not found: try /healthz or /metrics\n", "text/plain; charset=utf-8"
                )

        def do_HEAD(self) -> None:
            self.do_GET()

        def _answer(self, status: int, body: str, content_type: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("http %s - %s", self.address_string(), format % args)

    return Handler
