"""notifier.redaction: the one pattern set, and every user importing it (exact outputs of
the helpers that held copies: bcs/errors.redact, logsetup.Redactor, channels/privacy)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import notifier
from notifier import redaction
from notifier.bcs import errors as bcs_errors
from notifier.channels import privacy
from notifier.config import Secret
from notifier.logsetup import Redactor
from notifier.redaction import MASK, REDACTED, URL_MASK, mask_log_text, redact

IAM_TOKEN = "MII" + "A" * 70
SIGNATURE = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        ("nothing secret here", (), "nothing secret here"),
        ("key s3cret-value in text", ("s3cret-value",), "key *** in text"),
        ("longer abcdef, shorter abc", ("abc", "abcdef"), "longer ***, shorter ***"),
        (f"Signature={SIGNATURE}, Access=AK", (), "Signature=***, Access=AK"),
        ("Signature=0123abc", (), "Signature=0123abc"),  # too short to be one
        (f"token {IAM_TOKEN} end", (), "token *** end"),
        ("MII" + "A" * 59, (), "MII" + "A" * 59),  # under 60 after MII: kept
        ("empty secret ignored", ("",), "empty secret ignored"),
    ],
    ids=[
        "plain",
        "known-secret",
        "longest-first",
        "signature",
        "short-signature",
        "iam-token",
        "short-mii",
        "empty-secret",
    ],
)
def test_redact_the_api_error_texts(text: str, secrets: tuple[str, ...], expected: str) -> None:
    assert redact(text, secrets) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain line", "plain line"),
        ("password=hunter2 next", f"password={MASK} next"),
        ('{"token": "abc123"}', f'{{"token": "{MASK}"}}'),
        ("Authorization: Bearer abcdefghijklmnop", f"Authorization: {MASK} {MASK}"),
        ("sent Bearer abcdefghijklmnop", f"sent Bearer {MASK}"),
        ("Generate basic configurations", "Generate basic configurations"),
        (
            "SDK-HMAC-SHA256 Access=AKID, Signature=beef",
            f"SDK-HMAC-SHA256 Access={MASK}, Signature={MASK}",
        ),
        ("(b'X-Subject-Token', b'opaque')", f"(b'X-Subject-Token', b'{MASK}')"),
        ("smtp://user:pa55@mail.example", f"smtp://user:{MASK}@mail.example"),
        ("whsec_abcDEF123 used", f"{MASK} used"),
        ("MII" + "B" * 20, MASK),
        (f"password={MASK}", f"password={MASK}"),  # already masked: unchanged
    ],
    ids=[
        "plain",
        "key-value",
        "json",
        "authorization-header",
        "bearer",
        "basic-word",
        "aksk-header",
        "httpcore-tuple",
        "url-password",
        "webhook-secret",
        "iam-token",
        "idempotent",
    ],
)
def test_log_masking(text: str, expected: str) -> None:
    assert mask_log_text(text) == expected
    assert Redactor().redact(text) == expected


def test_the_log_redactor_masks_known_secrets_first() -> None:
    assert Redactor(["topsecret-value"]).redact("got topsecret-value!") == f"got {MASK}!"


def test_the_masks_each_output_always_showed() -> None:
    assert (REDACTED, MASK, URL_MASK) == ("***", "********", "****")
    assert repr(Secret("x")) == "Secret('********')"
    assert privacy.mask_url("json://host/?token=abcdef&x=1") == "json://host/?token=****&x=1"


@pytest.mark.parametrize(
    ("key", "secret"),
    [("token", True), ("apiKey", True), ("PASSWORD", True), ("format", False), ("to", False)],
)
def test_url_secret_keys(key: str, secret: bool) -> None:
    assert bool(redaction.URL_SECRET_KEY_RE.search(key)) is secret


def test_the_signature_echo_drops_credential_header_lines() -> None:
    body = (
        "canonical request was 'GET\n/v2/p/operation/record\n\n"
        "x-security-token:sts-opaque\nhost:bcs.example\n'"
    )
    echo = bcs_errors.signature_echo(body.encode(), [])
    assert echo is not None
    assert "sts-opaque" not in echo
    assert "x-security-token:***" in echo


# -- one set: nobody else defines a pattern ----------------------------------------------------

#: the fragments that mark a copy of a redaction pattern
_PATTERN_MARKS = ("MII[", "Signature=)", "x-subject-token", "whsec_[", "secret|token")


def test_no_other_module_holds_a_redaction_pattern() -> None:
    root = Path(notifier.__file__).parent
    holders = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "redaction.py" or "simulator" in path.parts:
            continue  # the simulator plays the server: it issues tokens, it does not redact
        source = path.read_text(encoding="utf-8")
        for match in re.finditer(r"re\.compile\((?:[^()]|\([^()]*\))*\)", source, re.DOTALL):
            if any(mark in match.group(0) for mark in _PATTERN_MARKS):
                holders.append(f"{path.relative_to(root)}: {match.group(0)[:60]}")
    assert holders == []
