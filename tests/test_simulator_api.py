"""The simulated BCS operation-record API over real HTTP (127.0.0.1), with a manual clock."""

from __future__ import annotations

import re
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest
from sim_support import START, record_path, token_client

from notifier.simulator import Simulator

REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(seed=5, start=START) as simulator:
        simulator.advance(200)  # the story is in full swing
        yield simulator


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with token_client(sim) as client:
        yield client


def test_the_api_returns_the_true_records(sim: Simulator, client: httpx.Client) -> None:
    response = client.get(record_path(sim))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json;charset=UTF-8"
    body = response.json()
    assert body == {"count": len(sim.records()), "operation_records": sim.records()}
    assert body["count"] == len(body["operation_records"]) == 7
    assert {record["project_id"] for record in body["operation_records"]} == {sim.project_id}


def test_trailing_slash_is_the_same_resource(sim: Simulator, client: httpx.Client) -> None:
    assert client.get(record_path(sim) + "/").json()["count"] == len(sim.records())


def _filter_cases(records: list[dict[str, Any]]) -> list[dict[str, str]]:
    first = records[0]
    return [
        {"blockchain_id": first["blockchain_id"]},
        {"operation_status": "processing"},
        {"operation_status": "finished"},
        {"operation_status": "failed"},
        {"resource_type": "PLUGIN01"},
        {"operation_type": "01"},
        {"operation_id": first["operation_id"]},
        {"resource_type": "BCSSVC01", "operation_status": "finished"},
        {"blockchain_id": first["blockchain_id"], "operation_type": "99"},
    ]


def test_every_filter_returns_exactly_the_matching_records(
    sim: Simulator, client: httpx.Client
) -> None:
    truth = sim.records()
    for params in _filter_cases(truth):
        body = client.get(record_path(sim), params=params).json()
        expected = [r for r in truth if all(r[key] == value for key, value in params.items())]
        assert body["operation_records"] == expected, params
        assert body["count"] == len(expected), params
        assert expected, f"the story should have a match for {params}"


def test_a_filter_without_match_returns_an_empty_list(sim: Simulator, client: httpx.Client) -> None:
    body = client.get(record_path(sim), params={"operation_type": "05"}).json()
    assert body == {"count": 0, "operation_records": []}


@pytest.mark.parametrize(
    ("key", "value"),
    [("operation_status", "done"), ("resource_type", "BCSSVC09"), ("operation_type", "9")],
    ids=["status", "resource-type", "operation-type-without-zero"],
)
def test_invalid_enumerated_filter_values_are_rejected(
    sim: Simulator, client: httpx.Client, key: str, value: str
) -> None:
    response = client.get(record_path(sim), params={key: value})
    assert response.status_code == 400
    assert response.json() == {
        "error_code": "BCS.4000400",
        "error_msg": f"Invalid parameter: {key}={value}",
    }


def test_a_wrong_project_id_is_not_found(client: httpx.Client) -> None:
    response = client.get("/v2/0123456789abcdef0123456789abcdef/operation/record")
    assert response.status_code == 404
    assert response.json() == {
        "error_code": "BCS.4040404",
        "error_msg": "Not Found:the url is not found",
    }


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v2/operation/record"), ("POST", "/v2/{project}/operation/record"), ("GET", "/")],
    ids=["no-project", "wrong-method", "root"],
)
def test_unknown_apis_get_the_gateway_404(
    sim: Simulator, client: httpx.Client, method: str, path: str
) -> None:
    response = client.request(method, path.format(project=sim.project_id))
    assert response.status_code == 404
    body = response.json()
    assert body["error_code"] == "APIGW.0101"
    assert body["request_id"] == response.headers["x-request-id"]


def test_every_response_carries_a_request_id_and_the_simulated_date(
    sim: Simulator, client: httpx.Client
) -> None:
    sim.inject("502")
    responses = [
        client.get(record_path(sim)),  # 502 fault
        client.get(record_path(sim)),  # 200
        client.get(record_path(sim), headers={"X-Auth-Token": "nope"}),  # 401
        client.get("/v2/x/operation/record"),  # 404
        client.post("/v3/auth/tokens", content=b"{}"),  # 400
        client.get("/_sim/state"),  # control
    ]
    assert [r.status_code for r in responses] == [502, 200, 401, 404, 400, 200]
    ids = [r.headers["x-request-id"] for r in responses]
    assert all(REQUEST_ID.match(value) for value in ids)
    assert len(set(ids)) == len(ids)
    for response in responses:
        date = parsedate_to_datetime(response.headers["date"])
        assert date.timestamp() == START + 200
    sim.advance(3600)
    later = client.get(record_path(sim))
    assert parsedate_to_datetime(later.headers["date"]).timestamp() == START + 200 + 3600


def test_advancing_the_clock_moves_the_story(sim: Simulator, client: httpx.Client) -> None:
    before = client.get(record_path(sim)).json()
    response = client.post("/_sim/advance", params={"seconds": "400"})
    assert response.status_code == 200
    assert response.json()["now_ns"] == (START + 600) * 1_000_000_000
    after = client.get(record_path(sim)).json()
    assert after != before
    assert {r["operation_status"] for r in after["operation_records"]} <= {
        "finished",
        "failed",
        "stop",
    }


def test_state_shows_the_truth_and_the_clock(sim: Simulator, client: httpx.Client) -> None:
    state = client.get("/_sim/state").json()
    assert state["operation_records"] == sim.records()
    assert state["count"] == len(sim.records())
    assert state["now_ns"] == state["wall_ns"] == (START + 200) * 1_000_000_000
    assert state["origin_ns"] == START * 1_000_000_000
    assert state["project_id"] == sim.project_id
    assert state["story_settled_ns"] > state["now_ns"]
    remaining = (state["story_settled_ns"] - state["now_ns"]) / 1_000_000_000
    assert sim.story_remaining() == pytest.approx(remaining)
    sim.advance(remaining)
    assert sim.story_remaining() == 0
    assert {r["operation_status"] for r in sim.records()} <= {
        "finished",
        "failed",
        "stop",
    }


@pytest.mark.parametrize(
    ("method", "path", "params"),
    [
        ("POST", "/_sim/advance", {"seconds": "soon"}),
        ("POST", "/_sim/advance", {"seconds": "-5"}),
        ("POST", "/_sim/faults", {"kind": "explode"}),
        ("POST", "/_sim/faults", {"kind": "500", "count": "0"}),
        ("POST", "/_sim/faults", {"kind": "count", "target": "iam"}),
    ],
    ids=["advance-nan", "advance-backwards", "fault-kind", "fault-count", "fault-target"],
)
def test_bad_control_requests_are_400(
    client: httpx.Client, method: str, path: str, params: dict[str, str]
) -> None:
    response = client.request(method, path, params=params)
    assert response.status_code == 400
    assert "bad control request" in response.json()["error"]


def test_unknown_control_endpoint_is_404(client: httpx.Client) -> None:
    assert client.get("/_sim/nothing").status_code == 404


def test_operations_can_be_scheduled_over_http(sim: Simulator, client: httpx.Client) -> None:
    response = client.post(
        "/_sim/operations",
        json={"kind": "delete", "blockchain": "bcs-finance", "outcome": "failed"},
    )
    assert response.status_code == 201
    operation_id = response.json()["operation_id"]
    assert operation_id.startswith("BCSSVC01-00-")
    body = client.get(record_path(sim), params={"operation_id": operation_id}).json()
    assert body["count"] == 1
    assert body["operation_records"][0]["operation_status"] == "waiting"
    sim.advance(600)
    body = client.get(record_path(sim), params={"operation_id": operation_id}).json()
    assert body["operation_records"][0]["operation_status"] == "failed"
    bad = client.post("/_sim/operations", json={"kind": "nope", "blockchain": "x"})
    assert bad.status_code == 400


def test_the_request_log_tells_how_each_request_authenticated(
    sim: Simulator, client: httpx.Client
) -> None:
    client.get(record_path(sim))
    client.get(record_path(sim), headers={"X-Auth-Token": "bogus"})
    log = client.get("/_sim/requests").json()["requests"]
    assert [(entry["auth"], entry["status"]) for entry in log] == [
        ("token", 200),
        ("rejected", 401),
    ]
    assert [entry.auth for entry in sim.requests()][-1] == "control"


def test_only_loopback_addresses_are_allowed() -> None:
    with pytest.raises(ValueError, match="loopback"):
        Simulator(host="0.0.0.0")  # noqa: S104 - refusing it is the point


def test_stop_frees_the_port_and_is_idempotent() -> None:
    sim = Simulator(seed=1, start=START).start()
    endpoint = sim.endpoint
    with httpx.Client(timeout=2) as client:
        assert client.get(f"{endpoint}/_sim/state").status_code == 200
        sim.stop()
        sim.stop()
        with pytest.raises(httpx.TransportError):
            client.get(f"{endpoint}/_sim/state")


def test_stop_closes_idle_keep_alive_connections() -> None:
    sim = Simulator(seed=1, start=START).start()
    client = httpx.Client(base_url=sim.endpoint, timeout=2)
    try:
        assert client.get("/_sim/state").status_code == 200  # leaves a kept-alive connection
        sim.stop()
        with pytest.raises(httpx.TransportError):
            client.get("/_sim/state")
    finally:
        client.close()


def test_two_simulators_with_one_seed_and_start_serve_identical_bodies() -> None:
    bodies = []
    for _ in range(2):
        with Simulator(seed=9, start=START) as sim:
            sim.advance(250)
            headers = {"X-Auth-Token": sim.credentials.token}
            response = httpx.get(
                f"{sim.endpoint}/v2/{sim.project_id}/operation/record", headers=headers, timeout=5
            )
            bodies.append(response.content)
    assert bodies[0] == bodies[1]
    with Simulator(seed=10, start=START) as other:
        other.advance(250)
        headers = {"X-Auth-Token": other.credentials.token}
        response = httpx.get(
            f"{other.endpoint}/v2/{other.project_id}/operation/record", headers=headers, timeout=5
        )
    assert response.content != bodies[0]
