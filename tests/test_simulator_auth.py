"""Simulated gateway and IAM authentication: tokens, IAM passwords, AK/SK signatures."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sim_support import START, password_body, record_path

from notifier.bcs import signing
from notifier.simulator import Simulator
from notifier.simulator.auth import AkskVerifier, Principal, ReceivedRequest, Rejection

NS = 1_000_000_000
VECTORS = Path(__file__).parent / "fixtures" / "aksk-sign-vectors.txt"
EXPIRES_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(seed=2, start=START, token_lifetime=3600) as simulator:
        yield simulator


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.endpoint, timeout=5) as client:
        yield client


def get_token(client: httpx.Client, sim: Simulator, **kwargs: Any) -> httpx.Response:
    return client.post(
        "/v3/auth/tokens",
        params={"nocatalog": "true"},
        json=password_body(sim, **kwargs),
        headers={"Content-Type": "application/json;charset=UTF-8"},
    )


# -- tokens ------------------------------------------------------------------------------------


def test_the_fixed_token_works(sim: Simulator, client: httpx.Client) -> None:
    response = client.get(record_path(sim), headers={"X-Auth-Token": sim.credentials.token})
    assert response.status_code == 200
    assert sim.requests()[-1].auth == "token"


@pytest.mark.parametrize(
    ("headers", "code", "message"),
    [
        ({}, "APIGW.0301", "Incorrect IAM authentication information: x-auth-token not found"),
        (
            {"X-Auth-Token": "MIIforged"},
            "APIGW.0301",
            "Incorrect IAM authentication information: decrypt token fail",
        ),
        (
            {"Authorization": "Bearer something"},
            "APIGW.0301",
            "Incorrect IAM authentication information: verify aksk signature fail",
        ),
    ],
    ids=["no-credentials", "unknown-token", "foreign-authorization"],
)
def test_missing_or_bad_credentials_are_refused(
    sim: Simulator, client: httpx.Client, headers: dict[str, str], code: str, message: str
) -> None:
    response = client.get(record_path(sim), headers=headers)
    assert response.status_code == 401
    assert response.json() == {
        "error_code": code,
        "error_msg": message,
        "request_id": response.headers["x-request-id"],
    }


def test_iam_password_login_issues_a_working_token(sim: Simulator, client: httpx.Client) -> None:
    response = get_token(client, sim)
    assert response.status_code == 201
    token = response.headers["x-subject-token"]
    assert len(token) > 8000  # real tokens are large
    body = response.json()["token"]
    assert EXPIRES_AT.match(body["expires_at"])
    assert body["expires_at"] == "2024-01-15T09:30:00.000000Z"  # start + the 1 h lifetime
    assert body["project"]["id"] == sim.project_id
    assert "catalog" not in body
    records = client.get(record_path(sim), headers={"X-Auth-Token": token})
    assert records.status_code == 200
    assert sim.requests()[-1].auth == "iam-token"


def test_iam_accepts_a_project_scope_by_region_name(sim: Simulator, client: httpx.Client) -> None:
    assert get_token(client, sim, project={"name": "cn-north-4"}).status_code == 201


@pytest.mark.parametrize(
    "change",
    [{"password": "wrong"}, {"username": "mallory"}, {"domain": "other-domain"}],
    ids=["password", "username", "domain"],
)
def test_iam_refuses_wrong_credentials(
    sim: Simulator, client: httpx.Client, change: dict[str, str]
) -> None:
    response = get_token(client, sim, **change)
    assert response.status_code == 401
    assert "x-subject-token" not in response.headers
    assert response.json() == {
        "error": {
            "code": 401,
            "message": "The username or password is wrong.",
            "title": "Unauthorized",
        }
    }


@pytest.mark.parametrize(
    "body",
    [b"not json", b"{}", b'{"auth": {"identity": {"methods": ["token"]}}}', b"[]"],
    ids=["not-json", "empty", "no-password", "list"],
)
def test_iam_refuses_malformed_bodies(client: httpx.Client, body: bytes) -> None:
    response = client.post("/v3/auth/tokens", content=body)
    assert response.status_code == 400
    assert response.json() == {"error_msg": "Request body is invalid.", "error_code": "IAM.0011"}


def test_iam_refuses_a_foreign_project_scope(sim: Simulator, client: httpx.Client) -> None:
    response = get_token(client, sim, project={"id": "f" * 32})
    assert response.status_code == 400
    assert response.json()["error_code"] == "IAM.0007"


def test_iam_tokens_expire_after_their_lifetime(sim: Simulator, client: httpx.Client) -> None:
    token = get_token(client, sim).headers["x-subject-token"]
    sim.advance(3599)
    assert client.get(record_path(sim), headers={"X-Auth-Token": token}).status_code == 200
    sim.advance(1)
    response = client.get(record_path(sim), headers={"X-Auth-Token": token})
    assert response.status_code == 401
    assert response.json()["error_code"] == "APIGW.0307"
    assert response.json()["error_msg"] == "The token must be updated."
    fresh = get_token(client, sim).headers["x-subject-token"]
    assert client.get(record_path(sim), headers={"X-Auth-Token": fresh}).status_code == 200


@pytest.mark.parametrize("via", ["python", "http"])
def test_expiring_all_tokens_revokes_fixed_and_issued_ones(
    sim: Simulator, client: httpx.Client, via: str
) -> None:
    issued = get_token(client, sim).headers["x-subject-token"]
    if via == "python":
        assert sim.expire_tokens() == 2
    else:
        assert client.post("/_sim/expire-tokens").json() == {"expired": 2}
    for token in (issued, sim.credentials.token):
        response = client.get(record_path(sim), headers={"X-Auth-Token": token})
        assert response.status_code == 401
        assert response.json()["error_code"] == "APIGW.0307"
    fresh = get_token(client, sim).headers["x-subject-token"]
    assert client.get(record_path(sim), headers={"X-Auth-Token": fresh}).status_code == 200


def test_iam_only_answers_post(client: httpx.Client) -> None:
    response = client.get("/v3/auth/tokens")
    assert response.status_code == 404
    assert response.json()["error_code"] == "APIGW.0101"


# -- AK/SK ---------------------------------------------------------------------------------------


def sdk_date(sim: Simulator, offset: float = 0) -> str:
    return signing.sdk_date(datetime.fromtimestamp(sim.clock.time() + offset, tz=UTC))


def sign_get(
    sim: Simulator,
    path: str,
    query: str,
    headers: Mapping[str, str],
    *,
    access_key: str | None = None,
    secret_key: str | None = None,
) -> str:
    """The Authorization value for a body-less GET, with ``sim``'s keys unless told others."""
    return signing.sign(
        access_key=access_key or sim.credentials.access_key,
        secret_key=secret_key or sim.credentials.secret_key,
        method="GET",
        path=path,
        query=query,
        headers=headers,
        body=b"",
    )


def signed_get(
    client: httpx.Client,
    sim: Simulator,
    params: list[tuple[str, str]] | None = None,
    *,
    access_key: str | None = None,
    secret_key: str | None = None,
    date: str | None = None,
    extra: Mapping[str, str] | None = None,
    sent_query: str | None = None,
) -> httpx.Response:
    path = record_path(sim)
    query = signing.canonical_query(params or [])
    headers = {
        "Host": f"127.0.0.1:{sim.port}",
        "X-Sdk-Date": date or sdk_date(sim),
        "X-Project-Id": sim.project_id,
        "Content-Type": "application/json",
        **(extra or {}),
    }
    headers["Authorization"] = sign_get(
        sim, path, query, headers, access_key=access_key, secret_key=secret_key
    )
    query = query if sent_query is None else sent_query
    return client.get(f"{path}?{query}" if query else path, headers=headers)


def test_a_correct_signature_is_accepted(sim: Simulator, client: httpx.Client) -> None:
    params = [("operation_status", "finished"), ("resource_type", "BCSSVC01")]
    response = signed_get(client, sim, params)
    assert response.status_code == 200
    expected = [
        r
        for r in sim.records()
        if r["operation_status"] == "finished" and r["resource_type"] == "BCSSVC01"
    ]
    assert response.json() == {"count": 2, "operation_records": expected}
    assert sim.requests()[-1].auth == "aksk"


def test_query_encoding_edge_cases_are_re_canonicalised(
    sim: Simulator, client: httpx.Client
) -> None:
    params = [("operation_status", "finished"), ("blockchain_id", "a b/c~d:é"), ("A", "1")]
    response = signed_get(client, sim, params)
    assert response.status_code == 200
    assert response.json() == {"count": 0, "operation_records": []}


def test_a_plus_for_a_space_breaks_the_signature(sim: Simulator, client: httpx.Client) -> None:
    # what httpx's params= would send: the gateway decodes %20 only
    params = [("blockchain_id", "a b")]
    response = signed_get(client, sim, params, sent_query="blockchain_id=a+b")
    assert response.status_code == 401


def test_a_wrong_secret_key_is_refused(sim: Simulator, client: httpx.Client) -> None:
    response = signed_get(client, sim, secret_key="0" * 40)
    assert response.status_code == 401
    body = response.json()
    assert body["error_code"] == "APIGW.0301"
    assert body["error_msg"].startswith(
        "Incorrect IAM authentication information: verify aksk signature fail"
    )
    assert body["request_id"] == response.headers["x-request-id"]


def test_a_query_changed_after_signing_is_refused(sim: Simulator, client: httpx.Client) -> None:
    params = [("operation_status", "finished")]
    response = signed_get(client, sim, params, sent_query="operation_status=failed")
    assert response.status_code == 401


def test_an_unknown_access_key_is_refused_without_echoing_it(
    sim: Simulator, client: httpx.Client
) -> None:
    response = signed_get(client, sim, access_key="HPUAEXAMPLEAK0000001")
    assert response.status_code == 401
    message = response.json()["error_msg"]
    assert message.endswith("err:ak not exist")
    assert "HPUAEXAMPLEAK0000001" not in message


@pytest.mark.parametrize(
    ("offset", "status"),
    [(-16 * 60, 401), (-14 * 60, 200), (14 * 60, 200), (16 * 60, 401)],
    ids=["16min-behind", "14min-behind", "14min-ahead", "16min-ahead"],
)
def test_clock_skew_beyond_15_minutes_is_refused(
    sim: Simulator, client: httpx.Client, offset: int, status: int
) -> None:
    response = signed_get(client, sim, date=sdk_date(sim, offset))
    assert response.status_code == status
    if status == 401:
        assert "away from the server time" in response.json()["error_msg"]


def test_skew_is_measured_against_the_simulator_clock(sim: Simulator, client: httpx.Client) -> None:
    date = sdk_date(sim)
    assert signed_get(client, sim, date=date).status_code == 200
    sim.advance(16 * 60)
    assert signed_get(client, sim, date=date).status_code == 401
    assert signed_get(client, sim).status_code == 200


def test_a_malformed_date_is_refused(sim: Simulator, client: httpx.Client) -> None:
    response = signed_get(client, sim, date="2024-01-15T08:30:00Z")
    assert response.status_code == 401
    assert "format" in response.json()["error_msg"]


def test_five_failures_in_a_row_lock_the_key_for_five_minutes(
    sim: Simulator, client: httpx.Client
) -> None:
    for _ in range(4):
        assert signed_get(client, sim, secret_key="bad").status_code == 401
    assert signed_get(client, sim).status_code == 200  # a success resets the count
    for _ in range(5):
        assert signed_get(client, sim, secret_key="bad").status_code == 401
    locked = signed_get(client, sim)
    assert locked.status_code == 401
    assert locked.json()["error_msg"] == (
        "Incorrect IAM authentication information: AK access failed to reach the limit,forbidden."
    )
    sim.advance(299)
    assert signed_get(client, sim).status_code == 401
    sim.advance(1)
    assert signed_get(client, sim).status_code == 200


def test_temporary_keys_need_their_signed_security_token(
    sim: Simulator, client: httpx.Client
) -> None:
    credentials = sim.credentials
    temporary = {
        "access_key": credentials.temporary_access_key,
        "secret_key": credentials.temporary_secret_key,
    }
    good = signed_get(
        client, sim, extra={"X-Security-Token": credentials.security_token}, **temporary
    )
    assert good.status_code == 200
    assert sim.requests()[-1].auth == "aksk-temporary"
    assert signed_get(client, sim, **temporary).status_code == 401
    wrong = signed_get(client, sim, extra={"X-Security-Token": "forged"}, **temporary)
    assert wrong.status_code == 401


def test_host_and_date_must_be_signed(sim: Simulator, client: httpx.Client) -> None:
    path = record_path(sim)
    headers = {"X-Sdk-Date": sdk_date(sim), "X-Project-Id": sim.project_id}
    headers["Authorization"] = sign_get(sim, path, "", headers)
    response = client.get(path, headers=headers)
    assert response.status_code == 401
    assert "host is not signed" in response.json()["error_msg"]


def test_a_signed_header_that_was_not_sent_is_refused(sim: Simulator, client: httpx.Client) -> None:
    path = record_path(sim)
    headers = {"Host": f"127.0.0.1:{sim.port}", "X-Sdk-Date": sdk_date(sim), "X-Extra": "1"}
    authorization = sign_get(sim, path, "", headers)
    del headers["X-Extra"]
    response = client.get(path, headers={**headers, "Authorization": authorization})
    assert response.status_code == 401
    assert "not sent: x-extra" in response.json()["error_msg"]


# -- the official SDK's vectors, verified by the simulator's verifier ---------------------------

AK = "HPUAEXAMPLEAK0000001"
SK = "exampleSecretKey0123456789abcdefEXAMPLE0"
PROJECT = "0123456789abcdef0123456789abcdef"
SDK_HEADERS = {
    "content-type": "application/json",
    "user-agent": "huaweicloud-usdk-python/3.0; test-agent",
    "x-sdk-date": "20240115T083000Z",
    "x-project-id": PROJECT,
    "host": "bcs.cn-north-4.myhuaweicloud.com",
}
IAM_BODY = (
    b'{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"alice",'
    b'"password":"P@ssw0rd!","domain":{"name":"example-domain"}}}},"scope":{"project":'
    b'{"id":"0123456789abcdef0123456789abcdef"}}}}'
)


def vector_authorization(number: int) -> str:
    for line in VECTORS.read_text(encoding="utf-8").splitlines():
        if line.startswith(f"V{number}: "):
            return line.removeprefix(f"V{number}: ")
    raise AssertionError(f"vector {number} not in the fixture")


def vector_requests() -> list[tuple[int, ReceivedRequest, str | None]]:
    path = f"/v2/{PROJECT}/operation/record"
    return [
        (
            1,
            ReceivedRequest(
                "GET",
                path,
                "blockchain_id=4ff8b8d0-b3c2-11ee-8a1a-0255ac100b02&operation_status=processing",
                SDK_HEADERS,
                b"",
            ),
            None,
        ),
        (
            2,
            ReceivedRequest(
                "GET",
                path,
                "resource_type=BCSSVC01&operation_type=99"
                "&operation_id=BCSSVC01-99-1705307400123456789",
                {**SDK_HEADERS, "x-security-token": "gQpjbi1ub3J0aC00EXAMPLE-SECURITY-TOKEN"},
                b"",
            ),
            "gQpjbi1ub3J0aC00EXAMPLE-SECURITY-TOKEN",
        ),
        (
            3,
            ReceivedRequest(
                "POST",
                "/v3/auth/tokens",
                "nocatalog=true",
                {
                    "content-type": "application/json;charset=UTF-8",
                    "x-sdk-date": "20240115T083000Z",
                    "host": "iam.cn-north-4.myhuaweicloud.com",
                },
                IAM_BODY,
            ),
            None,
        ),
        (
            4,
            ReceivedRequest(
                "GET",
                path,
                "operation_status=finished&blockchain_id=a%20b%2Fc~d%3A%C3%A9&A=1",
                {"x-sdk-date": "20240115T083000Z", "host": "bcs.cn-north-4.myhuaweicloud.com"},
                b"",
            ),
            None,
        ),
    ]


@pytest.mark.parametrize(
    ("number", "request_", "security_token"),
    vector_requests(),
    ids=["v1-list", "v2-temporary", "v3-post-body", "v4-encoding"],
)
def test_the_verifier_accepts_the_official_sdk_vectors(
    number: int, request_: ReceivedRequest, security_token: str | None
) -> None:
    verifier = AkskVerifier()
    verifier.add_key(AK, SK, security_token)
    signed = ReceivedRequest(
        request_.method,
        request_.path,
        request_.query,
        {**request_.headers, "authorization": vector_authorization(number)},
        request_.body,
    )
    assert isinstance(verifier.verify(signed, START * NS), Principal)
    tampered = ReceivedRequest(
        signed.method, signed.path, signed.query, signed.headers, signed.body + b" "
    )
    assert isinstance(verifier.verify(tampered, START * NS), Rejection)


def test_issue_token_is_a_shortcut_past_iam(sim: Simulator, client: httpx.Client) -> None:
    token = sim.issue_token()
    assert token != sim.credentials.token
    assert client.get(record_path(sim), headers={"X-Auth-Token": token}).status_code == 200
    assert sim.requests()[-1].auth == "iam-token"
    shown = repr(sim.credentials)
    for secret in (sim.credentials.secret_key, sim.credentials.password, sim.credentials.token):
        assert secret not in shown
