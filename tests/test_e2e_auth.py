"""End to end: the three ways to authenticate (token, IAM password, AK/SK), side by side in
one ``bcs-notifier run``; and an AK/SK source with a wrong secret key next to a good one."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import httpx
from config_support import sim_source
from e2e_support import (
    GatedSimulator,
    Service,
    assert_chains,
    assert_exactly_once,
    assert_in_order,
    expected_transitions,
    operation_deliveries,
    webhook_receiver,
    write_config,
)

from notifier.simulator import OperationSpec

STORY = (
    OperationSpec(at=-600, kind="create", blockchain="bcs-old"),
    OperationSpec(at=5, kind="add_org", blockchain="bcs-old", outcome="failed"),
    OperationSpec(at=20, kind="join_channel", blockchain="bcs-old"),
)
AUTH_SEEN = {"token": {"token"}, "password": {"iam-token"}, "aksk": {"aksk"}}


def test_three_sources_with_three_auth_types_in_one_run(tmp_path: Path) -> None:
    sims = {auth: GatedSimulator(seed=20 + n, story=STORY) for n, auth in enumerate(AUTH_SEEN)}
    with webhook_receiver() as receiver:
        for sim in sims.values():
            sim.start()
        try:
            blocks = [
                sim_source(sim, auth, f"src-{auth}", timeout=5, max_retries=0)
                for auth, sim in sims.items()
            ]
            service = Service(write_config(tmp_path, blocks, receiver.url), tmp_path)
            try:
                service.start()
                for sim in sims.values():
                    sim.wait_valid_after(0)
                # move every simulator through its story in five steps, all at once
                for k in range(5):
                    marks = {
                        auth: sim.move_to(sim.story_instants(5)[k]) for auth, sim in sims.items()
                    }
                    for auth, sim in sims.items():
                        sim.wait_valid_after(marks[auth])
                expected = {}
                for auth, sim in sims.items():
                    expected.update(expected_transitions(f"src-{auth}", sim.truths()))
                receiver.wait_for(
                    lambda got: (
                        len({d.webhook_id for d in operation_deliveries(got)}) >= len(expected)
                    )
                )
                assert service.stop(signal.SIGTERM) == 0
            finally:
                service.kill()
        finally:
            for sim in sims.values():
                sim.stop()

    deliveries = receiver.snapshot()
    # in_order compares observation indexes per (source, operation): per simulator
    assert_exactly_once(deliveries, expected)
    for auth, sim in sims.items():
        name = f"src-{auth}"
        mine = [d for d in deliveries if d.document["source"] == f"bcs-notifier/{name}"]
        own = {t: i for t, i in expected.items() if t.source == name}
        assert own, f"{name} saw nothing"
        assert_in_order(mine, own)
        assert_chains(mine, name, sim.truths(), own)
        assert {o.auth for o in sim.observations} == AUTH_SEEN[auth]
        logins = [r for r in sim.requests() if r.path.startswith("/v3/auth/tokens")]
        assert len(logins) == (1 if auth == "password" else 0)


def _warnings_about(log: str, source: str) -> list[str]:
    return [
        line
        for line in log.splitlines()
        if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line) and source in line
    ]


def _wait_for_warnings(service: Service, source: str, timeout: float = 60) -> list[str]:
    """The warnings of the first refused poll, once the scheduler has logged its decision
    (the rest), which comes after everything the poll itself logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _warnings_about(service.stderr(), source)
        if any("not polling it for" in line for line in found):
            return found
        time.sleep(0.05)
    raise AssertionError(f"no rest decided for {source}:\n{service.stderr()}")


def test_a_wrong_secret_key_fails_once_and_never_locks_the_key(tmp_path: Path) -> None:
    with (
        GatedSimulator(seed=30, story=STORY) as bad_sim,
        GatedSimulator(seed=31, story=STORY) as good_sim,
        webhook_receiver() as receiver,
    ):
        wrong = sim_source(bad_sim, "aksk", "wrong-key", timeout=5, max_retries=3)
        secret = bad_sim.credentials.secret_key
        assert wrong.count(secret) == 1
        wrong = wrong.replace(secret, "X" * len(secret))
        good = sim_source(good_sim, "token", "good", timeout=5, max_retries=3)
        service = Service(write_config(tmp_path, [wrong, good], receiver.url), tmp_path)
        try:
            service.start()
            good_sim.wait_valid_after(0)
            first_look = _wait_for_warnings(service, "wrong-key")
            # the good source keeps polling at its active pace beside the refused one
            for k, instant in enumerate(good_sim.story_instants(3), start=1):
                mark = good_sim.move_to(instant)
                good_sim.wait_valid_after(mark)
                if k < 3:  # still active: polled every 0.2 s, several loops go round
                    good_sim.wait_requests_after(mark, count=3)
            assert service.alive()
            later_look = _warnings_about(service.stderr(), "wrong-key")
            assert service.stop(signal.SIGTERM) == 0
        finally:
            service.kill()

        # the simulator's own request log, as an operator would read it
        with httpx.Client(trust_env=False, timeout=5) as client:
            log = client.get(f"{bad_sim.endpoint}/_sim/requests").json()["requests"]
            state = client.get(f"{bad_sim.endpoint}/_sim/state").json()
        signed = [r for r in log if r["path"].endswith("/operation/record")]
        assert len(signed) == 1  # one signed attempt in the 300 s back-off period
        assert signed[0]["status"] == 401
        assert signed[0]["auth"] == "rejected"
        assert state["count"] >= 1  # the project is there; only the key is wrong
        key = bad_sim.verifier.keys[bad_sim.credentials.access_key]
        assert (key.failures, key.locked_until_ns) == (1, 0)  # far from the lock after five

        # one clear error, and no more while the key rests
        errors = [line for line in first_look if " ERROR " in line]
        assert len(errors) == 1, first_look
        assert "APIGW.0301" in errors[0]
        assert "rejected" in errors[0]
        assert "lock" in errors[0]
        assert later_look == first_look
        assert "X" * 16 not in service.stderr()  # the wrong secret itself is never logged

        # the good source was not held back by the refused one
        expected = expected_transitions("good", good_sim.truths())
        deliveries = [d for d in receiver.snapshot() if d.document["source"] == "bcs-notifier/good"]
        assert_exactly_once(deliveries, expected)
