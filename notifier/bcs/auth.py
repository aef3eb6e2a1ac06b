"""The three ways to authenticate BCS requests, as ``httpx.Auth`` flows.

``token``
    :class:`TokenAuth` sends the configured user token as ``X-Auth-Token``. A 401 cannot be
    fixed from here: the client reports it as ``AuthError``.
``password``
    :class:`PasswordAuth` trades domain/user/password for a token at IAM
    (``POST {iam_endpoint}/v3/auth/tokens?nocatalog=true``, answer 201 with the token in the
    ``X-Subject-Token`` header and ``token.expires_at`` in the body), caches it until
    ``refresh_margin`` (30 min) before it expires, and on a 401 from BCS gets a new token and
    retries the request once. A refused login (4xx from IAM) is not sent again for
    ``failure_backoff`` seconds, so a wrong password cannot get the IAM user locked.
``aksk``
    :class:`AkSkAuth` signs every request with ``SDK-HMAC-SHA256`` (:mod:`notifier.bcs.signing`):
    ``Host``, ``X-Sdk-Date`` (from the injected clock, UTC), ``X-Project-Id``,
    ``X-Security-Token`` for temporary credentials, and ``Content-Type`` when a body is sent.
    The query string is rewritten to its canonical form so the sent query is the signed one.
    A 401 is never retried (five bad signatures lock the key for 5 minutes).

Every class keeps its secrets in :class:`~notifier.config.Secret`; none appears in a ``repr``,
a log line or an error message (:meth:`BcsAuth.secrets` lists them for redaction). The flows
are generators driven by one ``httpx.Client``; an auth object is not meant to be shared
between threads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator, Iterable
from datetime import UTC, datetime
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl

import httpx

from notifier.bcs import signing
from notifier.bcs.errors import api_error, header, json_or_none
from notifier.clock import SYSTEM_CLOCK, Clock, epoch_seconds, iso, ms_from_seconds
from notifier.config import Secret, SourceConfig
from notifier.errors import ApiError, AuthError
from notifier.redaction import REDACTED, redact
from notifier.text import one_line

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

TOKEN_HEADER: Final = "X-Auth-Token"  # noqa: S105 - a header name, not a secret
SUBJECT_TOKEN_HEADER: Final = "X-Subject-Token"  # noqa: S105 - a header name
IAM_TOKEN_PATH: Final = "/v3/auth/tokens"  # noqa: S105 - a URL path
IAM_CONTENT_TYPE: Final = "application/json;charset=UTF-8"
#: Refresh an IAM token this many seconds before it expires.
REFRESH_MARGIN: Final = 1800.0
#: Lifetime assumed when IAM's answer has no readable ``expires_at`` (tokens last 24 h).
FALLBACK_TOKEN_LIFETIME: Final = 3600.0
#: After IAM refused the credentials, do not ask it again for this many seconds.
IAM_FAILURE_BACKOFF: Final = 300.0


class BcsAuth(httpx.Auth):
    """Common surface the client relies on, beyond ``httpx.Auth``."""

    #: the auth type name from the config (``token``, ``password``, ``aksk``)
    kind: str = ""
    #: requests are AK/SK-signed: a 401 means the signature or key was refused
    signed: bool = False

    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in logs or error messages."""
        return ()

    @property
    def retry_not_before(self) -> float | None:
        """Epoch seconds before which this auth will not contact the server, or None."""
        return None

    def clear_rest(self) -> None:
        """Forget a refusal that made it rest (the credentials were fixed)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class TokenAuth(BcsAuth):
    """A fixed IAM user token in ``X-Auth-Token``."""

    kind = "token"

    def __init__(self, token: Secret) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers[TOKEN_HEADER] = self._token.reveal()
        yield request

    def secrets(self) -> tuple[str, ...]:
        return (self._token.reveal(),)


class PasswordAuth(BcsAuth):
    """An IAM token obtained with a password, cached and refreshed before it expires.

    ``project_name`` (e.g. ``"cn-north-4"``) scopes the token by name when given; otherwise it
    is scoped to ``project_id``. ``clock``: :data:`notifier.clock.SYSTEM_CLOCK` by default.
    """

    kind = "password"

    def __init__(
        self,
        *,
        iam_endpoint: str,
        domain: str,
        username: str,
        password: Secret,
        project_id: str,
        project_name: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        user_agent: str | None = None,
        refresh_margin: float = REFRESH_MARGIN,
        failure_backoff: float = IAM_FAILURE_BACKOFF,
        label: str = "",
    ) -> None:
        self._iam_endpoint = iam_endpoint.rstrip("/")
        self._domain = domain
        self._username = username
        self._password = password
        self._project_id = project_id
        self._project_name = project_name
        self._clock = clock
        self._user_agent = user_agent
        self._refresh_margin = refresh_margin
        self._failure_backoff = failure_backoff
        self._label = label or "IAM"
        self._token: Secret | None = None
        self._refresh_at = 0.0
        self._expires_at = 0.0
        self._failure: AuthError | None = None
        self._failure_until = 0.0

    @property
    def token_url(self) -> str:
        return f"{self._iam_endpoint}{IAM_TOKEN_PATH}?nocatalog=true"

    @property
    def expires_at(self) -> float | None:
        """Local epoch seconds when the cached token expires, or None without one."""
        return self._expires_at if self._token is not None else None

    @property
    def retry_not_before(self) -> float | None:
        return self._failure_until if self._failure is not None else None

    def clear_rest(self) -> None:
        self._failure = None
        self._failure_until = 0.0

    def secrets(self) -> tuple[str, ...]:
        values = [self._password.reveal()]
        if self._token is not None:
            values.append(self._token.reveal())
        return tuple(values)

    def token_body(self) -> bytes:
        """The exact JSON body of the IAM token request."""
        scope: dict[str, str] = (
            {"name": self._project_name} if self._project_name else {"id": self._project_id}
        )
        document = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": self._username,
                            "password": self._password.reveal(),
                            "domain": {"name": self._domain},
                        }
                    },
                },
                "scope": {"project": scope},
            }
        }
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()

    def token_request(self) -> httpx.Request:
        headers = {"Content-Type": IAM_CONTENT_TYPE, "Accept": "application/json"}
        if self._user_agent:
            headers["User-Agent"] = self._user_agent
        return httpx.Request("POST", self.token_url, headers=headers, content=self.token_body())

    def invalidate(self) -> None:
        """Forget the cached token (the next request logs in again)."""
        self._token = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = yield from self._current_token()
        request.headers[TOKEN_HEADER] = token
        response = yield request
        if response.status_code != 401:
            return
        logger.info(
            "%s: BCS answered HTTP 401 to the cached IAM token (request id %s); "
            "getting a new token and retrying once",
            self._label,
            response.headers.get("X-Request-Id"),
        )
        self.invalidate()
        token = yield from self._new_token()
        request.headers[TOKEN_HEADER] = token
        yield request

    def _current_token(self) -> Generator[httpx.Request, httpx.Response, str]:
        if self._token is not None and epoch_seconds(self._clock) < self._refresh_at:
            return self._token.reveal()
        if self._token is not None:
            logger.info("%s: the IAM token is due for refresh; getting a new one", self._label)
        return (yield from self._new_token())

    def _new_token(self) -> Generator[httpx.Request, httpx.Response, str]:
        now = epoch_seconds(self._clock)
        if self._failure is not None:
            if now < self._failure_until:
                raise self._repeat_failure(self._failure)
            self._failure = None
        response = yield self.token_request()
        response.read()
        return self._accept(response, now)

    def _repeat_failure(self, failure: AuthError) -> AuthError:
        until = iso(ms_from_seconds(self._failure_until), "time")
        return AuthError(
            status=failure.status,
            code=failure.code,
            message=f"{failure.error_message} (IAM is not asked again before {until})",
            request_id=failure.request_id,
            url=failure.url,
        )

    def _accept(self, response: httpx.Response, now: float) -> str:
        body = response.content
        status = response.status_code
        if status not in (200, 201):
            error = api_error(
                status,
                body,
                response.headers,
                url=self.token_url,
                secrets=self.secrets(),
                context="IAM token request",
            )
            if 400 <= status < 500 and status != 429:
                refused = error if isinstance(error, AuthError) else _as_auth_error(error)
                self._failure = refused
                self._failure_until = now + self._failure_backoff
                raise refused
            raise error
        request_id = response.headers.get("X-Request-Id")
        token = header(response.headers, SUBJECT_TOKEN_HEADER)
        if not token:
            raise AuthError(
                status=status,
                code=None,
                message=f"IAM answered {status} without an {SUBJECT_TOKEN_HEADER} header",
                request_id=request_id,
                url=self.token_url,
            )
        lifetime = _token_lifetime(json_or_none(body), now)
        if lifetime is None:
            logger.warning(
                "%s: IAM gave no readable token.expires_at; assuming the token lasts %d s",
                self._label,
                FALLBACK_TOKEN_LIFETIME,
            )
            lifetime = FALLBACK_TOKEN_LIFETIME
        self._token = Secret(token)
        self._expires_at = now + lifetime
        margin = min(self._refresh_margin, lifetime / 2)
        self._refresh_at = self._expires_at - margin
        logger.info(
            "%s: got an IAM token for user %s (domain %s), valid until %s, refresh after %s",
            self._label,
            self._username,
            self._domain,
            iso(ms_from_seconds(self._expires_at), "offset"),
            iso(ms_from_seconds(self._refresh_at), "offset"),
        )
        return token


def _as_auth_error(error: ApiError) -> AuthError:
    return AuthError(
        status=error.status,
        code=error.code,
        message=error.error_message,
        request_id=error.request_id,
        url=error.url,
    )


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _token_lifetime(body: Any, now: float) -> float | None:
    """Seconds the token is valid, from ``token.expires_at`` (and ``issued_at``).

    Measured as ``expires_at - issued_at`` when both are present, so a local clock that is off
    does not make a fresh token look expired; ``None`` when unreadable.
    """
    if not isinstance(body, dict) or not isinstance(body.get("token"), dict):
        return None
    token = body["token"]
    expires = _parse_time(token.get("expires_at"))
    if expires is None:
        return None
    issued = _parse_time(token.get("issued_at"))
    if issued is not None and expires > issued:
        return (expires - issued).total_seconds()
    lifetime = expires.timestamp() - now
    return lifetime if lifetime > 0 else None


class AkSkAuth(BcsAuth):
    """``SDK-HMAC-SHA256`` signing with an access key / secret key pair.

    Signed headers: ``host``, ``x-sdk-date``, ``x-project-id`` (when a project id is given),
    ``x-security-token`` (temporary credentials), ``content-type`` (when a body is sent), and
    any header named in ``sign_headers`` that the request carries (the official SDK also
    signs ``content-type`` and ``user-agent`` on a GET; the test vectors do).
    ``last_canonical_request`` keeps the canonical request of the latest signature, with the
    security token blanked out, to compare with a gateway's echo after a rejection.
    """

    kind = "aksk"
    signed = True
    requires_request_body = True

    def __init__(
        self,
        *,
        access_key: Secret,
        secret_key: Secret,
        project_id: str | None = None,
        security_token: Secret | None = None,
        clock: Clock = SYSTEM_CLOCK,
        sign_headers: Iterable[str] = (),
    ) -> None:
        self._access_key = access_key
        self._secret_key = secret_key
        self._project_id = project_id
        self._security_token = security_token
        self._clock = clock
        self._extra = tuple(name.lower() for name in sign_headers)
        self.last_canonical_request: str | None = None

    def secrets(self) -> tuple[str, ...]:
        values = [self._secret_key.reveal()]
        if self._security_token:
            values.append(self._security_token.reveal())
        return tuple(values)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self.sign(request)
        yield request

    def sign(self, request: httpx.Request) -> None:
        """Add the signing headers and ``Authorization`` to ``request`` (in place)."""
        raw_query = request.url.query.decode("ascii")
        query = signing.canonical_query(parse_qsl(raw_query, keep_blank_values=True))
        if query != raw_query:
            request.url = request.url.copy_with(query=query.encode("ascii") or None)
        now = datetime.fromtimestamp(epoch_seconds(self._clock), UTC)
        request.headers[signing.HEADER_DATE] = signing.sdk_date(now)
        names = {"host", "x-sdk-date"}
        if self._project_id:
            request.headers["X-Project-Id"] = self._project_id
            names.add("x-project-id")
        if self._security_token:
            request.headers["X-Security-Token"] = self._security_token.reveal()
            names.add("x-security-token")
        body = request.content
        if body:
            request.headers.setdefault("Content-Type", "application/json")
            names.add("content-type")
        names.update(name for name in self._extra if name in request.headers)
        headers = {name: request.headers[name] for name in sorted(names)}
        request.headers["Authorization"] = signing.sign(
            access_key=self._access_key.reveal(),
            secret_key=self._secret_key.reveal(),
            method=request.method,
            path=request.url.path,
            query=query,
            headers=headers,
            body=body,
        )
        canonical = signing.canonical_request(
            request.method, request.url.path, query, headers, sorted(headers), body
        )
        if self._security_token:
            canonical = canonical.replace(self._security_token.reveal(), REDACTED)
        self.last_canonical_request = canonical

    def describe_last_request(self) -> str | None:
        """Our last canonical request on one line (``\\n`` escaped), secrets blanked."""
        if self.last_canonical_request is None:
            return None
        text = redact(self.last_canonical_request, self.secrets())
        return one_line(text.replace("\n", "\\n"), 2000)


def build_auth(source: SourceConfig, *, clock: Clock = SYSTEM_CLOCK, user_agent: str) -> BcsAuth:
    """The auth flow for a source's ``[sources.auth]`` table."""
    auth = source.auth
    label = f"source {source.name}"
    if auth.type == "token":
        return TokenAuth(_required(auth.token, "token"))
    if auth.type == "password":
        return PasswordAuth(
            iam_endpoint=_required(auth.iam_endpoint, "iam_endpoint"),
            domain=_required(auth.domain, "domain"),
            username=_required(auth.username, "username"),
            password=_required(auth.password, "password"),
            project_id=source.project_id,
            project_name=auth.project_name,
            clock=clock,
            user_agent=user_agent,
            label=label,
        )
    if auth.type == "aksk":
        return AkSkAuth(
            access_key=_required(auth.access_key, "access_key"),
            secret_key=_required(auth.secret_key, "secret_key"),
            project_id=source.project_id,
            security_token=auth.security_token,
            clock=clock,
        )
    raise ValueError(f"unknown auth type {auth.type!r}")


def _required(value: _T | None, key: str) -> _T:
    """A value config validation guarantees; a clear error if the config was hand-built."""
    if value is None:
        raise ValueError(f"sources.auth.{key} is required for this auth type")
    return value
