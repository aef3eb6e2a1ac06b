"""Hostile API records and config files, for the property tests and tests/fuzz_hostile.py.

Records: ``good_record(i, stage)`` is a well-formed record whose statuses move with
``stage``; ``hostile_record(rng, i)`` is one of them broken by one to three mutations of
:data:`RECORD_MUTATIONS` (wrong types, nulls, 1 MB strings, deep nesting, lone surrogates,
numbers past int64 and past Python's 4,300-digit limit, thousands of steps, odd ids, ...).
``body_text`` renders a response as JSON text; placeholders let it carry what
``json.dumps`` cannot write (number literals of any length).

Configs: ``config_text(rng)`` is a valid base file broken by one of
:data:`CONFIG_MUTATIONS`; it returns the text (or bytes) and the key path the mutation
touched ("" for a file-level break), so a test can check the error names it.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

GOOD_PREFIX = "BCSSVC01-99-17000000000000"
STAGES = ("waiting", "processing", "processing", "finished")
START_NS = 1_700_000_000_000_000_000


def good_id(index: int) -> str:
    return f"{GOOD_PREFIX}{index:05d}"


def good_record(index: int, stage: int) -> dict[str, Any]:
    """A well-formed record: at ``stage`` 0 waiting, 1-2 processing, 3 finished; its
    sub-steps move along."""
    stage = min(stage, len(STAGES) - 1)
    status = STAGES[stage]
    sub_status = ["", "processing", "finished", "finished"][stage]
    started = START_NS + index * 1_000_000_000 if stage else 0
    ended = started + 5_000_000_000 if stage >= 2 else 0
    return {
        "operation_id": good_id(index),
        "resource_type": "BCSSVC01",
        "operation_type": "99",
        "domain_id": "d1",
        "project_id": "p1",
        "blockchain_id": f"chain-{index}",
        "blockchain_name": f"chain {index}",
        "cluster_info": {"cluster_type": "cce", "node_infos": None},
        "operation_process": {
            "Preparation": {
                "step_name": "Preparation",
                "status": status if stage < 3 else "finished",
                "detail": "",
                "serial_num": 1,
                "sub_steps": {
                    "Generate": {
                        "substep_name": "Generate",
                        "detail": "waiting" if stage == 0 else None,
                        "status": sub_status,
                        "message": None,
                        "start_time": started,
                        "end_time": ended,
                        "serial_num": 1,
                    }
                },
            }
        },
        "record_time": START_NS + stage * 60_000_000_000 + index,
        "operation_status": status,
        "message": None,
        "desc": None,
    }


# -- placeholders for what json.dumps cannot write -------------------------------------------

_BIG = "\x00BIG:"


def big_literal(digits: int, *, negative: bool = False) -> str:
    """A placeholder that ``body_text`` turns into a number literal of ``digits`` digits."""
    return f"{_BIG}{'-' if negative else ''}{digits}\x00"


_DEEP = "\x00DEEP:"


def deep_literal(depth: int) -> str:
    """A placeholder that ``body_text`` turns into arrays nested ``depth`` deep (deeper than
    ``json.dumps`` or ``json.loads`` can go)."""
    return f"{_DEEP}{depth}\x00"


def body_text(records: list[Any], count: int | None = None) -> str:
    """The response JSON text (``count`` defaults to the number of records)."""
    text = json.dumps(
        {"count": len(records) if count is None else count, "operation_records": records}
    )
    while '"\\u0000DEEP:' in text:
        start = text.index('"\\u0000DEEP:')
        end = text.index('\\u0000"', start) + len('\\u0000"')
        depth = int(text[start + len('"\\u0000DEEP:') : end - len('\\u0000"')])
        text = text[:start] + "[" * depth + '"bottom"' + "]" * depth + text[end:]
    while '"\\u0000BIG:' in text:
        start = text.index('"\\u0000BIG:')
        end = text.index('\\u0000"', start) + len('\\u0000"')
        spec = text[start + len('"\\u0000BIG:') : end - len('\\u0000"')]
        negative = spec.startswith("-")
        literal = ("-" if negative else "") + "9" * int(spec.lstrip("-"))
        text = text[:start] + literal + text[end:]
    return text


# -- record mutations ------------------------------------------------------------------------

HOSTILE_VALUES: list[Callable[[random.Random], Any]] = [
    lambda rng: None,
    lambda rng: True,
    lambda rng: [],
    lambda rng: {},
    lambda rng: [1, "x", None, {"a": [2]}],
    lambda rng: {"nested": {"deeper": [1, 2, 3]}},
    lambda rng: rng.choice([0.5, -1.0, 1e300, -1e300, 1e-300]),
    lambda rng: rng.choice([2**63, 2**64 + 7, -(2**63) - 1, 10**30, 10**400, -(10**40)]),
    lambda rng: big_literal(rng.choice([20, 4301, 5000])),
    lambda rng: "x" * rng.choice([1, 300, 70_000, 1_000_000]),
    lambda rng: rng.choice(["\ud800", "a\udfffb", "\udc00\ud800", "ok\ud83d"]),
    lambda rng: rng.choice(["\x00", "a\x00b", "\x1b[31mred", "\u202eevil", "🔥" * 40]),
    lambda rng: rng.choice(["  PROCESSING  ", "Finished", "", "FAILED", "weird-future-state"]),
    lambda rng: rng.choice(["12", "-5", "--5", "١٢", "1e5", " 7 ", "nan"]),
]


def _hostile_value(rng: random.Random) -> Any:
    return rng.choice(HOSTILE_VALUES)(rng)


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for level in range(depth):
        value = {"k": value} if level % 2 else [value]
    return value


RECORD_FIELDS = (
    "operation_id",
    "resource_type",
    "operation_type",
    "domain_id",
    "project_id",
    "blockchain_id",
    "blockchain_name",
    "cluster_info",
    "operation_process",
    "record_time",
    "operation_status",
    "message",
    "desc",
)
STEP_FIELDS = ("step_name", "status", "detail", "serial_num", "sub_steps")
SUB_FIELDS = (
    "substep_name",
    "detail",
    "status",
    "message",
    "start_time",
    "end_time",
    "serial_num",
)


def _step(record: dict[str, Any]) -> dict[str, Any] | None:
    process = record.get("operation_process")
    if isinstance(process, dict) and process:
        step = next(iter(process.values()))
        if isinstance(step, dict):
            return step
    return None


def _sub(record: dict[str, Any]) -> dict[str, Any] | None:
    step = _step(record)
    if step is not None and isinstance(step.get("sub_steps"), dict) and step["sub_steps"]:
        sub = next(iter(step["sub_steps"].values()))
        if isinstance(sub, dict):
            return sub
    return None


def m_field_value(record: dict[str, Any], rng: random.Random) -> None:
    record[rng.choice(RECORD_FIELDS)] = _hostile_value(rng)


def m_drop_field(record: dict[str, Any], rng: random.Random) -> None:
    record.pop(rng.choice(RECORD_FIELDS), None)


def m_step_value(record: dict[str, Any], rng: random.Random) -> None:
    step = _step(record)
    if step is not None:
        step[rng.choice(STEP_FIELDS)] = _hostile_value(rng)


def m_sub_value(record: dict[str, Any], rng: random.Random) -> None:
    sub = _sub(record)
    if sub is not None:
        sub[rng.choice(SUB_FIELDS)] = _hostile_value(rng)


def m_times(record: dict[str, Any], rng: random.Random) -> None:
    """Timestamps no calendar shows (past year 9999, past int64, negative)."""
    sub = _sub(record)
    value = rng.choice([10**30, 2**63, 2**64, -(10**20), 253_402_300_800 * 10**9, 10**19])
    if sub is not None:
        sub[rng.choice(["start_time", "end_time"])] = value
    if rng.random() < 0.5:
        record["record_time"] = value


def m_deep(record: dict[str, Any], rng: random.Random) -> None:
    target = rng.choice(["cluster_info", "message", "desc", "operation_process"])
    depth = rng.choice([30, 200, 600, 5000])
    record[target] = _nested(depth) if depth <= 30 else deep_literal(depth)


def m_many_steps(record: dict[str, Any], rng: random.Random) -> None:
    count = rng.choice([200, 5000])
    record["operation_process"] = {
        f"step {n}": {
            "step_name": f"step {n}",
            "status": rng.choice(["finished", "processing", ""]),
            "serial_num": n,
            "sub_steps": {
                "s": {"substep_name": "s", "status": "finished", "start_time": n, "end_time": n}
            },
        }
        for n in range(count)
    }


def m_odd_id(record: dict[str, Any], rng: random.Random) -> None:
    record["operation_id"] = rng.choice(
        [
            "",
            "   ",
            "x" * 129,
            "x" * 5000,
            "op-\ud800",
            "op-\x00-nul",
            "op/../../etc",
            "🔥-op",
            "op with spaces",
            7,
            None,
            ["list"],
        ]
    )


def m_weird_keys(record: dict[str, Any], rng: random.Random) -> None:
    step = _step(record)
    key = rng.choice(["\ud800", "", "x" * 2000, "\x00"])
    if step is not None:
        record["operation_process"] = {key: dict(step, step_name=None)}


def m_messages(record: dict[str, Any], rng: random.Random) -> None:
    sub = _sub(record)
    messages = [
        "plain",
        "\ud800",
        42,
        10**30,
        1.5,
        True,
        {"a": [1, {"b": None}]},
        [[["deep"]]],
        "y" * 100_000,
    ]
    value = rng.sample(messages, k=rng.randint(1, len(messages)))
    if sub is not None and rng.random() < 0.5:
        sub["message"] = value
    else:
        record["message"] = value


def m_not_object(record: dict[str, Any], rng: random.Random) -> None:
    record.clear()
    record["__replace__"] = rng.choice(["a string", 12, None, [1, 2], True])


RECORD_MUTATIONS: dict[str, Callable[[dict[str, Any], random.Random], None]] = {
    "wrong type or null in a record field": m_field_value,
    "missing record field": m_drop_field,
    "wrong type or null in a step field": m_step_value,
    "wrong type or null in a sub-step field": m_sub_value,
    "timestamps past year 9999 / int64": m_times,
    "nesting 30-5,000 deep": m_deep,
    "200 or 5,000 steps": m_many_steps,
    "odd operation ids": m_odd_id,
    "odd step names (surrogate, empty, 2,000 chars, NUL)": m_weird_keys,
    "mixed-type and 100 KB messages": m_messages,
    "record that is not an object": m_not_object,
}


def hostile_record(rng: random.Random, index: int, *, heavy: bool = True) -> tuple[Any, list[str]]:
    """A broken record (its id never that of a good record) and the mutations applied;
    ``heavy=False`` keeps sizes small (20,000-character strings, 300 steps) for the quick suite."""
    record: dict[str, Any] = good_record(index, rng.randrange(len(STAGES)))
    record["operation_id"] = f"HOSTILE-{index:05d}"
    kinds = rng.sample(sorted(RECORD_MUTATIONS), k=rng.randint(1, 3))
    for kind in kinds:
        RECORD_MUTATIONS[kind](record, rng)
    if "__replace__" in record:
        return record["__replace__"], kinds
    if not heavy:
        record = _lighten(record)
    return record, kinds


def _lighten(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str) and len(value) > 20_000:
        return value[:20_000]
    if isinstance(value, dict):
        items = list(value.items())[:300] if depth < 3 else list(value.items())
        return {key: _lighten(member, depth + 1) for key, member in items}
    if isinstance(value, list):
        return [_lighten(member, depth + 1) for member in value]
    return value


# -- config mutations ------------------------------------------------------------------------

NUMBER_KEYS = (
    ("service", "poll_interval"),
    ("service", "active_poll_interval"),
    ("service", "poll_jitter"),
    ("service", "unreachable_after"),
    ("delivery", "max_attempts"),
    ("delivery", "max_age"),
    ("delivery", "backoff_initial"),
    ("delivery", "backoff_max"),
    ("delivery", "timeout"),
    ("delivery", "batch_size"),
    ("sources[0]", "timeout"),
    ("sources[0]", "max_retries"),
    ("sources[0]", "max_response_bytes"),
    ("channels[0]", "max_length"),
)
BAD_NUMBERS = ("nan", "inf", "-inf", "+nan", "-1", "-0.5", "1e23", "1e308", "9" * 30, "99999999999")
BAD_URLS = (
    '"http://[::1"',
    '"http://[::1]:99999"',
    '"http://host:port"',
    '"http://a\\u0000b.example"',
    '"http://a b.example"',
    '"ftp://bcs.example"',
    '"https://"',
    '""',
    '"\\u0000"',
    '"http://bcs.example\\n/x"',
    "12",
    "[]",
)
BAD_DATABASES = (
    '""',
    '"   "',
    '"sqlite://"',
    '"sqlite:///:memory:"',
    '"nosuchdb://x"',
    '"not a url"',
    '"sqlite:////proc/version/state.db"',
    '"sqlite:////"',
    '"sqlite:///\\u0000"',
    "7",
)


def base_config(directory: Path) -> dict[str, dict[str, str]]:
    """The valid file as table -> key -> TOML value text (what mutations edit)."""
    return {
        "service": {"database": json.dumps(f"sqlite:///{directory / 'state.db'}")},
        "delivery": {"max_attempts": "5"},
        "sources[0]": {
            "name": '"prod"',
            "endpoint": '"https://bcs.example.test"',
            "project_id": '"p1"',
        },
        "sources[0].auth": {"type": '"token"', "token": '"t"'},
        "channels[0]": {"name": '"chat"', "urls": '["json://127.0.0.1:9/hook"]'},
    }


def render_config(tables: dict[str, dict[str, str]]) -> str:
    lines: list[str] = []
    for table, values in tables.items():
        header = table.replace("[0]", "")
        array = table.endswith("[0]")
        lines.append(f"[[{header}]]" if array else f"[{header}]")
        lines += [f"{key} = {value}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)


def _path(table: str, key: str) -> str:
    return f"{table}.{key}"


def c_number(tables: dict[str, dict[str, str]], rng: random.Random) -> str:
    table, key = rng.choice(NUMBER_KEYS)
    tables.setdefault(table, {})[key] = rng.choice(BAD_NUMBERS)
    return _path(table, key)


def c_url(tables: dict[str, dict[str, str]], rng: random.Random) -> str:
    tables["sources[0]"]["endpoint"] = rng.choice(BAD_URLS)
    return "sources[0].endpoint"


def c_iam_url(tables: dict[str, dict[str, str]], rng: random.Random) -> str:
    tables["sources[0].auth"] = {
        "type": '"password"',
        "iam_endpoint": rng.choice(BAD_URLS),
        "domain": '"d"',
        "username": '"u"',
        "password": '"p"',
    }
    return "sources[0].auth.iam_endpoint"


def c_database(tables: dict[str, dict[str, str]], rng: random.Random) -> str:
    tables["service"]["database"] = rng.choice(BAD_DATABASES)
    return "service.database"


def c_ca_file(tables: dict[str, dict[str, str]], rng: random.Random) -> str:
    tables["sources[0]"]["ca_file"] = rng.choice(
        ['"/nonexistent/ca.pem"', '""', '"/proc/version"', '"/"', "3", '"\\u0000"']
    )
    return "sources[0].ca_file"


def c_wrong_type(tables: dict[str, dict[str, str]], rng: random.Random) -> str:
    table = rng.choice(list(tables))
    key = rng.choice(list(tables[table]))
    if table == "sources[0].auth" and key == "type":
        key = "token"
    tables[table][key] = rng.choice(["true", "[1, 2]", "{ a = 1 }", "1979-05-27T07:32:00Z", "3.5"])
    return _path(table, key)


def c_unknown_key(tables: dict[str, dict[str, str]], rng: random.Random) -> str:
    table = rng.choice(list(tables))
    key, name = rng.choice(
        [("colour",) * 2, ("poll_intervall",) * 2, ("x" * 300,) * 2, ('"\\u0000"', "\x00")]
    )
    tables[table][key] = "1"
    return _path(table, name)


def c_missing(tables: dict[str, dict[str, str]], rng: random.Random) -> str:
    key = rng.choice(["name", "endpoint", "project_id"])
    del tables["sources[0]"][key]
    return _path("sources[0]", key)


def c_bad_name(tables: dict[str, dict[str, str]], rng: random.Random) -> str:
    table = rng.choice(["sources[0]", "channels[0]"])
    tables[table]["name"] = rng.choice(['""', '"a b"', '"\\u0000"', json.dumps("n" * 100), '"ü"'])
    return _path(table, "name")


def c_channel(tables: dict[str, dict[str, str]], rng: random.Random) -> str:
    key, value = rng.choice(
        [
            ("urls", "[]"),
            ("urls", '["nosuchscheme://x"]'),
            ("urls", '["\\u0000"]'),
            ("events", '["nothing.*"]'),
            ("timezone", '"Mars/Olympus"'),
            ("timezone", '"../../etc/passwd"'),
            ("timezone", '"\\u0000"'),
            ("title", '"{{ nope"'),
            ("body", '"{% for %}"'),
        ]
    )
    tables["channels[0]"][key] = value
    return _path("channels[0]", key)


CONFIG_MUTATIONS: dict[str, Callable[[dict[str, dict[str, str]], random.Random], str]] = {
    "number nan/inf/negative/huge": c_number,
    "bad endpoint URL": c_url,
    "bad iam_endpoint URL": c_iam_url,
    "bad database URL": c_database,
    "bad ca_file": c_ca_file,
    "wrong type": c_wrong_type,
    "unknown key": c_unknown_key,
    "missing required key": c_missing,
    "bad name": c_bad_name,
    "bad channel setting": c_channel,
}

FILE_MUTATIONS: dict[str, Callable[[str, random.Random], str | bytes]] = {
    "not UTF-8": lambda text, rng: text.encode() + rng.choice([b"\xff\xfe", b"# \xc3\x28\n"]),
    "TOML nested thousands deep": lambda text, rng: (
        text + "deep = " + "[" * rng.choice([2000, 20000]) + "]" * 3 + "\n"
    ),
    "integer literal over 4,300 digits": lambda text, rng: text.replace(
        "max_attempts = 5", "max_attempts = " + "7" * rng.choice([4301, 10000])
    ),
    "truncated file": lambda text, rng: text[: rng.randrange(1, len(text))],
    "NUL byte": lambda text, rng: text.replace("prod", "pr\x00od", 1),
    "duplicate table key": lambda text, rng: text + "\n[service]\npoll_interval = 5\n",
}


def config_text(rng: random.Random, directory: Path) -> tuple[str | bytes, str, str]:
    """A mutated config: (text or bytes, the key path touched or "" for the file, the kind)."""
    tables = copy.deepcopy(base_config(directory))
    if rng.random() < 0.2:
        kind = rng.choice(sorted(FILE_MUTATIONS))
        return FILE_MUTATIONS[kind](render_config(tables), rng), "", kind
    kind = rng.choice(sorted(CONFIG_MUTATIONS))
    path = CONFIG_MUTATIONS[kind](tables, rng)
    return render_config(tables), path, kind
