"""Authentication as the API gateway and IAM do it: tokens and AK/SK signatures.

Signatures are verified as the gateway does it, from the request as received: the method,
the raw path, the raw query re-canonicalised, the headers named in ``SignedHeaders`` and the
sha256 of the body bytes. The canonical form is computed here, not borrowed from the client's
:mod:`notifier.bcs.signing`, so a mistake in the client's signer shows up as a refused
request (both are checked against the official SDK's vectors). Error messages are the
gateway's documented ones (``APIGW.0301`` family, ``APIGW.0307``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote, unquote

from notifier.simulator.clock import NS_PER_SECOND
from notifier.simulator.scenario import derived_hex

_PREFIX: Final = "Incorrect IAM authentication information"
SIGNATURE_FAILED: Final = f"{_PREFIX}: verify aksk signature fail"
AK_LOCKED: Final = f"{_PREFIX}: AK access failed to reach the limit,forbidden."
TOKEN_INVALID: Final = f"{_PREFIX}: decrypt token fail"
TOKEN_MISSING: Final = f"{_PREFIX}: x-auth-token not found"
TOKEN_EXPIRED: Final = "The token must be updated."  # noqa: S105 - an error message
SIGNATURE_ALGORITHM: Final = "SDK-HMAC-SHA256"
SDK_DATE_FORMAT: Final = "%Y%m%dT%H%M%SZ"


@dataclass(frozen=True)
class Credentials:
    """Every credential the simulator accepts. ``repr`` shows no secret."""

    token: str
    username: str
    password: str
    domain: str
    access_key: str
    secret_key: str
    temporary_access_key: str
    temporary_secret_key: str
    security_token: str

    @classmethod
    def derived(cls, seed: int) -> Credentials:
        """Stable credentials for a seed (fake ones: this is a simulator)."""

        def part(length: int, name: str) -> str:
            return derived_hex(length, seed, "credential", name)

        return cls(
            token=f"MIIsim-{part(48, 'token')}",
            username="sim-user",
            password=f"Sim-{part(16, 'password')}!",
            domain="sim-domain",
            access_key=f"SIMAK{part(15, 'ak').upper()}",
            secret_key=part(40, "sk"),
            temporary_access_key=f"SIMTMP{part(14, 'temporary-ak').upper()}",
            temporary_secret_key=part(40, "temporary-sk"),
            security_token=f"gQpjbi1ub3J0aC00sim{part(64, 'security-token')}",
        )

    def __repr__(self) -> str:
        return (
            f"Credentials(username={self.username!r}, domain={self.domain!r}, "
            f"access_key={mask(self.access_key)!r}, secrets=********)"
        )


def mask(value: str) -> str:
    return f"{value[:4]}******" if len(value) > 4 else "******"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why the gateway refused a request: HTTP status, error code, message."""

    status: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request authenticated as (``how``: token, iam-token, aksk, aksk-temporary)."""

    how: str
    project_id: str | None = None


# -- tokens --------------------------------------------------------------------------------------


@dataclass
class _Token:
    project_id: str
    expires_ns: int | None  # None: the fixed configured token, valid until revoked
    revoked: bool = False


class TokenStore:
    """Tokens the simulated IAM issued, plus the fixed configured one."""

    def __init__(self, *, seed: int, fixed_token: str, project_id: str, size: int) -> None:
        self._rng = random.Random(f"{seed}/tokens")  # noqa: S311 - fake tokens, not security
        self._size = size
        self._fixed = fixed_token
        self._tokens: dict[str, _Token] = {fixed_token: _Token(project_id, None)}
        self._lock = threading.Lock()

    def issue(self, project_id: str, now_ns: int, lifetime: float) -> tuple[str, int]:
        """A new token and its expiry (gateway nanoseconds)."""
        expires = now_ns + round(lifetime * NS_PER_SECOND)
        with self._lock:
            raw = self._rng.randbytes(max(self._size * 3 // 4, 24))
            value = "MII" + base64.b64encode(raw).decode().replace("/", "-").replace("+", "_")
            self._tokens[value] = _Token(project_id, expires)
        return value, expires

    def check(self, value: str, now_ns: int) -> Principal | Rejection:
        with self._lock:
            token = self._tokens.get(value)
        if token is None:
            return Rejection(401, "APIGW.0301", TOKEN_INVALID)
        if token.revoked or (token.expires_ns is not None and now_ns >= token.expires_ns):
            return Rejection(401, "APIGW.0307", TOKEN_EXPIRED)
        how = "token" if value == self._fixed else "iam-token"
        return Principal(how, token.project_id)

    def expire_all(self) -> int:
        """Revoke every token (the fixed one too); returns how many were still valid."""
        with self._lock:
            live = [token for token in self._tokens.values() if not token.revoked]
            for token in live:
                token.revoked = True
        return len(live)

    def counts(self, now_ns: int) -> dict[str, int]:
        with self._lock:
            tokens = list(self._tokens.values())
        valid = sum(
            1
            for token in tokens
            if not token.revoked and (token.expires_ns is None or now_ns < token.expires_ns)
        )
        return {"issued": len(tokens) - 1, "valid": valid}


# -- AK/SK ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """A request as the gateway received it: nothing decoded, headers lower-cased."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


def query_pairs(raw_query: str) -> list[tuple[str, str]]:
    """Decode a raw query string the strict way: ``+`` stays a plus sign."""
    pairs = []
    for part in raw_query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append((unquote(key), unquote(value)))
    return pairs


def parse_authorization(value: str) -> tuple[str, list[str], str] | None:
    """``(access_key, signed_headers, signature)`` from an Authorization header, or None."""
    scheme, _, rest = value.partition(" ")
    if scheme != SIGNATURE_ALGORITHM:
        return None
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, _, item = part.strip().partition("=")
        fields[key] = item
    try:
        return fields["Access"], fields["SignedHeaders"].split(";"), fields["Signature"]
    except KeyError:
        return None


def _encoded(value: str) -> str:
    """RFC 3986 percent-encoding: everything but ``A-Za-z0-9-_.~``, space as ``%20``."""
    return quote(value, safe="-_.~")


def canonical_request(request: ReceivedRequest, signed_headers: list[str]) -> str:
    """The gateway's canonical form of ``request``; ``signed_headers`` lower-case and sent.

    Method; the decoded path with each segment re-encoded (``~`` kept) and a trailing ``/``;
    the query pairs encoded and sorted; ``name:value`` of each signed header (value
    stripped); the signed header names; the hex sha256 of the body.
    """
    path = "/".join(quote(segment, safe="~") for segment in unquote(request.path).split("/"))
    if not path.endswith("/"):
        path += "/"
    pairs = sorted((_encoded(key), _encoded(value)) for key, value in query_pairs(request.query))
    query = "&".join(f"{key}={value}" for key, value in pairs)
    headers = "".join(f"{name}:{request.headers[name].strip()}\n" for name in signed_headers)
    return "\n".join(
        (
            request.method.upper(),
            path,
            query,
            headers,
            ";".join(signed_headers),
            hashlib.sha256(request.body).hexdigest(),
        )
    )


def expected_signature(secret_key: str, sdk_date: str, canonical: str) -> str:
    """The hex HMAC-SHA256 over the string to sign: algorithm, date, canonical digest."""
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    to_sign = f"{SIGNATURE_ALGORITHM}\n{sdk_date}\n{digest}"
    return hmac.new(secret_key.encode(), to_sign.encode(), hashlib.sha256).hexdigest()


def parse_sdk_date(value: str) -> datetime | None:
    try:
        return datetime.strptime(value, SDK_DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


@dataclass
class _KeyState:
    secret_key: str
    security_token: str | None
    failures: int = 0
    locked_until_ns: int = 0


@dataclass
class AkskVerifier:
    """Checks ``SDK-HMAC-SHA256`` signatures; locks a key after repeated failures."""

    keys: dict[str, _KeyState] = field(default_factory=dict)
    max_skew: float = 900.0
    lock_after: int = 5  # consecutive failures; 0 disables the lock
    lock_seconds: float = 300.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_key(self, access_key: str, secret_key: str, security_token: str | None = None) -> None:
        self.keys[access_key] = _KeyState(secret_key, security_token)

    def verify(self, request: ReceivedRequest, now_ns: int) -> Principal | Rejection:
        parsed = parse_authorization(request.headers.get("authorization", ""))
        if parsed is None:
            return Rejection(401, "APIGW.0301", SIGNATURE_FAILED)
        access_key, signed_headers, received = parsed
        with self._lock:
            state = self.keys.get(access_key)
            if state is None:
                message = f"{_PREFIX}: Get secretKey failed,ak:{mask(access_key)},err:ak not exist"
                return Rejection(401, "APIGW.0301", message)
            if state.locked_until_ns > now_ns:
                return Rejection(401, "APIGW.0301", AK_LOCKED)
            problem = self._problem(request, state, signed_headers, received, now_ns)
            if problem is not None:
                state.failures += 1
                if self.lock_after and state.failures >= self.lock_after:
                    state.locked_until_ns = now_ns + round(self.lock_seconds * NS_PER_SECOND)
                    state.failures = 0
                return Rejection(401, "APIGW.0301", f"{SIGNATURE_FAILED}, {problem}")
            state.failures = 0
        how = "aksk-temporary" if state.security_token is not None else "aksk"
        return Principal(how, request.headers.get("x-project-id"))

    def _problem(
        self,
        request: ReceivedRequest,
        state: _KeyState,
        signed_headers: list[str],
        received: str,
        now_ns: int,
    ) -> str | None:
        """Why the signature is refused, or None when it is good."""
        headers = request.headers
        names = [name.strip().lower() for name in signed_headers]
        for required in ("host", "x-sdk-date"):
            if required not in names:
                return f"{required} is not signed"
        missing = [name for name in names if name not in headers]
        if missing:
            return f"signed header(s) not sent: {', '.join(missing)}"
        date = parse_sdk_date(headers["x-sdk-date"])
        if date is None:
            return "x-sdk-date is not in YYYYMMDDTHHMMSSZ format"
        skew = abs(now_ns / NS_PER_SECOND - date.timestamp())
        if skew > self.max_skew:
            return (
                f"x-sdk-date is {skew:.0f}s away from the server time (limit {self.max_skew:.0f}s)"
            )
        if state.security_token is not None:
            token = headers.get("x-security-token")
            if token is None or "x-security-token" not in names:
                return "temporary credentials need a signed x-security-token"
            if not hmac.compare_digest(token, state.security_token):
                return "x-security-token does not match the access key"
        canonical = canonical_request(request, names)
        expected = expected_signature(state.secret_key, headers["x-sdk-date"], canonical)
        if not hmac.compare_digest(expected, received):
            return "signature mismatch"
        return None
