"""The one set of redaction patterns: what a secret looks like, and what replaces it.

Every place that keeps secrets out of text imports them from here:

- the API's error texts and signature echoes (``notifier.bcs.errors``): :func:`redact`,
  known secrets and credential-shaped text become :data:`REDACTED`;
- every log line (``notifier.logsetup.Redactor``): known secrets and :data:`LOG_PATTERNS`
  become :data:`MASK`; the config's ``Secret`` repr and URL problems show :data:`MASK` too;
- channel URLs (``notifier.channels.privacy``): values of :data:`URL_SECRET_KEY_RE` query
  keys become :data:`URL_MASK`.

The masks differ on purpose (each is what its output always showed); the patterns are one
set. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

#: what replaces a secret in the API's error texts (``Signature=***``)
REDACTED: Final = "***"
#: what replaces a secret in a log line, a ``Secret`` repr or a URL problem
MASK: Final = "********"
#: what replaces a secret value in a channel URL shown in privacy mode
URL_MASK: Final = "****"

#: request/response headers whose values are credentials
SECRET_HEADERS: Final = ("x-security-token", "x-auth-token", "x-subject-token", "authorization")
_HEADERS: Final = "|".join(SECRET_HEADERS)

#: names of keys whose values are credentials (not secrets themselves)
SECRET_KEYS: Final = "|".join(
    (
        "password|passwd|pass|secret|secret_key|secretkey|access_key|accesskey|sk|ak",
        "token|auth_token|security_token|x-auth-token|x-subject-token|x-security-token",
        "api_key|apikey|key|signature|sig|credential|credentials|authorization",
    )
)

#: an AK/SK signature value in an ``Authorization`` header or its echo
SIGNATURE_RE: Final = re.compile(r"(Signature=)[0-9A-Fa-f]{16,}")
#: IAM tokens are long base64 blobs starting "MII" (PKI tokens); never let one through
IAM_TOKEN_RE: Final = re.compile(r"MII[A-Za-z0-9+/=_-]{60,}")
#: a whole ``Header: value`` line of a credential header (canonical-request echoes)
SECRET_HEADER_LINE_RE: Final = re.compile(
    rf"^(\s*(?:{_HEADERS})\s*:).*$",
    re.IGNORECASE | re.MULTILINE,
)

#: credential-shaped text in a log line; each keeps its ``keep`` group and masks ``secret``
LOG_PATTERNS: Final = (
    # Authorization: SDK-HMAC-SHA256 Access=..., Signature=...  /  Bearer and Basic
    # credentials (capitalised as in the header, followed by a token-like word, so that
    # "Generate basic configurations" or "signature rejected" stay readable)
    re.compile(
        r"(?P<keep>\b(?i:access|signature)=|\b(?:Bearer|Basic)\s+(?=[A-Za-z0-9+/=._~-]{12,}))"
        r"(?P<secret>(?!\*{8})[^\s,\"']+)"
    ),
    # key=value, key: value, "key": "value" (query strings, headers, JSON, reprs)
    re.compile(
        rf"""(?ix)
        (?P<keep>(?<![A-Za-z0-9_-])["']?(?:{SECRET_KEYS})["']?\s*[:=]\s*["']?)
        (?P<secret>(?!\*{{8}})[^\s"'&,;}}\])]+)
        """
    ),
    # header tuples as httpcore logs them: (b'X-Subject-Token', b'MII...')
    re.compile(rf"(?i)(?P<keep>(?:{_HEADERS})['\"]?,\s*b?['\"])(?P<secret>(?!\*{{8}})[^'\"]+)"),
    # scheme://user:password@host
    re.compile(r"(?i)(?P<keep>\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)(?P<secret>(?!\*{8})[^@\s/]+)(?=@)"),
    # Standard Webhooks secrets and IAM PKI tokens (long base64 starting with MII)
    re.compile(r"(?P<keep>)(?P<secret>\bwhsec_[A-Za-z0-9+/=_-]+|\bMII[A-Za-z0-9+/=_-]{20,})"),
)

#: query keys of a channel URL whose values are secrets (besides ``+header``/``-param``)
URL_SECRET_KEY_RE: Final = re.compile(
    r"secret|token|key|pass|pwd|auth|sig|credential|session|cookie|bearer|code|hash",
    re.IGNORECASE,
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every given secret, signature and IAM-token-looking blob replaced by
    :data:`REDACTED` (the API's error texts)."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = SIGNATURE_RE.sub(rf"\g<1>{REDACTED}", text)
    return IAM_TOKEN_RE.sub(REDACTED, text)


def mask_log_text(text: str) -> str:
    """Credential-shaped text of a log line masked with :data:`MASK` (after known secret
    values were replaced)."""
    for pattern in LOG_PATTERNS:
        text = pattern.sub(lambda match: f"{match.group('keep')}{MASK}", text)
    return text
