"""Config files for the tests: ``notifier.toml`` text from plain values.

``config_toml(service=..., delivery=..., sources=..., channels=...)`` renders TOML; a nested
dict is a sub-table (``{"auth": {...}}`` in a source is ``[sources.auth]``, ``{"http": {...}}``
in ``service`` is ``[service.http]``) and a None value is left out. ``source()`` is the usual
token source "prod" unless told otherwise; a source may also be ready TOML text (a
simulator's snippet, ``sim_source``). Tests about the config format itself keep their
literal TOML.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from notifier.simulator import Simulator

Values = Mapping[str, Any]
ENDPOINT = "https://bcs.example.test"  # of the default source
PROJECT = "p1"
RECORD_URL = f"{ENDPOINT}/v2/{PROJECT}/operation/record"


def token_auth(token: str = "t") -> dict[str, Any]:
    return {"type": "token", "token": token}


def aksk_auth(access_key: str, secret_key: str) -> dict[str, Any]:
    return {"type": "aksk", "access_key": access_key, "secret_key": secret_key}


def source(name: str = "prod", *, auth: Values | None = None, **settings: Any) -> dict[str, Any]:
    """A ``[[sources]]`` entry: ``ENDPOINT``, ``PROJECT`` and token "t" unless told others."""
    return {
        "name": name,
        "endpoint": ENDPOINT,
        "project_id": PROJECT,
        **settings,
        "auth": dict(auth or token_auth()),
    }


def sim_source(sim: Simulator, auth: str, name: str, **settings: Any) -> str:
    """A ``[[sources]]`` block for ``sim`` with per-source settings before its auth table."""
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
    return sim.config_snippet(auth, name=name).replace("[[sources]]\n", f"[[sources]]\n{extra}", 1)


def channel(name: str, *urls: str, **settings: Any) -> dict[str, Any]:
    return {"name": name, "urls": list(urls), **settings}


def _table(header: str, values: Values, *, array: bool = False) -> list[str]:
    lines = [f"[[{header}]]" if array else f"[{header}]"]
    lines += [
        f"{key} = {json.dumps(value)}"
        for key, value in values.items()
        if value is not None and not isinstance(value, Mapping)
    ]
    for key, value in values.items():
        if isinstance(value, Mapping):
            lines += _table(f"{header}.{key}", value)
    return lines


def config_toml(
    *,
    service: Values | None = None,
    delivery: Values | None = None,
    sources: Sequence[Values | str] | None = None,
    channels: Sequence[Values] = (),
) -> str:
    """The TOML text; ``sources`` defaults to ``[source()]``, empty tables are left out."""
    blocks: list[list[str]] = []
    if service:
        blocks.append(_table("service", service))
    if delivery:
        blocks.append(_table("delivery", delivery))
    for entry in [source()] if sources is None else sources:
        if isinstance(entry, str):
            blocks.append([entry.strip("\n")])
        else:
            blocks.append(_table("sources", entry, array=True))
    blocks += [_table("channels", entry, array=True) for entry in channels]
    return "\n\n".join("\n".join(block) for block in blocks) + "\n"


def write_config(directory: Path, *, service: Values | None = None, **kwargs: Any) -> Path:
    """Writes ``config_toml(...)`` to ``directory/notifier.toml``; the database is
    ``directory/state.db`` unless ``service`` names another."""
    service = {"database": f"sqlite:///{directory / 'state.db'}", **(service or {})}
    path = directory / "notifier.toml"
    path.write_text(config_toml(service=service, **kwargs))
    return path
