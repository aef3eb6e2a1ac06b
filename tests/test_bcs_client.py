"""``BcsClient``: request shape, retries, error mapping, size cap, clock skew.

respx plays the API; one test talks to a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import certifi
import httpx
import pytest
import respx
from bcs_support import NOW, OK_BODY, PROJECT, RECORD_URL, TOKEN, FakeClock, make_source

from notifier import __version__
from notifier.bcs import signing
from notifier.bcs.client import BcsClient, Fetched
from notifier.config import AuthConfig, Secret, SourceConfig
from notifier.errors import (
    ApiError,
    AuthError,
    InvalidResponse,
    ResponseTooLarge,
    SignatureRejected,
    SourceError,
    ThrottledError,
    TransportError,
)

ACCESS_KEY = "HPUAEXAMPLEAK0000001"
SECRET_KEY = "exampleSecretKey0123456789abcdefEXAMPLE0"
SECURITY_TOKEN = "gQpjbi1ub3J0aC00EXAMPLE-SECURITY-TOKEN"
NGINX_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>"
)


def aksk_auth(security_token: str | None = SECURITY_TOKEN) -> AuthConfig:
    return AuthConfig(
        type="aksk",
        access_key=Secret(ACCESS_KEY),
        secret_key=Secret(SECRET_KEY),
        security_token=Secret(security_token) if security_token else None,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_client(clock: FakeClock, sleeps: list[float]) -> Iterator[Callable[..., BcsClient]]:
    clients: list[BcsClient] = []

    def build(source: SourceConfig | None = None, **kwargs: Any) -> BcsClient:
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("sleep", sleeps.append)
        kwargs.setdefault("jitter", lambda: 0.0)
        client = BcsClient(source or make_source(), **kwargs)
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


def ok(body: Any = None, **headers: str) -> httpx.Response:
    return httpx.Response(200, json=OK_BODY if body is None else body, headers=headers)


# -- request shape ---------------------------------------------------------------------------


def test_token_request_shape_and_fetched(
    router: respx.MockRouter, make_client: Callable[..., BcsClient], example_body: dict[str, Any]
) -> None:
    source = make_source(
        filters={
            "blockchain_id": ("4ff8b8d0-b3c2-11ee-8a1a-0255ac100b02",),
            "resource_type": ("BCSSVC01", "BCSSVC02"),
            "operation_type": ("00",),
        }
    )
    content = json.dumps(example_body).encode()
    route = router.get(RECORD_URL).respond(200, content=content, headers={"X-Request-Id": "r-1"})
    fetched = make_client(source).fetch()
    assert fetched == Fetched(body=example_body, request_id="r-1", size=len(content), status=200)
    request = route.calls.last.request
    assert request.method == "GET"
    assert request.url.path == f"/v2/{PROJECT}/operation/record"
    # single-valued filters only, sorted and encoded; resource_type has two values: not sent
    assert request.url.query == (
        b"blockchain_id=4ff8b8d0-b3c2-11ee-8a1a-0255ac100b02&operation_type=00"
    )
    assert request.headers["X-Auth-Token"] == TOKEN
    assert request.headers["User-Agent"] == f"bcs-notifier/{__version__}"
    assert request.headers["Accept"] == "application/json"
    assert "Authorization" not in request.headers
    assert "X-Sdk-Date" not in request.headers


def test_filter_values_are_percent_encoded(
    router: respx.MockRouter, make_client: Callable[..., BcsClient]
) -> None:
    route = router.get(RECORD_URL).mock(return_value=ok())
    make_client(make_source(filters={"blockchain_id": ("a b/c~d:é",)})).fetch()
    assert route.calls.last.request.url.query == b"blockchain_id=a%20b%2Fc~d%3A%C3%A9"


def test_no_filters_no_query(
    router: respx.MockRouter, make_client: Callable[..., BcsClient]
) -> None:
    route = router.get(RECORD_URL).mock(return_value=ok())
    make_client().fetch()
    assert str(route.calls.last.request.url) == RECORD_URL


def test_endpoint_with_path_prefix(
    router: respx.MockRouter, make_client: Callable[..., BcsClient]
) -> None:
    route = router.get(f"https://proxy.example.com/bcs/v2/{PROJECT}/operation/record").mock(
        return_value=ok()
    )
    make_client(make_source(endpoint="https://proxy.example.com/bcs")).fetch()
    assert route.call_count == 1


def _verify_signature(request: httpx.Request) -> list[str]:
    """What a gateway does: recompute the signature from the request as received."""
    parsed = signing.parse_authorization(request.headers["Authorization"])
    assert parsed is not None
    access_key, names, received = parsed
    assert access_key == ACCESS_KEY
    headers = {name: request.headers[name] for name in names}
    canonical = signing.canonical_request(
        request.method, request.url.path, request.url.query.decode(), headers, names, b""
    )
    to_sign = signing.string_to_sign(request.headers["X-Sdk-Date"], canonical)
    assert signing.signature(SECRET_KEY, to_sign) == received
    return names


@pytest.mark.parametrize(
    ("security_token", "expected_names"),
    [
        (None, ["host", "x-project-id", "x-sdk-date"]),
        (SECURITY_TOKEN, ["host", "x-project-id", "x-sdk-date", "x-security-token"]),
    ],
    ids=["permanent", "temporary"],
)
def test_aksk_request_shape(
    router: respx.MockRouter,
    make_client: Callable[..., BcsClient],
    security_token: str | None,
    expected_names: list[str],
) -> None:
    route = router.get(RECORD_URL).mock(return_value=ok())
    source = make_source(
        aksk_auth(security_token),
        filters={"operation_type": ("99",), "blockchain_id": ("bc 1",)},
    )
    make_client(source).fetch()
    request = route.calls.last.request
    assert request.url.query == b"blockchain_id=bc%201&operation_type=99"
    assert request.headers["X-Sdk-Date"] == "20240115T083000Z"
    assert request.headers["X-Project-Id"] == PROJECT
    assert request.headers.get("X-Security-Token") == security_token
    assert "X-Auth-Token" not in request.headers
    assert "Content-Type" not in request.headers
    assert _verify_signature(request) == expected_names


def test_aksk_signs_every_attempt_afresh(router: respx.MockRouter, clock: FakeClock) -> None:
    def sleep(seconds: float) -> None:
        clock.now += 61

    route = router.get(RECORD_URL).mock(side_effect=[httpx.Response(500), ok()])
    with BcsClient(make_source(aksk_auth()), clock=clock, sleep=sleep, jitter=lambda: 0) as client:
        client.fetch()
    first, second = (call.request for call in route.calls)
    assert first.headers["X-Sdk-Date"] == "20240115T083000Z"
    assert second.headers["X-Sdk-Date"] == "20240115T083101Z"
    _verify_signature(second)


# -- retries ---------------------------------------------------------------------------------


def test_500_then_200(
    router: respx.MockRouter, make_client: Callable[..., BcsClient], sleeps: list[float]
) -> None:
    route = router.get(RECORD_URL).mock(side_effect=[httpx.Response(500), ok()])
    assert make_client().fetch().body == OK_BODY
    assert route.call_count == 2
    assert sleeps == [0.5]


def test_backoff_doubles_with_jitter_then_gives_up(
    router: respx.MockRouter, make_client: Callable[..., BcsClient], sleeps: list[float]
) -> None:
    responses = [
        httpx.Response(503, text=NGINX_502, headers={"X-Request-Id": f"r-{n}"}) for n in range(4)
    ]
    route = router.get(RECORD_URL).mock(side_effect=responses)
    with pytest.raises(ApiError) as caught:
        make_client(jitter=lambda: 0.5).fetch()
    assert type(caught.value) is ApiError
    assert caught.value.status == 503
    assert caught.value.request_id == "r-3"
    assert caught.value.error_message == "502 Bad Gateway nginx"
    assert route.call_count == 4
    assert sleeps == [0.75, 1.5, 3.0]


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        ("7", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (format_datetime(datetime.fromtimestamp(NOW + 12, UTC), usegmt=True), 12.0),
        (format_datetime(datetime.fromtimestamp(NOW - 50, UTC), usegmt=True), 0.0),
        ("3600", 30.0),
        (None, 2.0),
        ("soon", 2.0),
    ],
    ids=["seconds", "zero", "fraction", "http-date", "past-date", "capped", "absent", "garbage"],
)
def test_429_retry_after(
    router: respx.MockRouter,
    make_client: Callable[..., BcsClient],
    sleeps: list[float],
    retry_after: str | None,
    expected: float,
) -> None:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    throttled = httpx.Response(
        429,
        json={"error_code": "APIGW.0308", "error_msg": "The throttling threshold has been reached"},
        headers=headers,
    )
    router.get(RECORD_URL).mock(side_effect=[throttled, ok()])
    make_client().fetch()
    assert sleeps == [expected]


def test_429_exhausted_is_throttled(
    router: respx.MockRouter, make_client: Callable[..., BcsClient], sleeps: list[float]
) -> None:
    throttled = httpx.Response(
        429,
        json={"error_code": "APIGW.0308", "error_msg": "throttled"},
        headers={"X-Request-Id": "r-429"},
    )
    route = router.get(RECORD_URL).mock(return_value=throttled)
    with pytest.raises(ThrottledError) as caught:
        make_client(make_source(max_retries=2)).fetch()
    assert caught.value.code == "APIGW.0308"
    assert caught.value.request_id == "r-429"
    assert route.call_count == 3
    assert sleeps == [2.0, 4.0]


@pytest.mark.parametrize(
    "failure",
    [httpx.ReadTimeout("read timed out"), httpx.ConnectError("connection refused")],
    ids=["read-timeout", "connect-error"],
)
def test_network_failure_then_success(
    router: respx.MockRouter,
    make_client: Callable[..., BcsClient],
    sleeps: list[float],
    failure: Exception,
) -> None:
    route = router.get(RECORD_URL).mock(side_effect=[failure, ok()])
    assert make_client().fetch().status == 200
    assert route.call_count == 2
    assert sleeps == [0.5]


def test_timeouts_exhausted(
    router: respx.MockRouter, make_client: Callable[..., BcsClient], sleeps: list[float]
) -> None:
    route = router.get(RECORD_URL).mock(side_effect=httpx.ReadTimeout("read timed out"))
    with pytest.raises(TransportError) as caught:
        make_client(make_source(timeout=2.5)).fetch()
    assert str(caught.value) == (
        "timed out after 2.5 s reading from bcs.cn-north-4.myhuaweicloud.com"
    )
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    assert route.call_count == 4
    assert sleeps == [0.5, 1.0, 2.0]


def test_max_retries_zero(
    router: respx.MockRouter, make_client: Callable[..., BcsClient], sleeps: list[float]
) -> None:
    route = router.get(RECORD_URL).mock(return_value=httpx.Response(500))
    with pytest.raises(ApiError):
        make_client(make_source(max_retries=0)).fetch()
    assert route.call_count == 1
    assert sleeps == []


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, ApiError), (401, AuthError), (403, AuthError), (404, ApiError), (409, ApiError)],
    ids=["400", "401", "403", "404", "409"],
)
def test_other_4xx_never_retried(
    router: respx.MockRouter,
    make_client: Callable[..., BcsClient],
    sleeps: list[float],
    status: int,
    cls: type[ApiError],
) -> None:
    body = {"error_code": "BCS.4001001", "error_msg": "nope"}
    route = router.get(RECORD_URL).respond(status, json=body, headers={"X-Request-Id": "r-4"})
    with pytest.raises(ApiError) as caught:
        make_client().fetch()
    assert type(caught.value) is cls
    assert (caught.value.status, caught.value.code, caught.value.request_id) == (
        status,
        "BCS.4001001",
        "r-4",
    )
    assert route.call_count == 1
    assert sleeps == []


def test_redirect_is_not_followed(
    router: respx.MockRouter, make_client: Callable[..., BcsClient]
) -> None:
    route = router.get(RECORD_URL).respond(302, headers={"Location": "https://elsewhere.example/"})
    with pytest.raises(ApiError) as caught:
        make_client().fetch()
    assert "unexpected redirect to https://elsewhere.example/" in str(caught.value)
    assert route.call_count == 1


# -- AK/SK rejection -------------------------------------------------------------------------


def test_signed_401_raises_at_once_and_rests_the_key(
    router: respx.MockRouter,
    make_client: Callable[..., BcsClient],
    clock: FakeClock,
    sleeps: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    echo = (
        f"GET\n/v2/{PROJECT}/operation/record/\n\nhost:bcs.cn-north-4.myhuaweicloud.com\n"
        f"x-project-id:{PROJECT}\nx-sdk-date:20240115T083000Z\n"
        f"x-security-token:{SECURITY_TOKEN}\n\nhost;x-project-id;x-sdk-date;x-security-token\n"
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    rejected = httpx.Response(
        401,
        json={
            "error_code": "APIGW.0301",
            "error_msg": "Incorrect IAM authentication information: verify aksk signature fail",
            "canonical_request": echo,
        },
        headers={"X-Request-Id": "r-sig"},
    )
    route = router.get(RECORD_URL).mock(side_effect=[rejected, ok()])
    client = make_client(make_source(aksk_auth(), max_retries=3))

    with pytest.raises(SignatureRejected) as caught:
        client.fetch()
    assert route.call_count == 1
    assert sleeps == []
    assert caught.value.code == "APIGW.0301"
    assert caught.value.request_id == "r-sig"
    assert SignatureRejected.min_backoff >= 300
    assert caught.value.min_backoff >= 300
    assert client.retry_not_before == NOW + SignatureRejected.min_backoff

    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1
    line = errors[0].getMessage()
    assert "r-sig" in line
    assert f"Gateway canonical request: GET\\n/v2/{PROJECT}/operation/record/\\n" in line
    assert "x-security-token:***" in line
    assert "Ours: GET\\n" in line
    sent_signature = route.calls.last.request.headers["Authorization"].rsplit("=", 1)[1]
    for secret in (sent_signature, SECRET_KEY, SECURITY_TOKEN):
        assert secret not in caplog.text
        assert secret not in str(caught.value)

    # within the rest period nothing is sent
    clock.now += SignatureRejected.min_backoff - 1
    with pytest.raises(SignatureRejected) as again:
        client.fetch()
    assert "not signing again before" in str(again.value)
    assert route.call_count == 1

    # afterwards the next signed request goes out
    clock.now += 1
    assert client.fetch().status == 200
    assert route.call_count == 2
    assert client.retry_not_before is None


def test_token_401_is_auth_error_not_signature(
    router: respx.MockRouter, make_client: Callable[..., BcsClient]
) -> None:
    router.get(RECORD_URL).respond(401, json={"error_code": "APIGW.0307", "error_msg": "expired"})
    client = make_client()
    with pytest.raises(AuthError) as caught:
        client.fetch()
    assert type(caught.value) is AuthError
    assert client.retry_not_before is None


# -- bodies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "content_type", "fragment"),
    [
        (b'{"count": 1, "operation_records": [{"operation_id": "BC', "application/json", "JSON"),
        (b"[1, 2, 3]", "application/json", "not an object (a list)"),
        (b'"text"', "application/json", "not an object (a str)"),
        (b"", "application/json", "not JSON"),
        (b"<html><body><h1>Log in to the proxy</h1></body></html>", "text/html", "Log in"),
        (b"\xff\xfe\x00garbage", "application/octet-stream", "not JSON"),
    ],
    ids=["truncated-json", "list", "string", "empty", "html-page", "binary"],
)
def test_200_that_is_not_a_json_object(
    router: respx.MockRouter,
    make_client: Callable[..., BcsClient],
    sleeps: list[float],
    content: bytes,
    content_type: str,
    fragment: str,
) -> None:
    route = router.get(RECORD_URL).respond(
        200, content=content, headers={"Content-Type": content_type, "X-Request-Id": "r-bad"}
    )
    with pytest.raises(InvalidResponse) as caught:
        make_client().fetch()
    assert fragment in str(caught.value)
    assert "<" not in str(caught.value)
    assert caught.value.request_id == "r-bad"
    assert route.call_count == 1
    assert sleeps == []


def test_html_502_after_retries(
    router: respx.MockRouter, make_client: Callable[..., BcsClient]
) -> None:
    router.get(RECORD_URL).respond(502, text=NGINX_502, headers={"Content-Type": "text/html"})
    with pytest.raises(ApiError) as caught:
        make_client(make_source(max_retries=1)).fetch()
    assert str(caught.value) == "HTTP 502: 502 Bad Gateway nginx"


def test_size_cap_from_content_length(
    router: respx.MockRouter, make_client: Callable[..., BcsClient], sleeps: list[float]
) -> None:
    body = {"count": 0, "operation_records": [], "pad": "x" * 2000}
    route = router.get(RECORD_URL).respond(200, json=body, headers={"X-Request-Id": "r-big"})
    with pytest.raises(ResponseTooLarge) as caught:
        make_client(make_source(max_response_bytes=1024)).fetch()
    assert "Content-Length 2" in str(caught.value)
    assert "max_response_bytes = 1024" in str(caught.value)
    assert caught.value.request_id == "r-big"
    assert route.call_count == 1
    assert sleeps == []


def test_size_cap_on_a_streamed_body_stops_reading(
    router: respx.MockRouter, make_client: Callable[..., BcsClient]
) -> None:
    produced: list[int] = []

    def chunks() -> Iterator[bytes]:
        yield b'{"count": 0, "operation_records": [], "pad": "'
        for index in range(1000):
            produced.append(index)
            yield b"x" * 512
        yield b'"}'

    router.get(RECORD_URL).mock(
        return_value=httpx.Response(200, content=chunks(), headers={"X-Request-Id": "r-s"})
    )
    with pytest.raises(ResponseTooLarge) as caught:
        make_client(make_source(max_response_bytes=4096)).fetch()
    assert "more than 4096 bytes" in str(caught.value)
    assert caught.value.request_id == "r-s"
    assert len(produced) < 10


def test_size_cap_applies_to_the_decompressed_body(
    router: respx.MockRouter, make_client: Callable[..., BcsClient]
) -> None:
    raw = json.dumps({"count": 0, "operation_records": [], "pad": "0" * 200_000}).encode()
    compressed = gzip.compress(raw)
    assert len(compressed) < 4096
    router.get(RECORD_URL).respond(
        200, content=compressed, headers={"Content-Encoding": "gzip", "X-Request-Id": "r-gz"}
    )
    with pytest.raises(ResponseTooLarge):
        make_client(make_source(max_response_bytes=4096)).fetch()


def test_large_error_page_is_an_api_error_not_too_large(
    router: respx.MockRouter, make_client: Callable[..., BcsClient], sleeps: list[float]
) -> None:
    page = "<html><title>Bad Gateway</title><body>" + "<p>detail</p>" * 1000 + "</body></html>"
    route = router.get(RECORD_URL).mock(side_effect=[httpx.Response(502, text=page), ok()])
    assert make_client(make_source(max_response_bytes=1024)).fetch().status == 200
    assert route.call_count == 2
    assert sleeps == [0.5]


def test_huge_error_body_is_cut_not_read_whole(
    router: respx.MockRouter, make_client: Callable[..., BcsClient]
) -> None:
    produced: list[int] = []

    def chunks() -> Iterator[bytes]:
        for index in range(10_000):
            produced.append(index)
            yield b"<p>" + b"x" * 1021

    router.get(RECORD_URL).mock(return_value=httpx.Response(400, content=chunks()))
    with pytest.raises(ApiError) as caught:
        make_client().fetch()
    assert caught.value.status == 400
    assert len(caught.value.error_message) <= 160
    assert len(produced) <= 65


def test_body_exactly_at_the_cap_is_accepted(
    router: respx.MockRouter, make_client: Callable[..., BcsClient]
) -> None:
    prefix = b'{"count": 0, "operation_records": [], "pad": "'
    content = prefix + b"x" * (2048 - len(prefix) - 2) + b'"}'
    assert len(content) == 2048
    router.get(RECORD_URL).respond(200, content=content)
    assert make_client(make_source(max_response_bytes=2048)).fetch().size == 2048


def test_gzip_body_decoded(router: respx.MockRouter, make_client: Callable[..., BcsClient]) -> None:
    router.get(RECORD_URL).respond(
        200,
        content=gzip.compress(json.dumps(OK_BODY).encode()),
        headers={"Content-Encoding": "gzip"},
    )
    fetched = make_client().fetch()
    assert fetched.body == OK_BODY
    assert fetched.size == len(json.dumps(OK_BODY))


def test_corrupt_gzip_is_invalid_response(
    router: respx.MockRouter, make_client: Callable[..., BcsClient]
) -> None:
    corrupt = httpx.Response(
        200, content=iter([b"not gzip at all"]), headers={"Content-Encoding": "gzip"}
    )
    router.get(RECORD_URL).mock(return_value=corrupt)
    with pytest.raises(InvalidResponse, match="cannot decode"):
        make_client().fetch()


# -- clock skew ------------------------------------------------------------------------------


def _date(offset: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + offset, UTC), usegmt=True)


def test_clock_skew_warned_once(
    router: respx.MockRouter,
    make_client: Callable[..., BcsClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    router.get(RECORD_URL).mock(return_value=ok(Date=_date(3600)))
    client = make_client()
    client.fetch()
    client.fetch()
    warnings = [r for r in caplog.records if "clock" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "differ by 3600 s" in warnings[0].getMessage()
    assert "prod" in warnings[0].getMessage()


@pytest.mark.parametrize("offset", [0, 599, -599], ids=["same", "just-under", "behind"])
def test_no_skew_warning_within_ten_minutes(
    router: respx.MockRouter,
    make_client: Callable[..., BcsClient],
    caplog: pytest.LogCaptureFixture,
    offset: float,
) -> None:
    router.get(RECORD_URL).mock(return_value=ok(Date=_date(offset)))
    make_client().fetch()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_skew_behind_also_warned(
    router: respx.MockRouter,
    make_client: Callable[..., BcsClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    router.get(RECORD_URL).mock(return_value=ok(Date=_date(-900)))
    make_client().fetch()
    assert "differ by -900 s" in caplog.text


# -- no httpx exception escapes --------------------------------------------------------------


HTTPX_FAILURES = [
    httpx.ConnectError("refused"),
    httpx.ConnectTimeout("connect timeout"),
    httpx.ReadTimeout("read timeout"),
    httpx.WriteTimeout("write timeout"),
    httpx.PoolTimeout("pool timeout"),
    httpx.ReadError("reset"),
    httpx.WriteError("broken pipe"),
    httpx.CloseError("close"),
    httpx.RemoteProtocolError("server disconnected"),
    httpx.LocalProtocolError("bad header"),
    httpx.ProxyError("proxy said no"),
    httpx.UnsupportedProtocol("gopher"),
    httpx.DecodingError("bad gzip"),
    httpx.TooManyRedirects("loop"),
    httpx.InvalidURL("bad url"),
    httpx.CookieConflict("two cookies"),
    httpx.StreamConsumed(),
    httpx.HTTPError("generic"),
]


@pytest.mark.parametrize(
    "failure", HTTPX_FAILURES, ids=[type(exc).__name__ for exc in HTTPX_FAILURES]
)
def test_no_httpx_exception_escapes(
    router: respx.MockRouter, make_client: Callable[..., BcsClient], failure: Exception
) -> None:
    router.get(RECORD_URL).mock(side_effect=failure)
    with pytest.raises(SourceError) as caught:
        make_client().fetch()
    assert not isinstance(caught.value, httpx.HTTPError | httpx.StreamError)
    assert caught.value.__cause__ is failure
    assert "\n" not in str(caught.value)


def test_failure_while_reading_the_body_is_mapped_and_retried(
    router: respx.MockRouter, make_client: Callable[..., BcsClient], sleeps: list[float]
) -> None:
    def broken() -> Iterator[bytes]:
        yield b'{"count": 0,'
        raise httpx.ReadError("connection reset by peer")

    router.get(RECORD_URL).mock(
        side_effect=[httpx.Response(200, content=broken(), headers={"X-Request-Id": "r-x"}), ok()]
    )
    assert make_client().fetch().body == OK_BODY
    assert sleeps == [0.5]


def test_tls_verification_failure_is_not_retried(
    router: respx.MockRouter, make_client: Callable[..., BcsClient], sleeps: list[float]
) -> None:
    import ssl

    def fail(request: httpx.Request) -> httpx.Response:
        try:
            raise ssl.SSLCertVerificationError("certificate verify failed")
        except ssl.SSLError as exc:
            raise httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED]", request=request) from exc

    route = router.get(RECORD_URL).mock(side_effect=fail)
    with pytest.raises(TransportError, match="TLS failure"):
        make_client().fetch()
    assert route.call_count == 1
    assert sleeps == []


# -- TLS options -----------------------------------------------------------------------------


def test_missing_ca_file_is_a_transport_error(
    router: respx.MockRouter, make_client: Callable[..., BcsClient], tmp_path: Any
) -> None:
    route = router.get(RECORD_URL).mock(return_value=ok())
    client = make_client(make_source(ca_file=str(tmp_path / "missing.pem")))
    with pytest.raises(TransportError, match="cannot load ca_file"):
        client.fetch()
    assert route.call_count == 0


@pytest.mark.parametrize(
    "options",
    [{"ca_file": certifi.where()}, {"verify_tls": False}],
    ids=["ca-file", "no-verify"],
)
def test_tls_options_build_a_working_client(
    router: respx.MockRouter, make_client: Callable[..., BcsClient], options: dict[str, Any]
) -> None:
    router.get(RECORD_URL).mock(return_value=ok())
    assert make_client(make_source(**options)).fetch().status == 200


# -- secrets ---------------------------------------------------------------------------------


def test_no_secret_in_logs_or_errors(
    router: respx.MockRouter,
    make_client: Callable[..., BcsClient],
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    # a gateway that echoes the token back in its error message
    router.get(RECORD_URL).mock(
        side_effect=[
            httpx.Response(500, text=f"upstream failed for token {TOKEN}"),
            httpx.Response(401, json={"error_code": "APIGW.0307", "error_msg": f"bad {TOKEN}"}),
        ]
    )
    token_client = make_client()
    with pytest.raises(AuthError) as token_error:
        token_client.fetch()
    texts += [str(token_error.value), repr(token_error.value), repr(token_client)]
    texts.append(repr(token_client.auth))

    router.routes.clear()
    router.get(RECORD_URL).respond(
        401,
        json={
            "error_code": "APIGW.0301",
            "error_msg": f"signature mismatch, key {SECRET_KEY} token {SECURITY_TOKEN}",
        },
    )
    aksk_client = make_client(make_source(aksk_auth()))
    with pytest.raises(SignatureRejected) as aksk_error:
        aksk_client.fetch()
    texts += [str(aksk_error.value), repr(aksk_client), repr(aksk_client.auth)]

    everything = caplog.text + "\n".join(texts)
    assert "upstream failed" in everything  # the retry was logged
    for secret in (TOKEN, SECRET_KEY, SECURITY_TOKEN):
        assert secret not in everything


# -- a real HTTP server ----------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    release: threading.Event

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/slow/"):
            self.release.wait(5)
            return
        if self.path.startswith("/huge/"):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Request-Id", "real-huge")
            self.end_headers()  # no Content-Length: the body runs until the connection closes
            self.wfile.write(b'{"pad": "')
            for _ in range(64):
                self.wfile.write(b"x" * 16384)
            self.wfile.write(b'"}')
            self.close_connection = True
            return
        payload = json.dumps(OK_BODY).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("X-Request-Id", "real-ok")
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def local_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)  # 127.0.0.1 must be reached directly
    release = threading.Event()
    handler = type("Handler", (_Handler,), {"release": release})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_real_server_success_cap_and_timeout(
    local_server: str, clock: FakeClock, sleeps: list[float]
) -> None:
    def client(prefix: str, **overrides: Any) -> BcsClient:
        source = make_source(endpoint=f"{local_server}/{prefix}", max_retries=0, **overrides)
        return BcsClient(source, clock=clock, sleep=sleeps.append)

    with client("ok") as good:
        fetched = good.fetch()
    assert (fetched.body, fetched.request_id) == (OK_BODY, "real-ok")

    with client("huge", max_response_bytes=65536) as huge, pytest.raises(ResponseTooLarge) as big:
        huge.fetch()
    assert big.value.request_id == "real-huge"

    with client("slow", timeout=0.2) as slow, pytest.raises(TransportError, match="timed out"):
        slow.fetch()
