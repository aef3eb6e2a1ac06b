"""Shared values for the tests of ``BcsClient`` against respx: the API's address, a fixed
"now" and a clock that stays there until a test moves it, a source to fetch."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from clock_support import FakeClock as SharedFakeClock

from notifier.config import AuthConfig, Secret, SourceConfig

ENDPOINT = "https://bcs.cn-north-4.myhuaweicloud.com"
PROJECT = "0123456789abcdef0123456789abcdef"
RECORD_URL = f"{ENDPOINT}/v2/{PROJECT}/operation/record"
NOW = datetime(2024, 1, 15, 8, 30, tzinfo=UTC).timestamp()
TOKEN = "MIIUser-Token-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOP-x"
OK_BODY = {"count": 0, "operation_records": []}


class FakeClock(SharedFakeClock):
    """The shared fake clock (``clock_support``) at ``NOW``, in epoch seconds on both readings."""

    def __init__(self, now: float = NOW) -> None:
        super().__init__(now, wall_start_ms=round(now * 1000))


def make_source(auth: AuthConfig | None = None, **overrides: Any) -> SourceConfig:
    """Source "prod" at ``ENDPOINT``/``PROJECT``; a user token unless ``auth`` is given."""
    values: dict[str, Any] = {
        "name": "prod",
        "endpoint": ENDPOINT,
        "project_id": PROJECT,
        "auth": auth or AuthConfig(type="token", token=Secret(TOKEN)),
    }
    values.update(overrides)
    return SourceConfig(**values)
