"""Error bodies of every known shape -> typed errors (``notifier.bcs.errors``)."""

from __future__ import annotations

import json

import pytest

from notifier.bcs.errors import (
    MAX_EXCERPT,
    MAX_MESSAGE,
    api_error,
    html_excerpt,
    signature_echo,
)
from notifier.errors import ApiError, AuthError, SignatureRejected, ThrottledError
from notifier.redaction import redact

NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
BIG_HTML = (
    b"<!DOCTYPE html><html><head><title>Service Unavailable</title>"
    b"<style>body { font-family: sans-serif; color: #333 }</style>"
    b"<script>var secretState = 'x'; function f() { return 1 < 2; }</script></head>"
    b"<body><!-- internal: upstream 10.0.0.7 --><h1>Service Unavailable</h1><p>"
    + b"The gateway could not reach the backend &amp; gave up. " * 200
    + b"</p></body></html>"
)


def _json(data: object) -> bytes:
    return json.dumps(data).encode()


# status, body, expected class, code, message, request id (header "req-h" unless body gives)
CASES = [
    pytest.param(
        400,
        _json({"error_code": "BCS.4001001", "error_msg": "Invalid parameter: operation_type"}),
        ApiError,
        "BCS.4001001",
        "Invalid parameter: operation_type",
        id="bcs-error_msg",
    ),
    pytest.param(
        400,
        _json({"error_code": "BCS.4001002", "error_message": "Blockchain not found"}),
        ApiError,
        "BCS.4001002",
        "Blockchain not found",
        id="bcs-error_message",
    ),
    pytest.param(
        401,
        _json({"error_code": "BCS.4010401", "error_msg": "Token expired"}),
        AuthError,
        "BCS.4010401",
        "Token expired",
        id="bcs-401",
    ),
    pytest.param(
        403,
        _json({"error_code": "IAM.0002", "error_msg": "You do not have permission"}),
        AuthError,
        "IAM.0002",
        "You do not have permission",
        id="iam-flat-403",
    ),
    pytest.param(
        401,
        _json(
            {
                "error_msg": "Incorrect IAM authentication information: token expired",
                "error_code": "APIGW.0307",
                "request_id": "body-req",
            }
        ),
        AuthError,
        "APIGW.0307",
        "Incorrect IAM authentication information: token expired",
        id="apigw-401",
    ),
    pytest.param(
        429,
        _json(
            {"error_code": "APIGW.0308", "error_msg": "The throttling threshold has been reached"}
        ),
        ThrottledError,
        "APIGW.0308",
        "The throttling threshold has been reached",
        id="apigw-429",
    ),
    pytest.param(
        404,
        _json({"error_code": "APIG.0101", "error_msg": "The API does not exist"}),
        ApiError,
        "APIG.0101",
        "The API does not exist",
        id="apig-404",
    ),
    pytest.param(
        400,
        _json({"error": {"code": "IAM.0011", "message": "Request parameter error", "title": "x"}}),
        ApiError,
        "IAM.0011",
        "x: Request parameter error",
        id="keystone-iam-code",
    ),
    pytest.param(
        401,
        _json(
            {
                "error": {
                    "code": 401,
                    "message": "The username or password is wrong.",
                    "title": "Unauthorized",
                }
            }
        ),
        AuthError,
        None,
        "Unauthorized: The username or password is wrong.",
        id="keystone-numeric-code",
    ),
    pytest.param(
        403,
        _json({"error": {"code": 403, "title": "Forbidden"}}),
        AuthError,
        None,
        "Forbidden",
        id="keystone-title-only",
    ),
    pytest.param(
        500,
        _json({"code": "CBC.5000", "message": "Internal error\n  try later"}),
        ApiError,
        "CBC.5000",
        "Internal error try later",
        id="code-message-multiline",
    ),
    pytest.param(502, NGINX_502, ApiError, None, "502 Bad Gateway nginx", id="html-502-nginx"),
    pytest.param(503, b"", ApiError, None, "Service Unavailable", id="empty-body"),
    pytest.param(
        500,
        b'{"error_code": "BCS.5001", "error_msg": "trunc',
        ApiError,
        None,
        '{"error_code": "BCS.5001", "error_msg": "trunc',
        id="truncated-json",
    ),
    pytest.param(
        500,
        _json({"unexpected": [1, 2]}),
        ApiError,
        None,
        '{"unexpected":[1,2]}',
        id="unknown-json",
    ),
    pytest.param(500, _json("just a string"), ApiError, None, "just a string", id="json-string"),
    pytest.param(
        502, b"upstream connect error", ApiError, None, "upstream connect error", id="plain-text"
    ),
]


@pytest.mark.parametrize(("status", "body", "cls", "code", "message"), CASES)
def test_error_shapes(
    status: int, body: bytes, cls: type[ApiError], code: str | None, message: str
) -> None:
    error = api_error(status, body, {"x-request-id": "req-h"}, url="https://bcs.example.com/x")
    assert type(error) is cls
    assert error.status == status
    assert error.code == code
    assert error.error_message == message
    assert error.request_id == "req-h"
    assert error.url == "https://bcs.example.com/x"
    assert "\n" not in str(error)
    assert str(error).startswith(f"HTTP {status}")


def test_request_id_from_body_when_header_missing() -> None:
    body = _json({"error_code": "APIGW.0301", "error_msg": "bad", "request_id": "from-body"})
    assert api_error(401, body, {}).request_id == "from-body"
    assert api_error(401, body, {"X-Request-Id": "hdr"}).request_id == "hdr"


def test_signed_401_is_signature_rejected_but_403_is_not() -> None:
    body = _json({"error_code": "APIGW.0301", "error_msg": "verify aksk signature fail"})
    assert type(api_error(401, body, {}, signed=True)) is SignatureRejected
    assert type(api_error(403, body, {}, signed=True)) is AuthError
    assert type(api_error(401, body, {}, signed=False)) is AuthError


def test_context_prefix() -> None:
    error = api_error(
        401, _json({"error_code": "IAM.0101", "error_msg": "wrong"}), {}, context="IAM"
    )
    assert error.error_message == "IAM: wrong"
    assert str(error) == "HTTP 401 IAM.0101: IAM: wrong"


def test_html_excerpt_is_short_and_tag_free() -> None:
    error = api_error(503, BIG_HTML, {})
    text = error.error_message
    assert len(text) <= MAX_EXCERPT
    assert text.startswith("Service Unavailable The gateway could not reach the backend & gave up")
    for leftover in ("<", ">", "secretState", "font-family", "10.0.0.7", "&amp;"):
        assert leftover not in text
    assert text.endswith("…")


def test_html_excerpt_of_cut_off_page() -> None:
    assert html_excerpt("<html><body><h1>Bad Gateway</h1><p>the upstr") == "Bad Gateway the upstr"
    assert html_excerpt("<html><body><h1>Oops</h1><di") == "Oops"


def test_long_json_message_is_capped() -> None:
    error = api_error(400, _json({"error_code": "BCS.1", "error_msg": "x" * 5000}), {})
    assert len(error.error_message) == MAX_MESSAGE
    assert error.error_message.endswith("…")


def test_secrets_are_scrubbed_from_messages() -> None:
    token = "MIIEhQYJKoZIhvcNAQcCoIIEdjCCBHICAQExDTALBglghkgBZQMEAgEwggLXBgkqhkiG9w0BBwGgggLIBIIC"
    body = _json(
        {
            "error_code": "APIGW.0301",
            "error_msg": (
                f"bad token {token} with key hunter2-secret, "
                "Signature=670cfa84c5d6e38b54741b3796f8b8b954bb3dd9bbbd4607de0ab422529983ec"
            ),
        }
    )
    error = api_error(401, body, {}, secrets=["hunter2-secret"])
    text = str(error)
    assert token not in text
    assert "hunter2-secret" not in text
    assert "670cfa84c5d6e38b" not in text
    assert "Signature=***" in text


def test_redact_prefers_longest_secret() -> None:
    assert redact("abc abcdef", ["abc", "abcdef"]) == "*** ***"
    assert redact("nothing here", ["", "zzz"]) == "nothing here"


def test_signature_echo_from_json_field_is_redacted() -> None:
    echo = (
        "GET\n/v2/p/operation/record/\n\nhost:bcs.example.com\nx-sdk-date:20240115T083000Z\n"
        "x-security-token:gQpjbi1ub3J0aC00EXAMPLE-SECURITY-TOKEN\n\nhost;x-sdk-date;x-security-token\n"
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    body = _json(
        {"error_code": "APIGW.0301", "error_msg": "signature mismatch", "canonical_request": echo}
    )
    found = signature_echo(body)
    assert found is not None
    assert found.startswith("GET\n/v2/p/operation/record/\n")
    assert "EXAMPLE-SECURITY-TOKEN" not in found
    assert "x-security-token:***" in found


def test_signature_echo_from_message_text() -> None:
    body = _json(
        {
            "message": "The signature does not match. The Canonical String for this request "
            "should have been\n'GET\n/v2/p/\n\nhost:h\nx-auth-token:SECRET\n\nhost\nabc'\n"
        }
    )
    found = signature_echo(body)
    assert found == "GET\n/v2/p/\n\nhost:h\nx-auth-token:***\n\nhost\nabc"


def test_no_signature_echo() -> None:
    assert signature_echo(_json({"error_code": "APIGW.0301", "error_msg": "bad"})) is None
    assert signature_echo(NGINX_502) is None
