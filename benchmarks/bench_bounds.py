"""The cost of bounding every API value (notifier.bcs.sanitize), per record.

Baselines measured in the same run on the same body of N copies of the API page's example
record: ``json.loads`` alone, and ``parse_response`` with the bounding functions replaced
by identities (what parsing cost before bounding). Timed: ``json.loads`` with the
``parse_int=json_int`` hook, and ``parse_response`` with bounding. Also a hostile body (every
record with a 5,000-digit number, lone surrogates and a 100 KB message) parsed with
bounding. Run: ``python benchmarks/bench_bounds.py [N]``.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from notifier.bcs import parse, sanitize
from notifier.bcs.parse import parse_response
from notifier.bcs.sanitize import json_int

FIXTURE = Path(__file__).parent.parent / "tests" / "fixtures" / "example_response.json"


def make_body(count: int, *, hostile: bool = False) -> str:
    template = json.loads(FIXTURE.read_text())["operation_records"][0]
    records: list[dict[str, Any]] = []
    for index in range(count):
        record = copy.deepcopy(template)
        record["operation_id"] = f"BCSSVC01-99-{1618218591906093855 + index}"
        if hostile:
            record["record_time"] = "__BIG__"
            record["blockchain_name"] = "bad \ud800 name"
            record["message"] = ["m" * 100_000]
        records.append(record)
    text = json.dumps({"count": count, "operation_records": records})
    return text.replace('"__BIG__"', "9" * 5000)


def best(function: Callable[[], object], rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    body = make_body(count)
    decoded = json.loads(body, parse_int=json_int)
    loads = best(lambda: json.loads(body))
    loads_hook = best(lambda: json.loads(body, parse_int=json_int))
    bounded = best(lambda: parse_response(decoded))

    originals = (parse.clean_text, parse.bounded_int, parse.clean_value)
    parse.clean_text = lambda value, *_args, **_kw: value  # type: ignore[assignment]
    parse.bounded_int = lambda value, *_args, **_kw: value  # type: ignore[assignment]
    parse.clean_value = lambda value, *_args, **_kw: value  # type: ignore[assignment]
    try:
        unbounded = best(lambda: parse_response(decoded))
    finally:
        parse.clean_text, parse.bounded_int, parse.clean_value = originals

    hostile_count = max(count // 10, 1)
    hostile_body = make_body(hostile_count, hostile=True)
    import logging

    logging.disable(logging.WARNING)  # one warning per repaired record is not what is timed
    hostile = best(lambda: parse_response(json.loads(hostile_body, parse_int=json_int)), 3)
    assert sanitize.MAX_TEXT < 100_000

    print(f"{count} records, best of 5")
    print(f"  json.loads                      {loads * 1000:8.1f} ms  (baseline)")
    print(
        f"  json.loads + parse_int=json_int {loads_hook * 1000:8.1f} ms  x{loads_hook / loads:.2f}"
    )
    print(f"  parse_response, no bounding    {unbounded * 1000:8.1f} ms  (baseline)")
    print(f"  parse_response, bounded        {bounded * 1000:8.1f} ms  x{bounded / unbounded:.2f}")
    per_record = (bounded - unbounded) / count * 1e6
    print(f"  bounding costs {per_record:.1f} us per record")
    print(
        f"  hostile body: {hostile_count} records with a 5,000-digit number, surrogates and a "
        f"100 KB message: {hostile * 1000:.1f} ms ({hostile / hostile_count * 1e6:.0f} us/record)"
    )


if __name__ == "__main__":
    main()
