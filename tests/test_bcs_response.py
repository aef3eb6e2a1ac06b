"""notifier.bcs.response: reading one response (caps, bodies, typed errors), on in-memory
httpx responses; the client tests cover the same paths end to end through respx."""

from __future__ import annotations

import ssl

import httpx
import pytest

from notifier.bcs.response import (
    BodyTooLarge,
    cap_response,
    caused_by_tls,
    date_ns,
    parse_body,
    read_body,
    record_too_large,
    response_error,
    retry_after,
    too_large,
    transport_error,
)
from notifier.bcs.stream import RecordTooLarge
from notifier.errors import (
    ApiError,
    AuthError,
    InvalidResponse,
    SignatureRejected,
    ThrottledError,
    TransportError,
)

NOW = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT


def streamed(status: int, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    """A response whose body comes as a stream (no Content-Length unless given)."""
    return httpx.Response(status, stream=httpx.ByteStream(body), headers=headers or {})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("-3", 0.0),
        ("nan", None),
        ("Tue, 14 Nov 2023 22:13:50 GMT", 30.0),
        ("Tue, 14 Nov 2023 22:13:00 GMT", 0.0),
        ("soon", None),
    ],
    ids=["absent", "empty", "seconds", "spaces", "negative", "nan", "date", "past-date", "junk"],
)
def test_retry_after(value: str | None, expected: float | None) -> None:
    headers = {} if value is None else {"Retry-After": value}
    assert retry_after(headers, NOW) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("Tue, 14 Nov 2023 22:13:20 GMT", 1_700_000_000 * 1_000_000_000),
        ("Thu, 01 Jan 1970 00:00:00 GMT", None),
        ("yesterday", None),
    ],
    ids=["absent", "empty", "date", "epoch", "junk"],
)
def test_date_ns(value: str | None, expected: int | None) -> None:
    assert date_ns(value) == expected


def test_a_declared_length_over_the_cap_fails_before_reading() -> None:
    response = httpx.Response(200, content=b"x" * 20, headers={"X-Request-Id": "r-1"})
    with pytest.raises(BodyTooLarge) as caught:
        cap_response(response, 10)
    assert (caught.value.declared, caught.value.request_id) == (20, "r-1")
    assert "Content-Length 20 bytes" in str(too_large(caught.value, "bcs.example"))


def test_a_streamed_body_over_the_cap_stops_while_read() -> None:
    response = streamed(200, b'{"count": 0, "operation_records": []}')
    cap_response(response, 10)
    with pytest.raises(BodyTooLarge) as caught:
        read_body(response, 1000, None)
    error = too_large(caught.value, "bcs.example")
    assert str(error) == (
        "response from bcs.example is too large (more than 10 bytes; max_response_bytes = 10)"
    )


def test_an_error_body_may_pass_a_small_cap_and_is_cut_when_read() -> None:
    page = b"<html>" + b"x" * 5000 + b"</html>"
    response = streamed(502, page)
    cap_response(response, 10)  # error bodies get at least ERROR_BODY_LIMIT
    assert read_body(response, 100, None, truncate=True) == page[:100]


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"<html>502</html>", "text/html", "HTTP 200 body is not JSON (text/html, 16 bytes;"),
        (b"[1, 2]", "application/json", "HTTP 200 body is JSON but not an object (a list)"),
        (b'"text"', "application/json", "HTTP 200 body is JSON but not an object (a str)"),
    ],
    ids=["html", "list", "string"],
)
def test_parse_body_refuses_anything_but_an_object(
    body: bytes, content_type: str, message: str
) -> None:
    response = httpx.Response(200, headers={"Content-Type": content_type})
    with pytest.raises(InvalidResponse) as caught:
        parse_body(body, response, "r-2")
    assert str(caught.value).startswith(message)
    assert caught.value.request_id == "r-2"


def test_parse_body_reads_an_object() -> None:
    assert parse_body(b'{"count": 0}', httpx.Response(200), None) == {"count": 0}


@pytest.mark.parametrize(
    ("status", "signed", "cls"),
    [
        (400, False, ApiError),
        (401, False, AuthError),
        (401, True, SignatureRejected),
        (403, True, AuthError),
        (429, False, ThrottledError),
        (503, False, ApiError),
    ],
    ids=["400", "401", "401-signed", "403-signed", "429", "503"],
)
def test_response_error_class(status: int, signed: bool, cls: type[ApiError]) -> None:
    response = httpx.Response(status, headers={"X-Request-Id": "r-3"})
    body = b'{"error_code": "BCS.1", "error_msg": "no; token s3cret"}'
    error = response_error(response, body, signed=signed, url="https://x/", secrets=["s3cret"])
    assert type(error) is cls
    assert (error.status, error.code, error.request_id) == (status, "BCS.1", "r-3")
    assert "s3cret" not in error.one_line()


def test_a_redirect_names_where_it_points() -> None:
    response = httpx.Response(302, headers={"Location": "https://login.example/\r\nx"})
    error = response_error(response, b"", signed=False, url="https://x/", secrets=())
    assert type(error) is ApiError
    assert error.error_message == (
        "unexpected redirect to https://login.example/ x; check the endpoint"
    )


def test_record_too_large_names_the_key() -> None:
    record = record_too_large(RecordTooLarge(64, what="a record"), "bcs.example", "r-4")
    body = record_too_large(RecordTooLarge(64, what="the response"), "bcs.example", None)
    assert "(max_record_bytes = 64)" in str(record)
    assert record.request_id == "r-4"
    assert "(max_response_bytes = 64)" in str(body)


def _tls_failure() -> httpx.ConnectError:
    try:
        raise ssl.SSLCertVerificationError("certificate verify failed")
    except ssl.SSLError as cause:
        error = httpx.ConnectError("handshake failed")
        error.__cause__ = cause
        return error


@pytest.mark.parametrize(
    ("exc", "cls", "retryable", "message"),
    [
        (httpx.ConnectTimeout("t"), TransportError, True, "timed out after 5 s connecting to h"),
        (httpx.ReadTimeout("t"), TransportError, True, "timed out after 5 s reading from h"),
        (httpx.PoolTimeout("t"), TransportError, True, "waiting for a connection to h"),
        (httpx.ConnectError("refused"), TransportError, True, "network error talking to h"),
        (httpx.RemoteProtocolError("eof"), TransportError, True, "network error talking to h"),
        (httpx.DecodingError("gzip"), InvalidResponse, False, "cannot decode the response"),
        (_tls_failure(), TransportError, False, "TLS failure connecting to h"),
        (httpx.UnsupportedProtocol("ftp"), TransportError, False, "request to h failed"),
    ],
    ids=["connect", "read", "pool", "refused", "protocol", "decoding", "tls", "other"],
)
def test_transport_error(
    exc: Exception, cls: type[Exception], retryable: bool, message: str
) -> None:
    error, may_retry = transport_error(exc, "r-5", host="h", timeout=5.0, secrets=())
    assert type(error) is cls
    assert may_retry is retryable
    assert message in str(error)
    assert error.request_id == "r-5"
    assert error.__cause__ is exc


def test_transport_error_redacts_secrets() -> None:
    exc = httpx.ConnectError("proxy said: token=hunter2hunter2")
    error, _ = transport_error(exc, None, host="h", timeout=1.0, secrets=["hunter2hunter2"])
    assert "hunter2" not in str(error)


def test_caused_by_tls_follows_the_chain_without_looping() -> None:
    outer = RuntimeError("outer")
    inner = ValueError("inner")
    outer.__cause__ = inner
    inner.__context__ = outer  # a cycle
    assert caused_by_tls(outer) is False
    assert caused_by_tls(_tls_failure()) is True
