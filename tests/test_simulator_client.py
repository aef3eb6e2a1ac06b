"""The real BCS client against the simulator: the two must agree on the wire."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from clock_support import SecondsClock
from sim_support import START

from notifier.bcs.client import BcsClient
from notifier.config import AuthConfig, Secret, SourceConfig
from notifier.demo import source_config
from notifier.errors import (
    AuthError,
    InvalidResponse,
    SignatureRejected,
    ThrottledError,
    TransportError,
)
from notifier.simulator import Simulator


class Sleeps:
    """Records the client's back-offs instead of sleeping."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(seed=6, start=START, token_lifetime=7200) as simulator:
        simulator.advance(200)
        yield simulator


def client_for(sim: Simulator, source: SourceConfig, sleeps: Sleeps | None = None) -> BcsClient:
    return BcsClient(
        source, clock=SecondsClock(sim.clock.time), sleep=sleeps or Sleeps(), jitter=lambda: 0.0
    )


def record_requests(sim: Simulator) -> list[tuple[str, int | None, str]]:
    return [
        (entry.path.split("/")[-1], entry.status, entry.auth)
        for entry in sim.requests()
        if entry.auth != "control"
    ]


@pytest.mark.parametrize("auth", ["token", "password", "aksk"])
def test_the_client_reads_the_true_records_with_every_auth_type(sim: Simulator, auth: str) -> None:
    with client_for(sim, source_config(sim, auth)) as client:
        fetched = client.fetch()
    assert fetched.status == 200
    assert fetched.body == {"count": len(sim.records()), "operation_records": sim.records()}
    assert fetched.request_id == sim.requests()[-1].request_id


def test_aksk_filters_with_awkward_characters_verify(sim: Simulator) -> None:
    source = replace(
        source_config(sim, "aksk"),
        filters={"operation_status": ("finished",), "blockchain_id": ("a b/c~d:é+",)},
    )
    with client_for(sim, source) as client:
        assert client.fetch().body == {"count": 0, "operation_records": []}
    assert sim.requests()[-1].auth == "aksk"


def test_aksk_filters_select_the_same_records_as_the_truth(sim: Simulator) -> None:
    source = replace(
        source_config(sim, "aksk"),
        filters={"operation_status": ("finished",), "resource_type": ("BCSSVC01",)},
    )
    with client_for(sim, source) as client:
        body = client.fetch().body
    expected = [
        r
        for r in sim.records()
        if r["operation_status"] == "finished" and r["resource_type"] == "BCSSVC01"
    ]
    assert body["operation_records"] == expected


def test_temporary_aksk_credentials_verify(sim: Simulator) -> None:
    credentials = sim.credentials
    auth = AuthConfig(
        type="aksk",
        access_key=Secret(credentials.temporary_access_key),
        secret_key=Secret(credentials.temporary_secret_key),
        security_token=Secret(credentials.security_token),
    )
    with client_for(sim, replace(source_config(sim, "aksk"), auth=auth)) as client:
        assert client.fetch().status == 200
    assert sim.requests()[-1].auth == "aksk-temporary"


def test_a_wrong_secret_key_is_a_signature_rejection_never_retried(sim: Simulator) -> None:
    source = source_config(sim, "aksk")
    auth = replace(source.auth, secret_key=Secret("0" * 40))
    sleeps = Sleeps()
    with client_for(sim, replace(source, auth=auth), sleeps) as client:
        with pytest.raises(SignatureRejected):
            client.fetch()
        with pytest.raises(SignatureRejected):
            client.fetch()  # resting: nothing is sent
    assert record_requests(sim) == [("record", 401, "rejected")]
    assert sleeps.calls == []


def test_password_auth_logs_in_once_and_renews_an_expired_token(sim: Simulator) -> None:
    with client_for(sim, source_config(sim, "password")) as client:
        client.fetch()
        client.fetch()
        sim.advance(7200)  # the token's lifetime
        client.fetch()
    assert record_requests(sim) == [
        ("tokens", 201, "password"),
        ("record", 200, "iam-token"),
        ("record", 200, "iam-token"),
        ("tokens", 201, "password"),
        ("record", 200, "iam-token"),
    ]


def test_password_auth_recovers_from_revoked_tokens(sim: Simulator) -> None:
    with client_for(sim, source_config(sim, "password")) as client:
        client.fetch()
        sim.expire_tokens()
        assert client.fetch().status == 200
    statuses = [(path, status) for path, status, _ in record_requests(sim)]
    assert statuses == [
        ("tokens", 201),
        ("record", 200),
        ("record", 401),
        ("tokens", 201),
        ("record", 200),
    ]


def test_a_revoked_fixed_token_is_an_auth_error(sim: Simulator) -> None:
    sim.expire_tokens()
    with client_for(sim, source_config(sim, "token")) as client, pytest.raises(AuthError) as info:
        client.fetch()
    assert info.value.code == "APIGW.0307"
    assert info.value.request_id == sim.requests()[-1].request_id


@pytest.mark.parametrize("kind", ["500", "502", "disconnect"])
def test_transient_faults_are_retried(sim: Simulator, kind: str) -> None:
    sim.inject(kind)
    sleeps = Sleeps()
    with client_for(sim, source_config(sim, "token"), sleeps) as client:
        assert client.fetch().status == 200
    assert [status for _, status, _ in record_requests(sim)] == [
        None if kind == "disconnect" else int(kind),
        200,
    ]
    assert len(sleeps.calls) == 1


def test_throttling_honours_retry_after(sim: Simulator) -> None:
    sim.inject("429", retry_after=4)
    sleeps = Sleeps()
    with client_for(sim, source_config(sim, "token"), sleeps) as client:
        assert client.fetch().status == 200
    assert sleeps.calls == [4.0]


def test_persistent_throttling_gives_up(sim: Simulator) -> None:
    sim.inject("429", count=10)
    source = replace(source_config(sim, "token"), max_retries=2)
    with client_for(sim, source) as client, pytest.raises(ThrottledError) as info:
        client.fetch()
    assert info.value.code == "APIGW.0308"
    assert len(record_requests(sim)) == 3


def test_truncated_json_is_an_invalid_response(sim: Simulator) -> None:
    sim.inject("truncated")
    with client_for(sim, source_config(sim, "token")) as client, pytest.raises(InvalidResponse):
        client.fetch()


def test_a_slow_answer_beyond_the_timeout_is_a_transport_error(sim: Simulator) -> None:
    sim.inject("slow", delay=2.0)
    source = replace(source_config(sim, "token"), timeout=0.2, max_retries=0)
    with client_for(sim, source) as client, pytest.raises(TransportError):
        client.fetch()
