"""Helpers for the tests that talk to the simulator over HTTP: its start instant, the
records path, a token client, and IAM password-login bodies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from notifier.simulator import Simulator

START = 1_705_307_400  # 2024-01-15T08:30:00Z


def record_path(sim: Simulator) -> str:
    return f"/v2/{sim.project_id}/operation/record"


def token_client(sim: Simulator) -> httpx.Client:
    """A client of ``sim`` that sends its valid user token."""
    headers = {"X-Auth-Token": sim.credentials.token}
    return httpx.Client(base_url=sim.endpoint, headers=headers, timeout=5)


def iam_password_body(
    username: str, password: str, domain: str, project: Mapping[str, str]
) -> dict[str, Any]:
    """The body of an IAM ``POST /v3/auth/tokens`` password login scoped to ``project``."""
    return {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {"name": username, "password": password, "domain": {"name": domain}}
                },
            },
            "scope": {"project": dict(project)},
        }
    }


def password_body(
    sim: Simulator,
    *,
    password: str | None = None,
    username: str | None = None,
    domain: str | None = None,
    project: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``sim``'s own credentials and project unless told otherwise."""
    credentials = sim.credentials
    return iam_password_body(
        username or credentials.username,
        password or credentials.password,
        domain or credentials.domain,
        project or {"id": sim.project_id},
    )
