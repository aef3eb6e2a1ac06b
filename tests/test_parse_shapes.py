"""Bodies that look like success but are not: they must change nothing, never read as empty."""

from __future__ import annotations

from typing import Any

import pytest

from notifier.bcs.parse import parse_response
from notifier.errors import InvalidResponse


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "no operation_records"),
        ({"count": 3}, "no operation_records"),
        ({"error_code": "BCS.4000400", "error_msg": "bad"}, "error body"),
        ({"error": {"code": "401", "message": "expired"}}, "error body"),
    ],
    ids=["empty-object", "count-without-list", "bcs-error-with-200", "keystone-error-with-200"],
)
def test_not_a_record_list(body: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidResponse, match=reason):
        parse_response(body)


@pytest.mark.parametrize(
    "body",
    [{"count": 0}, {"count": 0, "operation_records": None}, {"operation_records": []}],
    ids=["count-zero", "null-list", "empty-list"],
)
def test_an_explicitly_empty_result_is_empty(body: dict[str, Any]) -> None:
    assert parse_response(body).records == ()
