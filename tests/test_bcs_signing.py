"""SDK-HMAC-SHA256 against the official SDK's vectors (``tests/fixtures/aksk-sign-vectors.txt``).

The vector file is parsed here, so every input and expected output comes from the SDK run
itself: canonical request, string to sign and ``Authorization`` must match byte for byte,
both through the pure functions and through ``AkSkAuth`` on real httpx requests.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import respx
from clock_support import FakeClock

from notifier.bcs import signing
from notifier.bcs.auth import AkSkAuth
from notifier.config import Secret

VECTOR_FILE = Path(__file__).parent / "fixtures" / "aksk-sign-vectors.txt"
FIXED_NOW = datetime(2024, 1, 15, 8, 30, tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class Vector:
    number: int
    access_key: str
    secret_key: str
    security_token: str | None
    project_id: str | None
    method: str
    url: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes
    canonical_request: str
    string_to_sign: str
    final_url: str
    authorization: str

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    def signed_headers(self) -> dict[str, str]:
        """The headers the SDK signed: the inputs plus Host and the credential headers."""
        headers = dict(self.headers)
        headers["Host"] = self.host
        if self.project_id:
            headers["X-Project-Id"] = self.project_id
        if self.security_token:
            headers["X-Security-Token"] = self.security_token
        return headers


def _field(block: str, name: str) -> str | None:
    match = re.search(rf"^  {re.escape(name)}\s*: (.*)$", block, re.MULTILINE)
    return match.group(1) if match else None


def _fenced(block: str, title: str) -> str:
    match = re.search(rf"^{title}[^\n]*\n```\n(.*?)\n```$", block, re.MULTILINE | re.DOTALL)
    assert match, f"no {title} block"
    return match.group(1)


def _parse_vectors() -> list[Vector]:
    text = VECTOR_FILE.read_text(encoding="utf-8")
    blocks = re.split(r"^VECTOR (\d+):", text, flags=re.MULTILINE)[1:]
    vectors = []
    for number, raw_block in zip(blocks[::2], blocks[1::2], strict=True):
        block = raw_block.split("\nSUMMARY OF AUTHORIZATION HEADERS", 1)[0]
        body_text = _field(block, "Body")
        assert body_text is not None
        body = b"" if body_text == "None" else ast.literal_eval(body_text).encode()
        fields = {name: _field(block, name) for name in ("AK", "SK", "Method", "URL (input)")}
        assert all(fields.values()), fields
        vectors.append(
            Vector(
                number=int(number),
                access_key=str(fields["AK"]),
                secret_key=str(fields["SK"]),
                security_token=_field(block, "SecurityToken"),
                project_id=_field(block, "ProjectId"),
                method=str(fields["Method"]),
                url=str(fields["URL (input)"]),
                query=ast.literal_eval(str(_field(block, "Query (input)"))),
                headers=json.loads(str(_field(block, "Headers(input)"))),
                body=body,
                canonical_request=_fenced(block, "CANONICAL REQUEST"),
                string_to_sign=_fenced(block, "STRING TO SIGN"),
                final_url=str(_field(block, "Final URL")),
                authorization=str(_field(block, "Authorization")),
            )
        )
    return vectors


VECTORS = _parse_vectors()
VECTOR_IDS = [f"vector-{vector.number}" for vector in VECTORS]


def test_the_file_holds_four_vectors() -> None:
    assert [vector.number for vector in VECTORS] == [1, 2, 3, 4]
    summary = VECTOR_FILE.read_text(encoding="utf-8").split("SUMMARY OF AUTHORIZATION HEADERS")[1]
    for vector in VECTORS:
        assert f"V{vector.number}: {vector.authorization}" in summary


@pytest.mark.parametrize("vector", VECTORS, ids=VECTOR_IDS)
def test_canonical_request_string_to_sign_and_authorization(vector: Vector) -> None:
    headers = vector.signed_headers()
    query = signing.canonical_query(vector.query)
    names = signing.signed_header_names(headers)
    request = signing.canonical_request(
        vector.method, vector.path, query, headers, names, vector.body
    )
    assert request == vector.canonical_request
    date = headers[signing.HEADER_DATE]
    to_sign = signing.string_to_sign(date, request)
    assert to_sign == vector.string_to_sign
    signature = signing.signature(vector.secret_key, to_sign)
    assert signing.authorization(vector.access_key, names, signature) == vector.authorization
    assert (
        signing.sign(
            access_key=vector.access_key,
            secret_key=vector.secret_key,
            method=vector.method,
            path=vector.path,
            query=query,
            headers=headers,
            body=vector.body,
        )
        == vector.authorization
    )
    assert f"{vector.url}?{query}" == vector.final_url


@pytest.mark.parametrize("vector", VECTORS, ids=VECTOR_IDS)
def test_parse_authorization_round_trip(vector: Vector) -> None:
    parsed = signing.parse_authorization(vector.authorization)
    assert parsed is not None
    access_key, names, signature = parsed
    assert access_key == vector.access_key
    assert names == signing.signed_header_names(vector.signed_headers())
    assert len(signature) == 64


@pytest.mark.parametrize(
    "value",
    ["Bearer abc", "SDK-HMAC-SHA256 Access=AK, Signature=x", ""],
    ids=["other-scheme", "no-signed-headers", "empty"],
)
def test_parse_authorization_rejects(value: str) -> None:
    assert signing.parse_authorization(value) is None


def _auth_for(vector: Vector) -> AkSkAuth:
    # The SDK signs every header it sends; ours signs Content-Type only with a body, so
    # the vectors' GETs ask for content-type and user-agent explicitly.
    return AkSkAuth(
        access_key=Secret(vector.access_key),
        secret_key=Secret(vector.secret_key),
        project_id=vector.project_id,
        security_token=Secret(vector.security_token) if vector.security_token else None,
        clock=FakeClock.at_wall(FIXED_NOW),
        sign_headers=("content-type", "user-agent"),
    )


@pytest.mark.parametrize("vector", VECTORS, ids=VECTOR_IDS)
def test_auth_signs_a_hand_built_request_like_the_sdk(vector: Vector) -> None:
    headers = {k: v for k, v in vector.headers.items() if k != signing.HEADER_DATE}
    request = httpx.Request(
        vector.method, vector.url, params=vector.query, headers=headers, content=vector.body
    )
    auth = _auth_for(vector)
    auth.sign(request)
    assert request.headers["X-Sdk-Date"] == "20240115T083000Z"
    assert request.headers["Authorization"] == vector.authorization
    assert str(request.url) == vector.final_url
    assert auth.last_canonical_request is not None
    expected = vector.canonical_request
    if vector.security_token:
        expected = expected.replace(vector.security_token, "***")
    assert auth.last_canonical_request == expected


@pytest.mark.parametrize("vector", VECTORS[:2], ids=VECTOR_IDS[:2])
def test_full_httpx_request_through_the_auth_matches(vector: Vector) -> None:
    """Vectors 1 and 2 sent through httpx.Client with the Auth, clock fixed at 08:30:00Z."""
    with respx.mock(assert_all_called=True) as router:
        route = router.get(vector.url).respond(200, json={"count": 0, "operation_records": []})
        headers = {
            "Content-Type": vector.headers["Content-Type"],
            "User-Agent": vector.headers["User-Agent"],
        }
        with httpx.Client(headers=headers) as client:
            response = client.get(vector.url, params=vector.query, auth=_auth_for(vector))
    assert response.status_code == 200
    sent = route.calls.last.request
    assert str(sent.url) == vector.final_url
    assert sent.headers["Authorization"] == vector.authorization
    assert sent.headers["X-Sdk-Date"] == "20240115T083000Z"
    assert sent.headers["X-Project-Id"] == vector.project_id
    if vector.security_token:
        assert sent.headers["X-Security-Token"] == vector.security_token
    else:
        assert "X-Security-Token" not in sent.headers


def test_default_signed_headers_leave_out_unstable_ones() -> None:
    """Without sign_headers only host, x-sdk-date and the credential headers are signed."""
    vector = VECTORS[0]
    request = httpx.Request(
        "GET", vector.url, params=vector.query, headers={"User-Agent": "x", "Accept": "*/*"}
    )
    AkSkAuth(
        access_key=Secret(vector.access_key),
        secret_key=Secret(vector.secret_key),
        project_id=vector.project_id,
        clock=FakeClock.at_wall(FIXED_NOW),
    ).sign(request)
    parsed = signing.parse_authorization(request.headers["Authorization"])
    assert parsed is not None
    assert parsed[1] == ["host", "x-project-id", "x-sdk-date"]
    assert "Content-Type" not in request.headers


def test_post_body_gets_content_type_and_it_is_signed() -> None:
    request = httpx.Request("POST", "https://iam.example.com/v3/auth/tokens", content=b"{}")
    AkSkAuth(
        access_key=Secret("AK"), secret_key=Secret("SK"), clock=FakeClock.at_wall(FIXED_NOW)
    ).sign(request)
    assert request.headers["Content-Type"] == "application/json"
    parsed = signing.parse_authorization(request.headers["Authorization"])
    assert parsed is not None
    assert parsed[1] == ["content-type", "host", "x-sdk-date"]


QUERY_CASES = [
    pytest.param([("a", "b c")], "a=b%20c", id="space-is-%20"),
    pytest.param([("a", "b+c")], "a=b%2Bc", id="plus-is-encoded"),
    pytest.param([("a", "x/y")], "a=x%2Fy", id="slash-encoded"),
    pytest.param([("a", "~-_.")], "a=~-_.", id="unreserved-kept"),
    pytest.param([("a", "é")], "a=%C3%A9", id="non-ascii-utf8"),
    pytest.param([("a", "中")], "a=%E4%B8%AD", id="cjk-utf8"),
    pytest.param([("a", "k=v&x")], "a=k%3Dv%26x", id="separators-in-value"),
    pytest.param([("b", "1"), ("B", "2"), ("a", "3")], "B=2&a=3&b=1", id="upper-sorts-first"),
    pytest.param([("k", "2"), ("k", "1")], "k=1&k=2", id="repeated-key-sorted-by-value"),
    pytest.param([("k", "")], "k=", id="empty-value"),
    pytest.param([("a b", "1")], "a%20b=1", id="key-encoded"),
    pytest.param([], "", id="no-parameters"),
]


@pytest.mark.parametrize(("pairs", "expected"), QUERY_CASES)
def test_canonical_query_encoding(pairs: list[tuple[str, str]], expected: str) -> None:
    assert signing.canonical_query(pairs) == expected


@pytest.mark.parametrize(("pairs", "expected"), QUERY_CASES)
def test_auth_sends_the_canonical_query(pairs: list[tuple[str, str]], expected: str) -> None:
    """Whatever encoding httpx chose, the URL sent carries exactly the signed query."""
    request = httpx.Request("GET", "https://bcs.example.com/v2/p/operation/record", params=pairs)
    auth = AkSkAuth(
        access_key=Secret("AK"), secret_key=Secret("SK"), clock=FakeClock.at_wall(FIXED_NOW)
    )
    auth.sign(request)
    assert request.url.query.decode() == expected
    assert auth.last_canonical_request is not None
    assert auth.last_canonical_request.split("\n")[2] == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v2/p/operation/record", "/v2/p/operation/record/"),
        ("/v2/p/operation/record/", "/v2/p/operation/record/"),
        ("/", "/"),
        ("/a b/c~d", "/a%20b/c~d/"),
        ("/é", "/%C3%A9/"),
    ],
    ids=["no-trailing-slash", "trailing-slash", "root", "space-and-tilde", "non-ascii"],
)
def test_canonical_uri(path: str, expected: str) -> None:
    assert signing.canonical_uri(path) == expected


def test_sdk_date_is_utc() -> None:
    from datetime import timedelta, timezone

    local = datetime(2024, 1, 15, 16, 30, tzinfo=timezone(timedelta(hours=8)))
    assert signing.sdk_date(local) == "20240115T083000Z"
