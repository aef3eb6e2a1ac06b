"""Hostile input never costs a poll, a delivery or a restart (issue 14).

Property tests (Hypothesis; few examples by default, ``BCS_FUZZ_EXAMPLES=N`` for more):
records built from the API's shape and broken by hostile mutations go through parse ->
diff -> store -> render -> CloudEvent -> JSON Schema without an exception, and the good
records of the same response yield exactly the transitions they yield alone; generated
config files either load or fail with a ``ConfigError`` naming the key. Then the cases
the issue reproduced one by one.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from bcs_support import make_source
from hostile_support import (
    body_text,
    config_text,
    good_id,
    good_record,
    hostile_record,
)
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine

import notifier
from notifier.bcs.client import decode_json
from notifier.bcs.sanitize import json_int
from notifier.channels.render import RenderOptions, render_message
from notifier.channels.targets import validate_channel
from notifier.config import (
    ChannelConfig,
    Config,
    DeliveryConfig,
    ServiceConfig,
    SourceConfig,
    load_config,
)
from notifier.errors import ConfigError, ConfigProblem
from notifier.model import Event, OperationRecord, describe, event_body
from notifier.pipeline import Poller
from notifier.store import db
from notifier.store.repository import EventGroup, Repository

SCHEMA = json.loads(
    (Path(notifier.__file__).parent / "schemas" / "cloudevent.schema.json").read_text()
)
FORMATS = (
    ("markdown", "commonmark"),
    ("markdown", "slack"),
    ("html", "commonmark"),
    ("text", "commonmark"),
)


@dataclass
class _Fetched:
    body: Any
    request_id: str | None = "req-fuzz"


class _TextClient:
    """Serves JSON texts, decoded as ``BcsClient`` decodes a body."""

    def __init__(self) -> None:
        self.text = "{}"

    def fetch(self) -> _Fetched:
        return _Fetched(decode_json(self.text.encode()))

    def close(self) -> None:
        return


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once; each example works on a copy."""
    path = tmp_path_factory.mktemp("hostile") / "template.db"
    engine = db.make_engine(f"sqlite:///{path}")
    db.upgrade(engine)
    engine.dispose()
    return path


@dataclass
class _Store:
    engine: Engine
    client: _TextClient
    poller: Poller


@contextlib.contextmanager
def _stores(template_db: Path) -> Iterator[Any]:
    """A factory of fresh stores (copies of the template), all closed at the end."""
    directory = Path(tempfile.mkdtemp(prefix="bcs-hostile-"))
    opened: list[_Store] = []

    def make(name: str) -> _Store:
        path = directory / f"{name}-{len(opened)}.db"
        shutil.copy(template_db, path)
        engine = db.make_engine(f"sqlite:///{path}")
        client = _TextClient()
        config = Config(
            service=ServiceConfig(database=f"sqlite:///{path}"),
            delivery=DeliveryConfig(),
            sources=(make_source(),),
            channels=(ChannelConfig(name="all", urls=("json://127.0.0.1:9/",)),),
        )
        poller = Poller(config, engine, client_factory=lambda _source: client)
        store = _Store(engine, client, poller)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.poller.close()
        store.engine.dispose()
    shutil.rmtree(directory, ignore_errors=True)


def _poll(store: _Store, source: SourceConfig, text: str) -> tuple[Event, ...]:
    store.client.text = text
    result = store.poller.poll_source(source)
    assert result.error is None, result.error
    return result.events


def _check_deliverable(groups: list[EventGroup], records: dict[str, OperationRecord]) -> None:
    """Everything a channel or a webhook would get is built without an exception."""
    for group in groups:
        record = records.get(group.operation_id)
        for fmt, dialect in FORMATS:
            message = render_message(
                list(group.events), record, RenderOptions(format=fmt, dialect=dialect, budget=4000)
            )
            (message.title + message.body).encode("utf-8")
        for event in group.events:
            document = json.loads(event_body(event))
            jsonschema.validate(document, SCHEMA)
            describe(event).encode("utf-8")


def _stored_groups(engine: Engine) -> tuple[list[EventGroup], dict[str, OperationRecord]]:
    """The stored events read back (as the dispatcher reads them), grouped by operation."""
    by_operation: dict[str, list[Event]] = {}
    for stored in Repository(engine).iter_events():
        by_operation.setdefault(stored.event.operation_id, []).append(stored.event)
    groups = [EventGroup(op, "prod", op, tuple(found), ()) for op, found in by_operation.items()]
    records = Repository(engine).load_records("prod", list(by_operation))
    return groups, records


@given(
    seed=st.integers(0, 2**32 - 1),
    goods=st.integers(1, 3),
    hostiles=st.integers(1, 3),
    stages=st.lists(st.integers(0, 3), min_size=2, max_size=3),
)
def test_hostile_records_never_cost_the_good_ones_their_transitions(
    template_db: Path, seed: int, goods: int, hostiles: int, stages: list[int]
) -> None:
    rng = random.Random(seed)  # noqa: S311 - fuzzing, not cryptography
    source = make_source()
    with _stores(template_db) as stores:
        mixed, alone = stores("mixed"), stores("alone")
        for number, stage in enumerate(stages):
            good = [good_record(index, min(stage + index % 2, 3)) for index in range(goods)]
            bad = [
                hostile_record(rng, 100 * number + index, heavy=False)[0]
                for index in range(hostiles)
            ]
            records = good + bad
            rng.shuffle(records)
            found = _poll(mixed, source, body_text(records))
            expected = _poll(alone, source, body_text(good))
            good_ids = {good_id(index) for index in range(goods)}
            assert sorted(e.id for e in found if e.operation_id in good_ids) == sorted(
                e.id for e in expected
            )
        groups, records_by_id = _stored_groups(mixed.engine)
        _check_deliverable(groups, records_by_id)


def _config_problems(file: Path) -> list[ConfigProblem] | None:
    """None when the file loads, else its problems."""
    try:
        load_config(file, channel_validators=(validate_channel,))
    except ConfigError as exc:
        return list(exc.problems)
    return None


@given(seed=st.integers(0, 2**32 - 1))
def test_generated_configs_load_or_name_the_broken_key(seed: int) -> None:
    rng = random.Random(seed)  # noqa: S311 - fuzzing, not cryptography
    directory = Path(tempfile.mkdtemp(prefix="bcs-hostile-config-"))
    try:
        text, path, kind = config_text(rng, directory)
        file = directory / "notifier.toml"
        file.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        problems = _config_problems(file)
        if path:
            paths = [problem.path for problem in problems or ()]
            assert any(found.startswith(path) for found in paths), (kind, path, paths)
        else:  # a file-level break: loads, or fails with a reason (never a traceback)
            assert problems is None or problems
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- values drawn by Hypothesis itself, put anywhere in a record ------------------------------

_TEXT = st.text(
    alphabet=st.characters(codec=None, exclude_categories=()),  # surrogates and NUL included
    max_size=40,
)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=True, allow_infinity=True)
    | _TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_TEXT, children, max_size=4),
    max_leaves=20,
)
_PLACES = st.sampled_from(["record", "step", "sub-step"])
_FIELDS = {
    "record": [
        "resource_type",
        "operation_type",
        "blockchain_name",
        "cluster_info",
        "operation_process",
        "record_time",
        "operation_status",
        "message",
        "desc",
    ],
    "step": ["step_name", "status", "detail", "serial_num", "sub_steps"],
    "sub-step": ["substep_name", "detail", "status", "message", "start_time", "end_time"],
}


@given(
    edits=st.lists(
        st.tuples(_PLACES, st.integers(0, 8), _JSON),
        min_size=1,
        max_size=4,
    )
)
def test_any_json_value_anywhere_in_a_record_is_kept_safe_or_skipped(
    edits: list[tuple[str, int, Any]],
) -> None:
    from notifier.bcs.parse import parse_response
    from notifier.diff import diff_record
    from notifier.model import INT64_MAX, INT64_MIN, canonical_json

    hostile = good_record(9, 2)
    step = hostile["operation_process"]["Preparation"]
    sub = step["sub_steps"]["Generate"]
    for place, index, value in edits:
        target = {"record": hostile, "step": step, "sub-step": sub}[place]
        fields = _FIELDS[place]
        target[fields[index % len(fields)]] = value
    before = parse_response(
        {"count": 2, "operation_records": [good_record(0, 1), good_record(9, 1)]}
    )
    body = {"count": 2, "operation_records": [good_record(0, 2), hostile]}
    parsed = parse_response(json.loads(json.dumps(body), parse_int=json_int))
    assert [r.operation_id for r in parsed.records][:1] == [good_id(0)]  # the good one stays
    previous = {record.operation_id: record for record in before.records}
    for record in parsed.records:
        canonical_json(record.to_dict()).encode("utf-8")  # storable and hashable
        numbers = [record.record_time] + [
            value for s in record.steps for u in s.sub_steps for value in (u.start_time, u.end_time)
        ]
        assert all(INT64_MIN <= number <= INT64_MAX for number in numbers)
        found = diff_record("prod", previous.get(record.operation_id), record)
        group = EventGroup("g", "prod", record.operation_id, tuple(found), ())
        _check_deliverable([group], {record.operation_id: record})
