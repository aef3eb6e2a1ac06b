"""The simulated API gateway: routing, authentication, faults and the HTTP byte layer.

:class:`Gateway` answers :class:`~notifier.simulator.auth.ReceivedRequest` values in
:meth:`Gateway.handle`; :class:`~notifier.simulator.server.Simulator` is a gateway that holds
the state it reads (clock, scenario, tokens, keys, faults, request log). The stdlib
``ThreadingHTTPServer`` around it (:class:`SimServer`) only moves bytes. Routes:

``GET  /v2/{project_id}/operation/record``  the BCS API (token or AK/SK)
``POST /v3/auth/tokens``                    IAM password authentication -> ``X-Subject-Token``
``GET  /_sim/state``                        the true current records, clocks, pending faults
``GET  /_sim/requests``                     the request log (newest last)
``POST /_sim/advance?seconds=N``            move the clock
``POST /_sim/faults?kind=K&count=N&...``    inject faults (``DELETE`` clears them)
``POST /_sim/expire-tokens``                revoke every token
``POST /_sim/operations``                   schedule an operation (JSON body)

The ``/_sim/`` control endpoints need no credentials and are never faulted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import parse_qsl

from notifier.simulator.auth import (
    TOKEN_MISSING,
    AkskVerifier,
    Credentials,
    Principal,
    ReceivedRequest,
    Rejection,
    TokenStore,
)
from notifier.simulator.clock import SimClock
from notifier.simulator.faults import BODY_FAULTS, REQUEST_FAULTS, Fault, FaultKind, FaultQueue
from notifier.simulator.scenario import derived_hex

#: the request lines keep the logger name they were always written under
logger = logging.getLogger("notifier.simulator.server")

RECORD_PATH: Final = re.compile(r"^/v2/([^/]+)/operation/record/?$")
TOKEN_PATH: Final = re.compile(r"^/v3/auth/tokens/?$")
MAX_BODY: Final = 1024 * 1024
JSON_TYPE: Final = "application/json;charset=UTF-8"
FILTER_VALUES: Final[dict[str, frozenset[str] | None]] = {
    "blockchain_id": None,
    "operation_status": frozenset({"waiting", "processing", "finished", "failed", "stop"}),
    "resource_type": frozenset({"BCSSVC01", "BCSSVC02", "PLUGIN01", "PLUGIN02", "PLUGIN03"}),
    "operation_type": frozenset({"99", "00", "01", "91", "02", "03", "04", "05"}),
    "operation_id": None,
}
BAD_GATEWAY_PAGE: Final = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


@dataclass
class SimResponse:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    delay: float = 0.0  # real seconds to wait before answering
    disconnect: bool = False  # close the connection without answering


@dataclass(frozen=True, slots=True)
class RequestLogEntry:
    wall_ns: int
    method: str
    path: str
    query: str
    status: int | None  # None: disconnected on purpose
    auth: str  # token, iam-token, aksk, aksk-temporary, none, rejected, control
    fault: str | None
    request_id: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "wall_ns": self.wall_ns,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "status": self.status,
            "auth": self.auth,
            "fault": self.fault,
            "request_id": self.request_id,
        }


def _json(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def _iso(nanoseconds: int) -> str:
    """``2020-01-04T09:05:22.701000Z``: IAM's timestamp format."""
    moment = datetime.fromtimestamp(nanoseconds // 1000 / 1_000_000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Gateway(ABC):
    """The routes of the simulated BCS, IAM and control APIs over a simulator's state.

    The attributes are :class:`~notifier.simulator.server.Simulator`'s; the abstract
    methods are its Python control API, which the ``/_sim/`` endpoints call.
    """

    # -- the simulator's state the routes read ---------------------------------------------------

    clock: SimClock
    seed: int
    region: str
    project_id: str
    domain_id: str
    token_lifetime: float
    credentials: Credentials
    tokens: TokenStore
    verifier: AkskVerifier
    faults: FaultQueue
    _log: deque[RequestLogEntry]
    _lock: threading.Lock

    @property
    @abstractmethod
    def stopping(self) -> threading.Event:
        """Set while the server shuts down: a deliberately slow answer stops waiting."""

    @abstractmethod
    def advance(self, seconds: float) -> None: ...

    @abstractmethod
    def records(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    def clear_faults(self) -> int: ...

    @abstractmethod
    def expire_tokens(self) -> int: ...

    @abstractmethod
    def schedule(
        self,
        kind: str,
        blockchain: str,
        *,
        outcome: str = "finished",
        at_substep: str | None = None,
        delay: float = 0.0,
    ) -> str: ...

    @abstractmethod
    def requests(self) -> list[RequestLogEntry]: ...

    @abstractmethod
    def state(self) -> dict[str, Any]: ...

    # -- request handling ------------------------------------------------------------------------

    def handle(self, request: ReceivedRequest) -> SimResponse:
        """Answer one request (thread-safe); the HTTP layer only moves bytes."""
        request_id = uuid.uuid4().hex
        outcome = _Outcome(request_id)
        if request.path.startswith("/_sim/"):
            outcome.auth = "control"
            response = self._control(request, outcome)
        elif TOKEN_PATH.match(request.path):
            response = self._with_faults("iam", request, outcome, self._iam)
        elif match := RECORD_PATH.match(request.path):
            project_id = match.group(1)

            def records(request: ReceivedRequest, outcome: _Outcome) -> SimResponse:
                return self._records(project_id, request, outcome)

            response = self._with_faults("bcs", request, outcome, records)
        else:
            response = self._gateway_error(
                404,
                "APIGW.0101",
                "The API does not exist or has not been published in the environment",
                request_id,
            )
        response.headers.append(("X-Request-Id", request_id))
        entry = RequestLogEntry(
            wall_ns=self.clock.wall_ns(),
            method=request.method,
            path=request.path,
            query=request.query,
            status=None if response.disconnect else response.status,
            auth=outcome.auth,
            fault=outcome.fault,
            request_id=request_id,
        )
        with self._lock:
            self._log.append(entry)
        logger.info(
            "%s %s%s -> %s%s",
            request.method,
            request.path,
            f"?{request.query}" if request.query else "",
            "disconnect" if response.disconnect else response.status,
            f" (fault {outcome.fault})" if outcome.fault else "",
        )
        return response

    def _with_faults(
        self,
        target: str,
        request: ReceivedRequest,
        outcome: _Outcome,
        answer: Callable[[ReceivedRequest, _Outcome], SimResponse],
    ) -> SimResponse:
        fault = self.faults.take(target, REQUEST_FAULTS)
        delay = 0.0
        if fault is not None:
            outcome.fault = str(fault.kind)
            if fault.kind is FaultKind.SLOW:
                delay = fault.delay
            else:
                return self._fault_response(fault, outcome.request_id)
        response = answer(request, outcome)
        response.delay = delay
        return response

    def _fault_response(self, fault: Fault, request_id: str) -> SimResponse:
        kind = fault.kind
        if kind is FaultKind.DISCONNECT:
            return SimResponse(0, disconnect=True)
        if kind is FaultKind.BAD_GATEWAY:
            return SimResponse(
                502, BAD_GATEWAY_PAGE, [("Content-Type", "text/html; charset=utf-8")]
            )
        if kind is FaultKind.THROTTLED:
            response = self._gateway_error(
                429,
                "APIGW.0308",
                "The throttling threshold has been reached: policy user over ratelimit,"
                "limit:100,time:1 minute",
                request_id,
            )
            if fault.retry_after is not None:
                response.headers.append(("Retry-After", str(fault.retry_after)))
            return response
        if kind is FaultKind.UNAUTHORIZED:
            return _bcs_error(401, "BCS.4010401", "Incorrect token or token resolution failed")
        if kind is FaultKind.FORBIDDEN:
            return _bcs_error(403, "BCS.4030403", "No permissions to request this method")
        return _bcs_error(500, "BCS.5000500", "Internal Server Error")

    @staticmethod
    def _gateway_error(status: int, code: str, message: str, request_id: str) -> SimResponse:
        body = {"error_code": code, "error_msg": message, "request_id": request_id}
        return SimResponse(status, _json(body), [("Content-Type", JSON_TYPE)])

    def _authenticate(self, request: ReceivedRequest) -> Principal | Rejection:
        token = request.headers.get("x-auth-token")
        if token is not None:
            return self.tokens.check(token.strip(), self.clock.wall_ns())
        if "authorization" in request.headers:
            return self.verifier.verify(request, self.clock.wall_ns())
        return Rejection(401, "APIGW.0301", TOKEN_MISSING)

    def _records(self, project_id: str, request: ReceivedRequest, outcome: _Outcome) -> SimResponse:
        if request.method != "GET":
            return self._gateway_error(
                404,
                "APIGW.0101",
                "The API does not exist or has not been published in the environment",
                outcome.request_id,
            )
        principal = self._authenticate(request)
        if isinstance(principal, Rejection):
            outcome.auth = "rejected"
            return self._gateway_error(
                principal.status, principal.code, principal.message, outcome.request_id
            )
        outcome.auth = principal.how
        if project_id != self.project_id:
            return _bcs_error(404, "BCS.4040404", "Not Found:the url is not found")
        filters: dict[str, str] = {}
        for key, value in parse_qsl(request.query, keep_blank_values=True):
            if key not in FILTER_VALUES or key in filters or value == "":
                continue
            allowed = FILTER_VALUES[key]
            if allowed is not None and value not in allowed:
                return _bcs_error(400, "BCS.4000400", f"Invalid parameter: {key}={value}")
            filters[key] = value
        records = [
            record
            for record in self.records()
            if all(record[key] == value for key, value in filters.items())
        ]
        count = len(records)
        fault = self.faults.take("bcs", BODY_FAULTS)
        if fault is not None:
            outcome.fault = (f"{outcome.fault}+" if outcome.fault else "") + str(fault.kind)
            if fault.kind is FaultKind.COUNT:
                records = records[: max(count - fault.drop, 0)]
                count = max(count, len(records) + 1)
        body = _json({"count": count, "operation_records": records})
        if fault is not None and fault.kind is FaultKind.TRUNCATED:
            body = body[: len(body) // 2]
        return SimResponse(200, body, [("Content-Type", JSON_TYPE)])

    def _iam(self, request: ReceivedRequest, outcome: _Outcome) -> SimResponse:
        if request.method != "POST":
            return self._gateway_error(
                404,
                "APIGW.0101",
                "The API does not exist or has not been published in the environment",
                outcome.request_id,
            )
        try:
            document = json.loads(request.body)
            identity = document["auth"]["identity"]
            user = identity["password"]["user"]
            name, password = str(user["name"]), str(user["password"])
            domain = user["domain"]
            methods = identity["methods"]
            scope = document["auth"]["scope"]["project"]
        except (ValueError, KeyError, TypeError):
            return _iam_error(400, "IAM.0011", "Request body is invalid.")
        if not isinstance(methods, list) or "password" not in methods:
            return _iam_error(400, "IAM.0011", "Request body is invalid.")
        credentials = self.credentials
        domain_ok = isinstance(domain, dict) and (
            domain.get("name") == credentials.domain or domain.get("id") == self.domain_id
        )
        if not (domain_ok and name == credentials.username and password == credentials.password):
            outcome.auth = "rejected"
            error = {
                "error": {
                    "code": 401,
                    "message": "The username or password is wrong.",
                    "title": "Unauthorized",
                }
            }
            return SimResponse(401, _json(error), [("Content-Type", JSON_TYPE)])
        if not isinstance(scope, dict) or not (
            scope.get("id") == self.project_id or scope.get("name") == self.region
        ):
            return _iam_error(400, "IAM.0007", "Request parameter scope.project is invalid.")
        outcome.auth = "password"
        now = self.clock.wall_ns()
        value, expires = self.tokens.issue(self.project_id, now, self.token_lifetime)
        user_id = derived_hex(32, self.seed, "user")
        body_data = {
            "token": {
                "expires_at": _iso(expires),
                "issued_at": _iso(now),
                "methods": ["password"],
                "project": {
                    "domain": {"id": self.domain_id, "name": credentials.domain},
                    "id": self.project_id,
                    "name": self.region,
                },
                "roles": [{"id": derived_hex(32, self.seed, "role"), "name": "bcs_adm"}],
                "user": {
                    "domain": {"id": self.domain_id, "name": credentials.domain},
                    "id": user_id,
                    "name": credentials.username,
                    "password_expires_at": "",
                },
            }
        }
        body = _json(body_data)
        fault = self.faults.take("iam", frozenset({FaultKind.TRUNCATED}))
        if fault is not None:
            outcome.fault = (f"{outcome.fault}+" if outcome.fault else "") + str(fault.kind)
            body = body[: len(body) // 2]
        return SimResponse(201, body, [("Content-Type", JSON_TYPE), ("X-Subject-Token", value)])

    # -- /_sim/ control endpoints -----------------------------------------------------------------

    def _control(self, request: ReceivedRequest, outcome: _Outcome) -> SimResponse:
        query = dict(parse_qsl(request.query, keep_blank_values=True))
        route = (request.method, request.path.rstrip("/"))
        try:
            if route == ("GET", "/_sim/state"):
                return _ok(self.state())
            if route == ("GET", "/_sim/requests"):
                return _ok({"requests": [entry.to_dict() for entry in self.requests()]})
            if route == ("POST", "/_sim/advance"):
                self.advance(float(query.get("seconds", "")))
                return _ok({"now_ns": self.clock.now_ns(), "wall_ns": self.clock.wall_ns()})
            if route == ("POST", "/_sim/faults"):
                fault, count = Fault.from_query(query)
                self.faults.inject(fault, count)
                return _ok({"pending_faults": [item.to_dict() for item in self.faults.pending()]})
            if route == ("DELETE", "/_sim/faults"):
                return _ok({"cleared": self.clear_faults()})
            if route == ("POST", "/_sim/expire-tokens"):
                return _ok({"expired": self.expire_tokens()})
            if route == ("POST", "/_sim/operations"):
                spec = json.loads(request.body or b"{}")
                if not isinstance(spec, dict):
                    raise ValueError("the body must be a JSON object")
                operation_id = self.schedule(
                    str(spec["kind"]),
                    str(spec["blockchain"]),
                    outcome=str(spec.get("outcome", "finished")),
                    at_substep=spec.get("at_substep"),
                    delay=float(spec.get("delay", 0)),
                )
                return _ok({"operation_id": operation_id}, status=201)
        except (ValueError, KeyError, TypeError) as exc:
            return _ok({"error": f"bad control request: {exc}"}, status=400)
        return _ok({"error": f"no control endpoint {request.method} {request.path}"}, status=404)


@dataclass
class _Outcome:
    """What happened to one request, for the request log."""

    request_id: str
    auth: str = "none"
    fault: str | None = None


def _ok(data: Any, status: int = 200) -> SimResponse:
    return SimResponse(status, _json(data), [("Content-Type", "application/json")])


def _bcs_error(status: int, code: str, message: str) -> SimResponse:
    body = {"error_code": code, "error_msg": message}
    return SimResponse(status, _json(body), [("Content-Type", JSON_TYPE)])


def _iam_error(status: int, code: str, message: str) -> SimResponse:
    body = {"error_msg": message, "error_code": code}
    return SimResponse(status, _json(body), [("Content-Type", JSON_TYPE)])


# -- the thin HTTP layer -------------------------------------------------------------------


class SimServer(ThreadingHTTPServer):
    """A threading HTTP server that hands every request to ``simulator`` (a :class:`Gateway`)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], simulator: Gateway) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.simulator = simulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake handler threads blocked on idle keep-alive connections."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    server: SimServer
    protocol_version = "HTTP/1.1"
    server_version = "api-gateway"
    sys_version = ""
    timeout = 75  # idle keep-alive connections close like a gateway's would
    disable_nagle_algorithm = True  # headers and body are two writes

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def _serve(self) -> None:
        simulator = self.server.simulator
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            error = {"error_code": "APIGW.0201", "error_msg": "Request entity too large"}
            extra = [("Content-Type", JSON_TYPE), ("X-Request-Id", uuid.uuid4().hex)]
            self._write(SimResponse(413, _json(error), extra))
            return
        body = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), value)
        response = simulator.handle(ReceivedRequest(self.command, path, query, headers, body))
        if response.delay and simulator.stopping.wait(response.delay):
            self.close_connection = True
            return
        if response.disconnect:
            self.close_connection = True
            return
        self._write(response)

    def _write(self, response: SimResponse) -> None:
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def date_time_string(self, timestamp: float | None = None) -> str:
        return formatdate(self.server.simulator.clock.time(), usegmt=True)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)
