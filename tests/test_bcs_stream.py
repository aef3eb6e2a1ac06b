"""``RecordStream`` (records decoded as the bytes arrive) and ``BcsClient.fetch_records``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx
from bcs_support import RECORD_URL, make_source

from notifier.bcs.client import BcsClient
from notifier.bcs.source import Listing, read_listing
from notifier.bcs.stream import HEAD_LIMIT, RecordStream
from notifier.errors import IncompleteResponse, InvalidResponse, ResponseTooLarge

RECORDS = [{"operation_id": f"OP-{index}", "operation_status": "finished"} for index in range(5)]


def chunked(body: bytes, size: int) -> Iterator[bytes]:
    return iter([body[start : start + size] for start in range(0, len(body), size)])


def decode(body: bytes, size: int = 7, **limits: int) -> tuple[list[Any], RecordStream]:
    stream = RecordStream(
        chunked(body, size),
        max_record_bytes=limits.get("record", 1 << 20),
        max_body_bytes=limits.get("body", 1 << 30),
    )
    return list(stream.records()), stream


@pytest.mark.parametrize(
    "body",
    [
        {"count": 5, "operation_records": RECORDS},
        {"operation_records": RECORDS, "count": 5},
        {"operation_records": RECORDS, "note": "a ] and } in a string", "count": 5},
        {"x": {"nested": [1, 2]}, "count": 5, "operation_records": RECORDS, "y": [3]},
    ],
    ids=["count-first", "count-last", "brackets-after", "members-around"],
)
@pytest.mark.parametrize("size", [1, 7, 65536])
def test_records_and_members_come_out_wherever_the_members_are(
    body: dict[str, Any], size: int
) -> None:
    records, stream = decode(json.dumps(body, indent=1).encode(), size)
    assert records == RECORDS
    assert stream.records_kind == "list"
    assert stream.envelope == {
        key: value for key, value in body.items() if key != "operation_records"
    }
    assert stream.returned == 5


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({"count": 0}, "absent"),
        ({"count": 0, "operation_records": None}, "null"),
        ({"error_code": "BCS.4000400", "error_msg": "bad"}, "absent"),
        ({"operation_records": {"a": 1}}, "dict"),
    ],
)
def test_bodies_without_a_list_are_decoded_whole(body: dict[str, Any], kind: str) -> None:
    records, stream = decode(json.dumps(body).encode())
    assert records == []
    assert stream.records_kind == kind


@pytest.mark.parametrize(
    "body",
    [
        b'{"count": 2, "operation_records": [{"operation_id": "a"}, {"operation',
        b'{"count": 1, "operation_records": [{"a": NaN}]}',
        b"[1, 2, 3]",
        b"<html>502</html>",
        b'{"count": 1, "operation_records": [{"a": 1}]} trailing',
    ],
    ids=["truncated", "nan", "array", "html", "trailing"],
)
def test_a_broken_body_is_an_invalid_response(body: bytes) -> None:
    with pytest.raises(InvalidResponse):
        decode(body)


def test_a_body_with_no_list_in_its_first_megabyte_is_refused() -> None:
    body = json.dumps({"padding": "x" * (HEAD_LIMIT + 200_000), "operation_records": []}).encode()
    with pytest.raises(InvalidResponse, match="no operation_records list"):
        decode(body, 65536)


def test_integers_beyond_64_bits_are_decoded_whole_and_clamped() -> None:
    from notifier.bcs.stream import DecodeWhole

    body = json.dumps({"count": 1, "operation_records": [{"n": 2**70}]}).encode()
    with pytest.raises(DecodeWhole):
        decode(body)
    stream = RecordStream(
        iter([body]), max_record_bytes=1 << 20, max_body_bytes=1 << 20, exact_integers=True
    )
    # the whole-body decoder bounds what enters, as notifier.bcs.sanitize does everywhere
    assert list(stream.records()) == [{"n": 2**63 - 1}]


def listing_of(body: dict[str, Any]) -> Listing:
    return read_listing(
        RecordStream(
            iter([json.dumps(body).encode()]), max_record_bytes=1 << 20, max_body_bytes=1 << 30
        ),
        {},
    )


def test_count_is_checked_per_response() -> None:
    with pytest.raises(IncompleteResponse):
        listing_of({"count": 6, "operation_records": RECORDS})
    assert listing_of({"count": 5, "operation_records": RECORDS}).count == 5
    with pytest.raises(InvalidResponse, match="no operation_records"):
        listing_of({"count": 3})
    with pytest.raises(InvalidResponse, match="error body"):
        listing_of({"error_code": "BCS.5000500", "error_msg": "oops"})


# -- through the client -------------------------------------------------------------------


def ids(listing: Listing) -> list[str]:
    return [record.operation_id for record, _digest in listing.records]


def test_fetch_records_sends_the_parameters_after_the_filters(router: respx.MockRouter) -> None:
    route = router.get(RECORD_URL).mock(
        return_value=httpx.Response(200, json={"count": 5, "operation_records": RECORDS})
    )
    source = make_source(filters={"blockchain_id": ("c 1",), "resource_type": ("A", "B")})
    with BcsClient(source) as client:
        streamed = client.fetch_records(
            lambda raw: read_listing(raw, {}), [("operation_status", "waiting")]
        )
    assert ids(streamed.value) == [f"OP-{index}" for index in range(5)]
    assert route.calls.last.request.url.query == b"blockchain_id=c%201&operation_status=waiting"


def test_a_record_over_max_record_bytes_is_refused_naming_the_key(
    router: respx.MockRouter,
) -> None:
    big = {"operation_id": "OP-big", "desc": "x" * 300_000}
    body = json.dumps({"count": 2, "operation_records": [RECORDS[0], big]}).encode()
    router.get(RECORD_URL).mock(return_value=httpx.Response(200, stream=ChunkStream(body, 16384)))
    with (
        BcsClient(make_source(max_record_bytes=65536, max_retries=0)) as client,
        pytest.raises(ResponseTooLarge, match="max_record_bytes = 65536"),
    ):
        client.fetch_records(lambda raw: read_listing(raw, {}))


class ChunkStream(httpx.SyncByteStream):
    """A body arriving in network-sized chunks."""

    def __init__(self, body: bytes, size: int) -> None:
        self.body, self.size = body, size

    def __iter__(self) -> Iterator[bytes]:
        yield from chunked(self.body, self.size)


def test_a_big_body_of_small_records_streams_within_the_record_cap(
    router: respx.MockRouter,
) -> None:
    records = [{"operation_id": f"OP-{index}", "desc": "y" * 1000} for index in range(3000)]
    body = json.dumps({"count": 3000, "operation_records": records}).encode()
    assert len(body) > 3_000_000
    router.get(RECORD_URL).mock(return_value=httpx.Response(200, stream=ChunkStream(body, 65536)))
    with BcsClient(make_source(max_record_bytes=262144)) as client:
        streamed = client.fetch_records(lambda raw: read_listing(raw, {}))
    assert streamed.value.count == 3000
    assert len(streamed.value.records) == 3000


def test_a_streamed_body_over_max_response_bytes_is_refused(router: respx.MockRouter) -> None:
    body = json.dumps({"count": 5, "operation_records": RECORDS * 100}).encode()
    router.get(RECORD_URL).mock(return_value=httpx.Response(200, stream=ChunkStream(body, 1000)))
    with (
        BcsClient(make_source(max_response_bytes=4096, max_retries=0)) as client,
        pytest.raises(ResponseTooLarge, match="max_response_bytes = 4096"),
    ):
        client.fetch_records(lambda raw: read_listing(raw, {}))


def test_a_huge_integer_is_decoded_whole_on_a_second_request_and_clamped(
    router: respx.MockRouter,
) -> None:
    raw = {"operation_id": "OP-1", "operation_status": "finished", "record_time": 2**70}
    route = router.get(RECORD_URL).mock(
        return_value=httpx.Response(200, json={"count": 1, "operation_records": [raw]})
    )
    with BcsClient(make_source()) as client:
        streamed = client.fetch_records(lambda raw: read_listing(raw, {}))
    # int64 is what every value is bounded to where it enters (notifier.bcs.sanitize)
    assert [record.record_time for record, _ in streamed.value.records] == [2**63 - 1]
    assert route.call_count == 2


def test_a_retry_starts_the_records_over(router: respx.MockRouter) -> None:
    body = json.dumps({"count": 5, "operation_records": RECORDS}).encode()
    router.get(RECORD_URL).mock(
        side_effect=[httpx.Response(502, text="bad gateway"), httpx.Response(200, content=body)]
    )
    calls: list[int] = []

    def consume(raw: RecordStream) -> Listing:
        calls.append(1)
        return read_listing(raw, {})

    with BcsClient(make_source(), sleep=lambda _s: None) as client:
        streamed = client.fetch_records(consume)
    assert len(streamed.value.records) == 5
    assert calls == [1]  # a 5xx is not handed to consume


@pytest.mark.parametrize(
    "nested",
    [
        pytest.param("[" * 100_000 + "]" * 100_000, id="a-run-of-opens"),
        pytest.param("[[]," * 5_000 + "[]" + "]" * 5_000, id="opens-between-closed-lists"),
    ],
)
def test_deep_nesting_never_reaches_the_streaming_decoder(nested: str) -> None:
    """ijson's memory grows with the square of the depth: a deep record sends the answer
    to the whole-body decoder (which bounds nesting exactly) before ijson reads it."""
    from notifier.bcs.stream import DecodeWhole

    body = '{"count": 1, "operation_records": [{"operation_id": "a", "x": ' + nested + "}]}"
    chunks = [body[i : i + 65536].encode() for i in range(0, len(body), 65536)]
    stream = RecordStream(iter(chunks), max_record_bytes=1 << 22, max_body_bytes=1 << 24)
    with pytest.raises(DecodeWhole):
        list(stream.records())
