"""HTTP client for ``GET {endpoint}/v2/{project_id}/operation/record``.

:class:`BcsClient` makes one logical fetch per call with bounded retries, and turns every
failure into a :class:`~notifier.errors.SourceError` subclass; no httpx exception leaves
:meth:`BcsClient.fetch`::

    network error / timeout        -> TransportError     (retried)
    HTTP 5xx                       -> ApiError           (retried)
    HTTP 429                       -> ThrottledError     (retried; Retry-After honoured, capped)
    HTTP 401 / 403                 -> AuthError          (password auth: new token, once)
    HTTP 401 on an AK/SK request   -> SignatureRejected  (never retried, see below)
    other HTTP 4xx / 3xx           -> ApiError
    body over max_response_bytes   -> ResponseTooLarge
    body not a JSON object         -> InvalidResponse

Every error carries the ``X-Request-Id`` response header when there was a response. Reading
one response (size caps, body decoding, the error mapping) is :mod:`notifier.bcs.response`;
this module sends the requests, retries them and holds the client's state (token cache,
signature rest, clock-skew warning).

After a ``SignatureRejected`` the key must rest: five bad signatures in a row lock it for
5 minutes. The client refuses to sign another request for ``SignatureRejected.min_backoff``
seconds (300) and raises ``SignatureRejected`` again without sending anything;
:attr:`BcsClient.retry_not_before` tells the service loop when the next try makes sense (it
also covers an IAM login refused under password auth).
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Final, Self, TypeVar
from urllib.parse import quote, urlsplit

import httpx

from notifier import __version__
from notifier.backoff import compute_backoff
from notifier.bcs import signing
from notifier.bcs.auth import AkSkAuth, BcsAuth, build_auth
from notifier.bcs.errors import MAX_MESSAGE, REQUEST_ID_HEADER, signature_echo
from notifier.bcs.response import (
    ERROR_BODY_LIMIT,
    BodyTooLarge,
    Fetched,
    Streamed,
    cap_response,
    date_ns,
    parse_body,
    read_body,
    record_too_large,
    response_error,
    retry_after,
    too_large,
    transport_error,
)
from notifier.bcs.sanitize import decode_json
from notifier.bcs.stream import DecodeWhole, RecordStream, RecordTooLarge
from notifier.clock import SYSTEM_CLOCK, Clock, epoch_seconds, iso, ms_from_seconds
from notifier.config import SourceConfig
from notifier.errors import ApiError, SignatureRejected, SourceError, TransportError
from notifier.text import one_line

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "CLOCK_SKEW_WARNING",
    "ERROR_BODY_LIMIT",
    "RECORD_PATH",
    "THROTTLE_BASE",
    "USER_AGENT",
    "BcsClient",
    "Fetched",
    "Streamed",
    "decode_json",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

RECORD_PATH: Final = "/v2/{project_id}/operation/record"
USER_AGENT: Final = f"bcs-notifier/{__version__}"
#: First back-off after a network error or 5xx; doubles per retry, with jitter.
BACKOFF_BASE: Final = 0.5
#: First back-off after a 429 without Retry-After ("retry after a few seconds").
THROTTLE_BASE: Final = 2.0
#: No single back-off inside one fetch is longer than this (Retry-After included).
BACKOFF_CAP: Final = 30.0
#: Warn when the server's Date differs from the local clock by more than this (seconds).
CLOCK_SKEW_WARNING: Final = 600.0


@dataclass(frozen=True, slots=True)
class _Retry:
    """A failed attempt that may be retried; ``delay`` is the server's advice, if any."""

    error: SourceError
    delay: float | None = None


class BcsClient:
    """Fetches the operation records of one ``[[sources]]`` entry.

    Query parameters: every filter of ``source.filters`` with exactly one value is sent
    (``blockchain_id=...``); filters with several values are **not** sent, because the API
    takes one value per parameter. The answer is then a superset of what the filters select,
    and the pipeline filters those records locally. The query string is built with
    :func:`notifier.bcs.signing.canonical_query` (sorted, percent-encoded) for every auth type,
    so the query sent is byte for byte the one an AK/SK signature covers.

    ``transport`` replaces httpx's network transport (tests, the simulator); ``clock`` gives the
    wall time (token expiry, ``X-Sdk-Date``, Retry-After dates, skew check; kept in epoch
    seconds here, the unit of every API time it is compared with); ``sleep`` waits
    between retries; ``jitter`` returns a float in [0, 1) that spreads the back-offs.

    Not thread-safe: use one client per thread. Close it (or use it as a context manager).
    """

    def __init__(
        self,
        source: SourceConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        clock: Clock = SYSTEM_CLOCK,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        auth: BcsAuth | None = None,
    ) -> None:
        self.source = source
        self._transport = transport
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self.auth = auth or build_auth(source, clock=clock, user_agent=USER_AGENT)
        self._http: httpx.Client | None = None
        self._skew_warned = False
        self._signature_rejection: SignatureRejected | None = None
        self._signature_rest_until = 0.0
        project = quote(source.project_id, safe="")
        self.url = source.endpoint.rstrip("/") + RECORD_PATH.format(project_id=project)
        pairs = [(key, values[0]) for key, values in source.filters.items() if len(values) == 1]
        self.query = signing.canonical_query(pairs)
        self._host = urlsplit(source.endpoint).netloc

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"BcsClient(source={self.source.name!r}, auth={self.auth.kind!r}, url={self.url!r})"

    @property
    def retry_not_before(self) -> float | None:
        """Epoch seconds before which a fetch cannot succeed without risk, or None.

        Set after a ``SignatureRejected`` (now + ``SignatureRejected.min_backoff``) and after
        IAM refused the password; the service loop should not poll this source earlier.
        """
        now = epoch_seconds(self._clock)
        candidates = [self._signature_rest_until, self.auth.retry_not_before or 0.0]
        latest = max(candidates)
        return latest if latest > now else None

    def clear_rest(self) -> None:
        """Forget a refused signature or IAM login: the next fetch tries again (the operator
        fixed the credentials and ended the rest)."""
        self._signature_rejection = None
        self._signature_rest_until = 0.0
        self.auth.clear_rest()

    # -- fetching ----------------------------------------------------------------------------

    def fetch(self) -> Fetched:
        """The operation records as parsed JSON, or a ``SourceError`` subclass."""
        outcome = self._fetch(self.query, None)
        assert isinstance(outcome, Fetched)  # noqa: S101 - no consume: a whole body
        return outcome

    def fetch_records(
        self,
        consume: Callable[[RecordStream], T],
        params: Sequence[tuple[str, str]] = (),
    ) -> Streamed[T]:
        """``consume`` applied to the records of one answer, decoded as they arrive.

        ``params`` are sent besides the source's single-valued filters (e.g.
        ``operation_status``). ``consume`` runs once per attempt on a fresh stream (a
        retry starts over), so it must keep its state to itself; a ``SourceError`` it raises
        ends the fetch. A record above ``max_record_bytes`` raises ``ResponseTooLarge``.
        """
        filters = self.source.filters.items()
        pairs = [(key, values[0]) for key, values in filters if len(values) == 1]
        query = signing.canonical_query([*pairs, *params])

        try:
            outcome = self._fetch(query, consume)
        except DecodeWhole:
            logger.info(
                "source %s: the answer holds what the streaming decoder cannot read (a number "
                "beyond 64 bits, text that is not strict UTF-8); fetching it again, decoded whole",
                self.source.name,
            )
            outcome = self._fetch(query, consume, exact_integers=True)
        assert isinstance(outcome, Streamed)  # noqa: S101 - consume given
        return outcome

    def _fetch(
        self,
        query: str,
        consume: Callable[[RecordStream], Any] | None,
        *,
        exact_integers: bool = False,
    ) -> Fetched | Streamed[Any]:
        self._check_signature_rest()
        attempts = self.source.max_retries + 1
        for attempt in range(1, attempts + 1):
            outcome = self._attempt(query, consume, exact_integers)
            if isinstance(outcome, Fetched | Streamed):
                if attempt > 1:
                    logger.info(
                        "source %s: fetch succeeded on attempt %d", self.source.name, attempt
                    )
                return outcome
            if attempt == attempts:
                if attempts > 1:
                    logger.warning(
                        "source %s: giving up after %d attempts: %s",
                        self.source.name,
                        attempts,
                        outcome.error.one_line(),
                    )
                raise outcome.error
            delay = self._delay(attempt, outcome)
            logger.warning(
                "source %s: %s; retry %d of %d in %.1f s",
                self.source.name,
                outcome.error.one_line(),
                attempt,
                attempts - 1,
                delay,
            )
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(
                transport=self._transport,
                timeout=httpx.Timeout(self.source.timeout),
                verify=self._verify(),
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
                follow_redirects=False,
                event_hooks={"response": [self._on_response]},
            )
        return self._http

    def _verify(self) -> ssl.SSLContext | bool:
        if not self.source.verify_tls:
            return False
        if self.source.ca_file is None:
            return True
        try:
            return ssl.create_default_context(cafile=self.source.ca_file)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise TransportError(
                f"cannot load ca_file {self.source.ca_file}: {one_line(reason, MAX_MESSAGE)}"
            ) from exc

    def _attempt(
        self, query: str, consume: Callable[[RecordStream], Any] | None, exact_integers: bool
    ) -> Fetched | Streamed[Any] | _Retry:
        client = self._client()
        request = client.build_request("GET", self.url)
        if query:
            request.url = request.url.copy_with(query=query.encode("ascii"))
        response: httpx.Response | None = None
        try:
            response = client.send(request, auth=self.auth, stream=True)
            try:
                if consume is not None and response.is_success:
                    return self._consume(response, consume, exact_integers)
                return self._handle(response)
            finally:
                response.close()
        except BodyTooLarge as exc:
            raise too_large(exc, self._host) from exc
        except RecordTooLarge as exc:
            request_id = response.headers.get(REQUEST_ID_HEADER) if response else None
            raise record_too_large(exc, self._host, request_id) from exc
        except ApiError as exc:
            # raised by an auth flow (IAM answered an error); 429 and 5xx are worth a retry
            if exc.status == 429 or exc.status >= 500:
                return _Retry(exc)
            raise
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, httpx.CookieConflict) as exc:
            request_id = response.headers.get(REQUEST_ID_HEADER) if response else None
            error, retryable = transport_error(
                exc,
                request_id,
                host=self._host,
                timeout=self.source.timeout,
                secrets=self.auth.secrets(),
            )
            if retryable:
                return _Retry(error)
            raise error from exc

    def _handle(self, response: httpx.Response) -> Fetched | _Retry:
        status = response.status_code
        request_id = response.headers.get(REQUEST_ID_HEADER)
        if 200 <= status < 300:
            body = read_body(response, self.source.max_response_bytes, request_id)
            return Fetched(
                body=parse_body(body, response, request_id),
                request_id=request_id,
                size=len(body),
                status=status,
                server_time_ns=date_ns(response.headers.get("Date")),
            )
        body = read_body(response, ERROR_BODY_LIMIT, request_id, truncate=True)
        error = response_error(
            response, body, signed=self.auth.signed, url=self.url, secrets=self.auth.secrets()
        )
        if isinstance(error, SignatureRejected):
            self._rest_after_rejection(error, body)
            raise error
        if status == 429:
            return _Retry(error, retry_after(response.headers, epoch_seconds(self._clock)))
        if status >= 500:
            return _Retry(error)
        raise error

    def _consume(
        self,
        response: httpx.Response,
        consume: Callable[[RecordStream], Any],
        exact_integers: bool,
    ) -> Streamed[Any]:
        request_id = response.headers.get(REQUEST_ID_HEADER)
        stream = RecordStream(
            response.iter_bytes(),
            max_record_bytes=self.source.max_record_bytes,
            max_body_bytes=self.source.max_response_bytes,
            request_id=request_id,
            exact_integers=exact_integers,
        )
        value = consume(stream)
        return Streamed(
            value,
            request_id,
            stream.size,
            response.status_code,
            server_time_ns=date_ns(response.headers.get("Date")),
        )

    # -- response hook: size cap, clock skew ---------------------------------------------------

    def _on_response(self, response: httpx.Response) -> None:
        """Runs for every response (IAM and intermediate auth answers included)."""
        cap_response(response, self.source.max_response_bytes)
        self._check_clock(response.headers.get("Date"))

    def _check_clock(self, date_header: str | None) -> None:
        if self._skew_warned or not date_header:
            return
        try:
            server = parsedate_to_datetime(date_header)
        except (TypeError, ValueError):
            return
        if server.tzinfo is None:
            server = server.replace(tzinfo=UTC)
        skew = server.timestamp() - epoch_seconds(self._clock)
        if abs(skew) > CLOCK_SKEW_WARNING:
            self._skew_warned = True
            logger.warning(
                "source %s: the server's clock (%s) and the local clock differ by %d s; "
                "fix the local time (NTP): AK/SK signatures are refused beyond 15 minutes of "
                "skew and token expiry is misjudged",
                self.source.name,
                date_header,
                round(skew),
            )

    # -- retries -------------------------------------------------------------------------------

    def _delay(self, attempt: int, outcome: _Retry) -> float:
        if outcome.delay is not None:
            return min(outcome.delay, BACKOFF_CAP)
        throttled = isinstance(outcome.error, ApiError) and outcome.error.status == 429
        base = THROTTLE_BASE if throttled else BACKOFF_BASE
        return compute_backoff(
            attempt, base=base, cap=BACKOFF_CAP, jitter="upward", draw=self._jitter()
        )

    # -- AK/SK rejection -----------------------------------------------------------------------

    def _rest_after_rejection(self, error: SignatureRejected, body: bytes) -> None:
        self._signature_rejection = error
        self._signature_rest_until = epoch_seconds(self._clock) + SignatureRejected.min_backoff
        echo = signature_echo(body, self.auth.secrets())
        ours = self.auth.describe_last_request() if isinstance(self.auth, AkSkAuth) else None
        logger.error(
            "source %s: the AK/SK signature was rejected: %s; no signed request before %s "
            "(five rejections lock the key for 5 minutes). Check the access/secret key pair, "
            "the security token of temporary credentials and the local clock. "
            "Gateway canonical request: %s. Ours: %s",
            self.source.name,
            error.one_line(),
            iso(ms_from_seconds(self._signature_rest_until), "offset"),
            echo.replace("\n", "\\n") if echo else "(not given)",
            ours or "(none)",
        )

    def _check_signature_rest(self) -> None:
        previous = self._signature_rejection
        if previous is None:
            return
        if epoch_seconds(self._clock) >= self._signature_rest_until:
            self._signature_rejection = None
            return
        raise SignatureRejected(
            status=previous.status,
            code=previous.code,
            message=(
                f"{previous.error_message} (signature rejected earlier; not signing again "
                f"before {iso(ms_from_seconds(self._signature_rest_until), 'offset')})"
            ),
            request_id=previous.request_id,
            url=previous.url,
        )
