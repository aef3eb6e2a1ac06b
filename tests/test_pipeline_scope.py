"""Changing what a source watches starts a new silent baseline for newly seen operations."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from clock_support import FakeClock
from config_support import config_toml, source
from source_support import FixedClient, with_new_operation
from sqlalchemy import Engine

from notifier.config import Config, parse_config
from notifier.model import EventType
from notifier.pipeline import Poller


def config(filters: dict[str, Any] | None = None) -> Config:
    return parse_config(config_toml(sources=[source(filters=filters)]))


def test_widening_a_filter_reports_no_history_but_later_changes(
    engine: Engine, example_body: dict[str, Any]
) -> None:
    body = with_new_operation(example_body, "finished")
    client = FixedClient(body)
    narrow = config({"operation_type": "99"})
    poller = Poller(
        narrow, engine, client_factory=lambda _s: client, clock=FakeClock.at_wall(1.0e9)
    )
    assert poller.poll_source(narrow.sources[0]).baseline

    wide = config()
    poller = Poller(
        wide, engine, client_factory=lambda _s: client, clock=FakeClock.at_wall(1.0e9 + 5)
    )
    widened = poller.poll_source(wide.sources[0])
    assert widened.ok
    assert widened.events == ()  # the "01" operation is history, not news
    assert widened.stored == 1

    body["operation_records"][0]["operation_status"] = "finished"
    moved = poller.poll_source(wide.sources[0])
    assert [(e.type, e.to_status) for e in moved.events] == [
        (EventType.OPERATION_STATUS_CHANGED, "finished")
    ]
    body["operation_records"].append(
        {**copy.deepcopy(body["operation_records"][1]), "operation_id": "BCSSVC01-02-1"}
    )
    body["count"] = 3
    created = poller.poll_source(wide.sources[0])
    assert [e.type for e in created.events] == [EventType.OPERATION_CREATED]


def test_an_unchanged_scope_keeps_reporting_new_operations(
    engine: Engine, example_body: dict[str, Any]
) -> None:
    first = copy.deepcopy(example_body)
    client = FixedClient(first)
    settings = config()
    poller = Poller(
        settings, engine, client_factory=lambda _s: client, clock=FakeClock.at_wall(1.0e9)
    )
    poller.poll_source(settings.sources[0])
    client.body = with_new_operation(example_body, "finished")
    same = replace(settings.sources[0])  # equal config, as after a reload
    assert [e.type for e in poller.poll_source(same).events] == [EventType.OPERATION_CREATED]
