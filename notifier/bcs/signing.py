"""Huawei Cloud ``SDK-HMAC-SHA256`` request signing (pure functions, no I/O).

Reproduces the official SDK's signer byte for byte; ``tests/fixtures/aksk-sign-vectors.txt``
holds vectors produced by it. The client signs with these functions and the simulator
verifies with the same ones.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote

ALGORITHM: Final = "SDK-HMAC-SHA256"
DATE_FORMAT: Final = "%Y%m%dT%H%M%SZ"
HEADER_DATE: Final = "X-Sdk-Date"
_UNRESERVED: Final = "-_.~"  # with A-Z a-z 0-9, which quote() always keeps


def sdk_date(moment: datetime) -> str:
    """``X-Sdk-Date`` value for an aware datetime."""
    return moment.astimezone(UTC).strftime(DATE_FORMAT)


def encode(value: str) -> str:
    """Percent-encode everything but ``A-Za-z0-9-_.~`` (UTF-8; space is ``%20``)."""
    return quote(value, safe=_UNRESERVED)


def canonical_uri(path: str) -> str:
    """Each segment percent-encoded (``~`` kept), always ending in ``/``."""
    segments = [quote(segment, safe="~") for segment in path.split("/")]
    uri = "/".join(segments)
    return uri if uri.endswith("/") else f"{uri}/"


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Sorted ``key=value`` pairs, each part encoded; also the query string to send."""
    encoded = sorted((encode(key), encode(value)) for key, value in pairs)
    return "&".join(f"{key}={value}" for key, value in encoded)


def canonical_headers(headers: Mapping[str, str], signed_headers: Sequence[str]) -> str:
    lowered = {name.lower(): value.strip() for name, value in headers.items()}
    return "".join(f"{name}:{lowered[name]}\n" for name in signed_headers)


def signed_header_names(headers: Mapping[str, str]) -> list[str]:
    return sorted(name.lower() for name in headers)


def canonical_request(
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    signed_headers: Sequence[str],
    body: bytes,
) -> str:
    return "\n".join(
        (
            method.upper(),
            canonical_uri(path),
            query,
            canonical_headers(headers, signed_headers),
            ";".join(signed_headers),
            hashlib.sha256(body).hexdigest(),
        )
    )


def string_to_sign(date: str, request: str) -> str:
    digest = hashlib.sha256(request.encode()).hexdigest()
    return f"{ALGORITHM}\n{date}\n{digest}"


def signature(secret_key: str, to_sign: str) -> str:
    return hmac.new(secret_key.encode(), to_sign.encode(), hashlib.sha256).hexdigest()


def authorization(access_key: str, signed_headers: Sequence[str], signature_hex: str) -> str:
    return (
        f"{ALGORITHM} Access={access_key}, SignedHeaders={';'.join(signed_headers)}, "
        f"Signature={signature_hex}"
    )


def parse_authorization(value: str) -> tuple[str, list[str], str] | None:
    """``(access_key, signed_headers, signature)`` from an Authorization header, or None."""
    prefix = f"{ALGORITHM} "
    if not value.startswith(prefix):
        return None
    fields: dict[str, str] = {}
    for part in value[len(prefix) :].split(","):
        key, _, item = part.strip().partition("=")
        fields[key] = item
    try:
        return fields["Access"], fields["SignedHeaders"].split(";"), fields["Signature"]
    except KeyError:
        return None


def sign(
    *,
    access_key: str,
    secret_key: str,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
) -> str:
    """The Authorization header for a request whose ``headers`` are all to be signed.

    ``headers`` must already hold ``Host`` and ``X-Sdk-Date`` (and ``X-Project-Id`` /
    ``X-Security-Token`` when sent); ``query`` is :func:`canonical_query` of the parameters.
    """
    names = signed_header_names(headers)
    date = next(value for name, value in headers.items() if name.lower() == "x-sdk-date")
    request = canonical_request(method, path, query, headers, names, body)
    return authorization(access_key, names, signature(secret_key, string_to_sign(date, request)))
