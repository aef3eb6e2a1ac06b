"""Auth flows through ``BcsClient``: IAM password tokens (cache, refresh, 401), build_auth."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx
from bcs_support import ENDPOINT, NOW, OK_BODY, PROJECT, RECORD_URL, FakeClock, make_source

from notifier import __version__
from notifier.bcs.auth import AkSkAuth, PasswordAuth, TokenAuth, build_auth
from notifier.bcs.client import BcsClient
from notifier.config import AuthConfig, Secret, SourceConfig
from notifier.errors import ApiError, AuthError, ResponseTooLarge

IAM = "https://iam.cn-north-4.myhuaweicloud.com"
IAM_URL = f"{IAM}/v3/auth/tokens"
PASSWORD = "P@ssw0rd!"
TOKEN_A = "MIIA-first-token-" + "a" * 80
TOKEN_B = "MIIB-second-token-" + "b" * 80
DAY = 86400.0


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def issued(
    token: str, *, lifetime: float = DAY, at: float = NOW, expires: str | None = None
) -> httpx.Response:
    """IAM's 201: token in X-Subject-Token, expiry in the body."""
    body: dict[str, Any] = {
        "token": {
            "methods": ["password"],
            "issued_at": _iso(at),
            "expires_at": expires or _iso(at + lifetime),
            "user": {"name": "alice", "domain": {"name": "example-domain"}},
        }
    }
    if expires == "":
        body["token"].pop("expires_at")
        body["token"].pop("issued_at")
    return httpx.Response(201, json=body, headers={"X-Subject-Token": token, "X-Request-Id": "iam"})


def password_source(project_name: str | None = None, **overrides: Any) -> SourceConfig:
    auth = AuthConfig(
        type="password",
        iam_endpoint=IAM,
        domain="example-domain",
        username="alice",
        password=Secret(PASSWORD),
        project_name=project_name,
    )
    return make_source(auth, **overrides)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(clock: FakeClock, sleeps: list[float]) -> Iterator[BcsClient]:
    with BcsClient(password_source(), clock=clock, sleep=sleeps.append, jitter=lambda: 0.0) as c:
        yield c


def logins_after_fetch_at(
    client: BcsClient, clock: FakeClock, iam: respx.Route, when: float
) -> int:
    """Fetch with the clock at ``when``; how many IAM logins there have been by then."""
    clock.now = when
    client.fetch()
    return iam.call_count


def tokens_sent(route: respx.Route) -> list[str]:
    return [call.request.headers["X-Auth-Token"] for call in route.calls]


# -- the IAM request -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("project_name", "scope"),
    [(None, {"id": PROJECT}), ("cn-north-4", {"name": "cn-north-4"})],
    ids=["scope-project-id", "scope-project-name"],
)
def test_iam_request_shape(
    router: respx.MockRouter, clock: FakeClock, project_name: str | None, scope: dict[str, str]
) -> None:
    iam = router.post(IAM_URL).mock(return_value=issued(TOKEN_A))
    bcs = router.get(RECORD_URL).respond(200, json=OK_BODY)
    with BcsClient(password_source(project_name), clock=clock) as client:
        client.fetch()
    request = iam.calls.last.request
    assert request.method == "POST"
    assert str(request.url) == f"{IAM}/v3/auth/tokens?nocatalog=true"
    assert request.headers["Content-Type"] == "application/json;charset=UTF-8"
    assert request.headers["User-Agent"] == f"bcs-notifier/{__version__}"
    assert "X-Auth-Token" not in request.headers
    expected = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {
                        "name": "alice",
                        "password": PASSWORD,
                        "domain": {"name": "example-domain"},
                    }
                },
            },
            "scope": {"project": scope},
        }
    }
    assert request.content == json.dumps(expected, separators=(",", ":")).encode()
    assert tokens_sent(bcs) == [TOKEN_A]


def test_iam_body_is_byte_for_byte_the_documented_one() -> None:
    auth = PasswordAuth(
        iam_endpoint=f"{IAM}/",
        domain="example-domain",
        username="alice",
        password=Secret(PASSWORD),
        project_id=PROJECT,
    )
    assert auth.token_url == f"{IAM}/v3/auth/tokens?nocatalog=true"
    assert auth.token_body() == (
        b'{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"alice",'
        b'"password":"P@ssw0rd!","domain":{"name":"example-domain"}}}},"scope":{"project":'
        b'{"id":"0123456789abcdef0123456789abcdef"}}}}'
    )


# -- caching and refresh ---------------------------------------------------------------------


def test_token_cached_until_30_minutes_before_expiry(
    router: respx.MockRouter, client: BcsClient, clock: FakeClock
) -> None:
    iam = router.post(IAM_URL).mock(side_effect=[issued(TOKEN_A), issued(TOKEN_B, at=NOW + DAY)])
    bcs = router.get(RECORD_URL).respond(200, json=OK_BODY)
    client.fetch()
    client.fetch()
    assert iam.call_count == 1
    assert isinstance(client.auth, PasswordAuth)
    assert client.auth.expires_at == NOW + DAY

    assert logins_after_fetch_at(client, clock, iam, NOW + DAY - 1800 - 1) == 1
    assert logins_after_fetch_at(client, clock, iam, NOW + DAY - 1800) == 2
    assert tokens_sent(bcs) == [TOKEN_A, TOKEN_A, TOKEN_A, TOKEN_B]


def test_expires_at_in_the_documented_format(router: respx.MockRouter, clock: FakeClock) -> None:
    """``2020-01-04T09:05:22.701000Z`` with no issued_at: measured from the injected clock."""
    clock.now = datetime(2020, 1, 3, 9, 5, 22, 701000, tzinfo=UTC).timestamp()
    start = clock.now
    response = httpx.Response(
        201,
        json={"token": {"expires_at": "2020-01-04T09:05:22.701000Z"}},
        headers={"X-Subject-Token": TOKEN_A},
    )
    iam = router.post(IAM_URL).mock(side_effect=[response, issued(TOKEN_B, at=start)])
    router.get(RECORD_URL).respond(200, json=OK_BODY)
    with BcsClient(password_source(), clock=clock) as client:
        client.fetch()
        assert isinstance(client.auth, PasswordAuth)
        assert client.auth.expires_at == pytest.approx(start + DAY)
        assert logins_after_fetch_at(client, clock, iam, start + DAY - 1801) == 1
        assert logins_after_fetch_at(client, clock, iam, start + DAY - 1799) == 2


def test_expiry_measured_from_issued_at_not_the_local_clock(
    router: respx.MockRouter, clock: FakeClock
) -> None:
    """A local clock 2 h behind IAM must not make the token look valid 2 h too long."""
    iam = router.post(IAM_URL).mock(
        side_effect=[issued(TOKEN_A, at=NOW + 7200), issued(TOKEN_B, at=NOW + 7200 + DAY)]
    )
    router.get(RECORD_URL).respond(200, json=OK_BODY)
    with BcsClient(password_source(), clock=clock) as client:
        client.fetch()
        clock.now = NOW + DAY - 1800
        client.fetch()
    assert iam.call_count == 2


def test_missing_expiry_falls_back_to_one_hour(
    router: respx.MockRouter, client: BcsClient, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    iam = router.post(IAM_URL).mock(side_effect=[issued(TOKEN_A, expires=""), issued(TOKEN_B)])
    router.get(RECORD_URL).respond(200, json=OK_BODY)
    client.fetch()
    assert "no readable token.expires_at" in caplog.text
    assert logins_after_fetch_at(client, clock, iam, NOW + 1799) == 1
    assert logins_after_fetch_at(client, clock, iam, NOW + 1800) == 2


# -- 401 from BCS ----------------------------------------------------------------------------


def test_401_refreshes_once_then_succeeds(
    router: respx.MockRouter, client: BcsClient, sleeps: list[float]
) -> None:
    iam = router.post(IAM_URL).mock(side_effect=[issued(TOKEN_A), issued(TOKEN_B)])
    expired = httpx.Response(401, json={"error_code": "APIGW.0307", "error_msg": "token expired"})
    bcs = router.get(RECORD_URL).mock(
        side_effect=[expired, httpx.Response(200, json=OK_BODY, headers={"X-Request-Id": "ok"})]
    )
    fetched = client.fetch()
    assert fetched.body == OK_BODY
    assert fetched.request_id == "ok"
    assert iam.call_count == 2
    assert tokens_sent(bcs) == [TOKEN_A, TOKEN_B]
    assert sleeps == []


def test_second_401_is_auth_error(
    router: respx.MockRouter, client: BcsClient, sleeps: list[float]
) -> None:
    iam = router.post(IAM_URL).mock(side_effect=[issued(TOKEN_A), issued(TOKEN_B)])
    bcs = router.get(RECORD_URL).respond(
        401,
        json={"error_code": "BCS.4010401", "error_msg": "Unauthorized"},
        headers={"X-Request-Id": "r-401"},
    )
    with pytest.raises(AuthError) as caught:
        client.fetch()
    assert type(caught.value) is AuthError
    assert (caught.value.status, caught.value.code) == (401, "BCS.4010401")
    assert caught.value.request_id == "r-401"
    assert iam.call_count == 2
    assert tokens_sent(bcs) == [TOKEN_A, TOKEN_B]
    assert sleeps == []


def test_huge_401_body_before_the_refresh_is_capped(
    router: respx.MockRouter, clock: FakeClock
) -> None:
    """httpx reads an intermediate auth response whole; the raw-stream cap still applies."""
    produced: list[int] = []

    def chunks() -> Iterator[bytes]:
        for index in range(100_000):
            produced.append(index)
            yield b"x" * 1024

    router.post(IAM_URL).mock(side_effect=[issued(TOKEN_A), issued(TOKEN_B)])
    router.get(RECORD_URL).mock(return_value=httpx.Response(401, content=chunks()))
    source = password_source(max_response_bytes=1024)
    with BcsClient(source, clock=clock) as client, pytest.raises(ResponseTooLarge):
        client.fetch()
    assert len(produced) <= 65


def test_403_does_not_refresh(router: respx.MockRouter, client: BcsClient) -> None:
    iam = router.post(IAM_URL).mock(return_value=issued(TOKEN_A))
    bcs = router.get(RECORD_URL).respond(
        403, json={"error_code": "BCS.4030001", "error_msg": "no permission"}
    )
    with pytest.raises(AuthError):
        client.fetch()
    assert (iam.call_count, bcs.call_count) == (1, 1)


# -- IAM errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "code", "fragment"),
    [
        (
            401,
            {"error_msg": "The username or password is wrong.", "error_code": "IAM.0101"},
            "IAM.0101",
            "The username or password is wrong.",
        ),
        (
            400,
            {"error": {"code": "IAM.0011", "message": "Request parameter error", "title": "Bad"}},
            "IAM.0011",
            "Bad: Request parameter error",
        ),
        (
            401,
            {
                "error": {
                    "code": 401,
                    "message": "The request you have made requires authentication.",
                    "title": "Unauthorized",
                }
            },
            None,
            "Unauthorized: The request you have made requires authentication.",
        ),
        (
            403,
            {"error_msg": "The user is locked.", "error_code": "IAM.0107"},
            "IAM.0107",
            "The user is locked.",
        ),
        (404, {"error": {"code": 404, "title": "Not Found"}}, None, "Not Found"),
    ],
    ids=["flat-401", "keystone-code", "keystone-numeric", "locked-403", "domain-404"],
)
def test_iam_errors_are_auth_errors_with_the_iam_code(
    router: respx.MockRouter,
    client: BcsClient,
    sleeps: list[float],
    status: int,
    body: dict[str, Any],
    code: str | None,
    fragment: str,
) -> None:
    iam = router.post(IAM_URL).respond(status, json=body, headers={"X-Request-Id": "iam-err"})
    bcs = router.get(RECORD_URL).respond(200, json=OK_BODY)
    with pytest.raises(AuthError) as caught:
        client.fetch()
    assert caught.value.status == status
    assert caught.value.code == code
    assert caught.value.error_message == f"IAM token request: {fragment}"
    assert caught.value.request_id == "iam-err"
    assert (iam.call_count, bcs.call_count) == (1, 0)
    assert sleeps == []


def test_refused_login_is_not_repeated_for_five_minutes(
    router: respx.MockRouter, client: BcsClient, clock: FakeClock
) -> None:
    iam = router.post(IAM_URL).mock(
        side_effect=[
            httpx.Response(401, json={"error_code": "IAM.0101", "error_msg": "wrong password"}),
            issued(TOKEN_A, at=NOW + 300),
        ]
    )
    router.get(RECORD_URL).respond(200, json=OK_BODY)
    with pytest.raises(AuthError):
        client.fetch()
    assert client.retry_not_before == NOW + 300

    clock.now = NOW + 299
    with pytest.raises(AuthError) as again:
        client.fetch()
    assert again.value.code == "IAM.0101"
    assert "IAM is not asked again before 08:35:00 UTC" in str(again.value)
    assert iam.call_count == 1

    clock.now = NOW + 300
    assert client.fetch().status == 200
    assert iam.call_count == 2
    assert client.retry_not_before is None


@pytest.mark.parametrize("status", [500, 503, 429], ids=["500", "503", "429"])
def test_iam_server_errors_are_retried(
    router: respx.MockRouter, client: BcsClient, sleeps: list[float], status: int
) -> None:
    iam = router.post(IAM_URL).mock(side_effect=[httpx.Response(status), issued(TOKEN_A)])
    router.get(RECORD_URL).respond(200, json=OK_BODY)
    assert client.fetch().status == 200
    assert iam.call_count == 2
    assert sleeps == ([2.0] if status == 429 else [0.5])
    assert client.retry_not_before is None


def test_iam_server_errors_exhausted(router: respx.MockRouter, client: BcsClient) -> None:
    router.post(IAM_URL).respond(502, text="<html><title>Bad Gateway</title></html>")
    with pytest.raises(ApiError) as caught:
        client.fetch()
    assert type(caught.value) is ApiError
    assert str(caught.value) == "HTTP 502: IAM token request: Bad Gateway"


def test_iam_without_subject_token(router: respx.MockRouter, client: BcsClient) -> None:
    router.post(IAM_URL).respond(201, json={"token": {"expires_at": _iso(NOW + DAY)}})
    with pytest.raises(AuthError, match="without an X-Subject-Token header"):
        client.fetch()


def test_iam_timeout_is_retried(
    router: respx.MockRouter, client: BcsClient, sleeps: list[float]
) -> None:
    router.post(IAM_URL).mock(side_effect=[httpx.ConnectTimeout("slow"), issued(TOKEN_A)])
    router.get(RECORD_URL).respond(200, json=OK_BODY)
    assert client.fetch().status == 200
    assert sleeps == [0.5]


# -- secrets ---------------------------------------------------------------------------------


def test_password_and_tokens_never_logged_or_in_errors(
    router: respx.MockRouter, client: BcsClient, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    router.post(IAM_URL).mock(
        side_effect=[
            issued(TOKEN_A),
            issued(TOKEN_B),
            # an IAM that echoes what it got
            httpx.Response(401, json={"error_code": "IAM.0101", "error_msg": f"bad {PASSWORD}"}),
        ]
    )
    router.get(RECORD_URL).mock(
        side_effect=[
            httpx.Response(401, json={"error_msg": f"expired {TOKEN_A}"}),
            httpx.Response(401, json={"error_msg": f"rejected {TOKEN_B}"}),
        ]
    )
    with pytest.raises(AuthError) as first:
        client.fetch()
    texts += [str(first.value), repr(first.value)]
    assert isinstance(client.auth, PasswordAuth)
    client.auth.invalidate()
    with pytest.raises(AuthError) as second:
        client.fetch()
    texts += [str(second.value), repr(client), repr(client.auth)]
    everything = caplog.text + "\n".join(texts)
    assert "got an IAM token for user alice" in caplog.text
    for secret in (PASSWORD, TOKEN_A, TOKEN_B):
        assert secret not in everything


# -- the other auth types --------------------------------------------------------------------


def test_token_auth_sets_the_header_and_hides_it() -> None:
    auth = TokenAuth(Secret("tok-123"))
    request = httpx.Request("GET", RECORD_URL)
    flow = auth.sync_auth_flow(request)
    sent = next(flow)
    assert sent.headers["X-Auth-Token"] == "tok-123"
    assert "tok-123" not in repr(auth)
    assert auth.secrets() == ("tok-123",)


@pytest.mark.parametrize(
    ("auth", "cls"),
    [
        (AuthConfig(type="token", token=Secret("t")), TokenAuth),
        (
            AuthConfig(
                type="password",
                iam_endpoint=IAM,
                domain="d",
                username="u",
                password=Secret("p"),
            ),
            PasswordAuth,
        ),
        (AuthConfig(type="aksk", access_key=Secret("a"), secret_key=Secret("s")), AkSkAuth),
    ],
    ids=["token", "password", "aksk"],
)
def test_build_auth(auth: AuthConfig, cls: type) -> None:
    source = SourceConfig(name="s", endpoint=ENDPOINT, project_id=PROJECT, auth=auth)
    built = build_auth(source, user_agent="ua")
    assert type(built) is cls
    assert built.kind == auth.type
    assert built.signed is (auth.type == "aksk")


@pytest.mark.parametrize(
    "auth",
    [
        AuthConfig(type="token"),
        AuthConfig(type="password", iam_endpoint=IAM, domain="d", username="u"),
        AuthConfig(type="aksk", access_key=Secret("a")),
        AuthConfig(type="kerberos"),
    ],
    ids=["token-missing", "password-missing", "secret-key-missing", "unknown-type"],
)
def test_build_auth_rejects_incomplete_config(auth: AuthConfig) -> None:
    source = SourceConfig(name="s", endpoint=ENDPOINT, project_id=PROJECT, auth=auth)
    with pytest.raises(ValueError, match=r"required|unknown auth type"):
        build_auth(source, user_agent="ua")


def test_aksk_auth_repr_and_secrets() -> None:
    auth = AkSkAuth(
        access_key=Secret("AK"),
        secret_key=Secret("SK-very-secret"),
        security_token=Secret("ST-temporary"),
    )
    assert "SK-very-secret" not in repr(auth)
    assert set(auth.secrets()) == {"SK-very-secret", "ST-temporary"}


def test_password_auth_refresh_margin_shrinks_for_short_tokens(
    router: respx.MockRouter, clock: FakeClock
) -> None:
    """A token valid 40 min is refreshed at half its life, not 30 min before expiry."""
    iam = router.post(IAM_URL).mock(
        side_effect=[issued(TOKEN_A, lifetime=2400), issued(TOKEN_B, at=NOW + 1200)]
    )
    router.get(RECORD_URL).respond(200, json=OK_BODY)
    with BcsClient(password_source(), clock=clock) as client:
        client.fetch()
        assert logins_after_fetch_at(client, clock, iam, NOW + 1199) == 1
        assert logins_after_fetch_at(client, clock, iam, NOW + 1200) == 2
