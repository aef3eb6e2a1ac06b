"""Shared fixtures: real SQLite files migrated by Alembic, the API page's example body, respx
standing in for HTTP APIs, and a list that an injected ``sleep`` appends to."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import respx
from sqlalchemy import Engine

from notifier.store import db

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def example_body() -> dict[str, Any]:
    """The 200 example response of the API page, quirks included."""
    data: dict[str, Any] = json.loads((FIXTURES / "example_response.json").read_text())
    return data


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A real SQLite file migrated to head through Alembic."""
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """ONE real PostgreSQL server for the whole run (``pg_support``), started on first use."""
    from pg_support import postgres_server

    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind: a SQLite file, a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    server = request.getfixturevalue("postgres")
    return str(server.create_database())


@pytest.fixture
def store_engine(store_url: str) -> Iterator[Engine]:
    """``store_url`` migrated to head through Alembic (SQLite and PostgreSQL)."""
    engine = db.make_engine(store_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    """respx mocking every httpx request; routes a test does not call are fine. Requests to
    127.0.0.1 go through: those are the tests' real local receivers (webhooks and Slack
    are posted with httpx)."""
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="127.0.0.1").pass_through()
        yield mock


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI (run in-process by click's runner) configures the root logger for the
    whole process; put handlers and levels back so every test starts alike."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    named = {
        name: logging.getLogger(name).level
        for name in ("httpx", "httpcore", "urllib3", "apprise", "alembic", "notifier")
    }
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
    for name, value in named.items():
        logging.getLogger(name).setLevel(value)


# -- Hypothesis: few examples in CI, more with BCS_FUZZ_EXAMPLES=N ---------------------------

import os  # noqa: E402 - the profile block stays together

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "bcs",
    max_examples=int(os.environ.get("BCS_FUZZ_EXAMPLES", "12")),
    deadline=None,  # a busy two-core machine: no per-example time limit
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=os.environ.get("BCS_FUZZ_EXAMPLES") is None,  # CI runs are reproducible
    print_blob=True,
)
settings.load_profile("bcs")
