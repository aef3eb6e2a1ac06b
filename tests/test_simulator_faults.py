"""Fault injection: every fault, through the Python API and the /_sim/ control endpoint."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sim_support import START, password_body, record_path, token_client

from notifier.simulator import FaultKind, Simulator


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(seed=4, start=START) as simulator:
        simulator.advance(200)
        yield simulator


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with token_client(sim) as client:
        yield client


def inject_python(sim: Simulator, client: httpx.Client, kind: str, **params: Any) -> None:
    sim.inject(kind, **params)


def inject_http(sim: Simulator, client: httpx.Client, kind: str, **params: Any) -> None:
    query = {"kind": kind, **{key: str(value) for key, value in params.items()}}
    response = client.post("/_sim/faults", params=query)
    assert response.status_code == 200
    assert response.json()["pending_faults"][-1]["kind"] == kind


Injector = Callable[..., None]
INJECTORS = pytest.mark.parametrize("inject", [inject_python, inject_http], ids=["python", "http"])


def bcs_error(code: str, message: str) -> Callable[[httpx.Response], None]:
    def check(response: httpx.Response) -> None:
        assert response.headers["content-type"] == "application/json;charset=UTF-8"
        assert response.json() == {"error_code": code, "error_msg": message}

    return check


def bad_gateway(response: httpx.Response) -> None:
    assert response.headers["content-type"].startswith("text/html")
    assert "502 Bad Gateway" in response.text
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)


def throttled(response: httpx.Response) -> None:
    body = response.json()
    assert body["error_code"] == "APIGW.0308"
    assert body["error_msg"].startswith("The throttling threshold has been reached")
    assert body["request_id"] == response.headers["x-request-id"]
    assert "retry-after" not in response.headers


@INJECTORS
@pytest.mark.parametrize(
    ("kind", "status", "check"),
    [
        ("500", 500, bcs_error("BCS.5000500", "Internal Server Error")),
        ("502", 502, bad_gateway),
        ("429", 429, throttled),
        ("401", 401, bcs_error("BCS.4010401", "Incorrect token or token resolution failed")),
        ("403", 403, bcs_error("BCS.4030403", "No permissions to request this method")),
    ],
    ids=["500", "502-html", "429", "401", "403"],
)
def test_error_faults_answer_once_then_the_api_recovers(
    sim: Simulator,
    client: httpx.Client,
    inject: Injector,
    kind: str,
    status: int,
    check: Callable[[httpx.Response], None],
) -> None:
    inject(sim, client, kind)
    faulty = client.get(record_path(sim))
    assert faulty.status_code == status
    assert faulty.headers["x-request-id"]
    assert faulty.headers["date"]
    check(faulty)
    assert client.get(record_path(sim)).status_code == 200
    assert [entry.fault for entry in sim.requests() if entry.path == record_path(sim)] == [
        kind,
        None,
    ]


@INJECTORS
def test_throttling_can_send_retry_after(
    sim: Simulator, client: httpx.Client, inject: Injector
) -> None:
    inject(sim, client, "429", retry_after=7)
    response = client.get(record_path(sim))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"


@INJECTORS
def test_truncated_json_is_a_200_with_half_a_body(
    sim: Simulator, client: httpx.Client, inject: Injector
) -> None:
    full = client.get(record_path(sim)).content
    inject(sim, client, "truncated")
    response = client.get(record_path(sim))
    assert response.status_code == 200
    assert response.content == full[: len(full) // 2]
    assert int(response.headers["content-length"]) == len(response.content)
    with pytest.raises(json.JSONDecodeError):
        response.json()


@INJECTORS
@pytest.mark.parametrize("drop", [1, 3], ids=["drop1", "drop3"])
def test_count_larger_than_the_records_returned(
    sim: Simulator, client: httpx.Client, inject: Injector, drop: int
) -> None:
    truth = sim.records()
    inject(sim, client, "count", drop=drop)
    body = client.get(record_path(sim)).json()
    assert body["count"] == len(truth)
    assert body["operation_records"] == truth[: len(truth) - drop]
    assert body["count"] > len(body["operation_records"])


def test_count_fault_on_an_empty_list_still_claims_more(
    sim: Simulator, client: httpx.Client
) -> None:
    sim.inject("count")
    body = client.get(record_path(sim), params={"operation_type": "05"}).json()
    assert body == {"count": 1, "operation_records": []}


@INJECTORS
def test_disconnect_closes_without_an_answer(
    sim: Simulator, client: httpx.Client, inject: Injector
) -> None:
    inject(sim, client, "disconnect")
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(record_path(sim))
    assert client.get(record_path(sim)).status_code == 200
    assert sim.requests()[-2].status is None


@INJECTORS
def test_slow_responses_exceed_a_client_timeout(
    sim: Simulator, client: httpx.Client, inject: Injector
) -> None:
    inject(sim, client, "slow", delay=2.0)
    with pytest.raises(httpx.ReadTimeout):  # connecting may take its time on a busy machine
        client.get(record_path(sim), timeout=httpx.Timeout(60.0, read=0.2))


def test_slow_responses_answer_normally_after_the_delay(
    sim: Simulator, client: httpx.Client
) -> None:
    sim.inject(FaultKind.SLOW, delay=0.2)
    began = time.monotonic()
    response = client.get(record_path(sim))
    assert time.monotonic() - began >= 0.2
    assert response.status_code == 200
    assert response.json()["count"] == len(sim.records())


def test_stopping_interrupts_a_slow_response() -> None:
    sim = Simulator(seed=4, start=START).start()
    sim.inject("slow", delay=60)
    errors: list[BaseException] = []

    def call() -> None:
        headers = {"X-Auth-Token": sim.credentials.token}
        try:
            httpx.get(f"{sim.endpoint}/v2/{sim.project_id}/operation/record", headers=headers)
        except httpx.HTTPError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 60
    while not sim.requests():  # the request reached the handler and is now waiting
        assert time.monotonic() < deadline, "the request never arrived"
        time.sleep(0.01)
    sim.stop()
    caller.join(timeout=30)
    assert not caller.is_alive()  # long before the 60 s delay would have ended
    assert errors
    assert isinstance(errors[0], httpx.RemoteProtocolError)


def test_faults_are_consumed_first_in_first_out(sim: Simulator, client: httpx.Client) -> None:
    sim.inject("500", count=2)
    sim.inject("429")
    statuses = [client.get(record_path(sim)).status_code for _ in range(4)]
    assert statuses == [500, 500, 429, 200]


def test_iam_faults_do_not_touch_the_bcs_api(sim: Simulator, client: httpx.Client) -> None:
    sim.inject("500", target="iam")
    assert client.get(record_path(sim)).status_code == 200
    response = client.post("/v3/auth/tokens", content=b"{}")
    assert response.status_code == 500
    assert client.post("/v3/auth/tokens", content=b"{}").status_code == 400


def test_a_truncated_iam_answer_is_still_a_201(sim: Simulator, client: httpx.Client) -> None:
    sim.inject("truncated", target="iam")
    body = password_body(sim)
    response = client.post("/v3/auth/tokens", json=body)
    assert response.status_code == 201
    with pytest.raises(json.JSONDecodeError):
        response.json()


def test_any_target_hits_whichever_api_comes_first(sim: Simulator, client: httpx.Client) -> None:
    sim.inject("502", target="any")
    assert client.post("/v3/auth/tokens", content=b"{}").status_code == 502
    assert client.get(record_path(sim)).status_code == 200


def test_body_faults_wait_for_a_successful_body(sim: Simulator, client: httpx.Client) -> None:
    sim.inject("truncated")
    assert client.get(record_path(sim), headers={"X-Auth-Token": "bad"}).status_code == 401
    assert client.get("/v2/nope/operation/record").status_code == 404
    with pytest.raises(json.JSONDecodeError):
        client.get(record_path(sim)).json()


def test_control_endpoints_are_never_faulted(sim: Simulator, client: httpx.Client) -> None:
    sim.inject("500", target="any")
    assert client.get("/_sim/state").status_code == 200
    assert client.get("/_sim/state").json()["pending_faults"][0]["kind"] == "500"


def test_faults_can_be_listed_and_cleared_over_http(sim: Simulator, client: httpx.Client) -> None:
    client.post("/_sim/faults", params={"kind": "429", "count": "3", "retry_after": "2"})
    pending = client.get("/_sim/state").json()["pending_faults"]
    assert len(pending) == 3
    assert pending[0] == {
        "kind": "429",
        "target": "bcs",
        "delay": 5.0,
        "retry_after": 2,
        "drop": 1,
    }
    assert client.delete("/_sim/faults").json() == {"cleared": 3}
    assert client.get(record_path(sim)).status_code == 200


def test_python_api_validates_faults(sim: Simulator) -> None:
    with pytest.raises(ValueError, match="not a valid FaultKind"):
        sim.inject("418")
    with pytest.raises(ValueError, match="target"):
        sim.inject("500", target="dns")
    with pytest.raises(ValueError, match="at least 1"):
        sim.inject("500", count=0)
