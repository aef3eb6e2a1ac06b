"""Reading TOML tables by key path: typed getters that collect problems instead of raising.

A :class:`Reader` holds the problems found so far, the environment for ``${NAME}``
references and the folder relative ``*_file`` secrets are looked up in; a :class:`Section`
is one table being read, and reports every key it was not asked for as unknown.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from notifier.config.model import Secret
from notifier.errors import ConfigProblem

_ENV_RE: Final = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

_MISSING: Final = object()


@dataclass
class Reader:
    """One file being read: the problems found so far, and what ``${NAME}`` and ``*_file``
    values are resolved against."""

    problems: list[ConfigProblem]
    environ: Mapping[str, str]
    base_dir: Path

    def problem(self, path: str, message: str) -> None:
        self.problems.append(ConfigProblem(path, message))

    def section(self, data: Any, path: str) -> Section | None:
        if not isinstance(data, dict):
            self.problem(path, f"must be a table, not {_type_name(data)}")
            return None
        return Section(self, data, path)

    def interpolate(self, value: str, path: str) -> str | None:
        missing: list[str] = []

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name = match.group(1)
            if name not in self.environ:
                missing.append(name)
                return ""
            return self.environ[name]

        result = _ENV_RE.sub(replace, value)
        if missing:
            names = ", ".join(f"${{{name}}}" for name in missing)
            self.problem(path, f"environment variable not set: {names}")
            return None
        return result

    def read_secret_file(self, raw: str, path: str) -> str | None:
        candidate = Path(raw).expanduser()
        if not candidate.is_absolute():
            places = [self.base_dir / "credentials" / candidate, self.base_dir / candidate]
            credentials = self.environ.get("CREDENTIALS_DIRECTORY")
            if credentials:
                places.insert(0, Path(credentials) / candidate)
            candidate = next((place for place in places if place.is_file()), places[-1])
        try:
            return candidate.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            self.problem(path, f"cannot read {candidate}: {exc.strerror}")
            return None


#: The upper bound of any number in the file without a tighter one of its own (seconds:
#: about 31 years); larger values are typing mistakes, and would overflow timers.
NUMBER_MAX: Final = 1e9


def _shown_number(value: float) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 30 else f"{text[:12]}... ({len(text)} digits)"


def _type_name(value: Any) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


class Section:
    """One TOML table being read: typed getters that record problems instead of raising."""

    def __init__(self, reader: Reader, data: dict[str, Any], path: str) -> None:
        self.reader = reader
        self.data = data
        self.path = path
        self.seen: set[str] = set()

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key, _MISSING)

    def string(self, key: str, default: Any = _MISSING, *, required: bool = False) -> Any:
        value = self.raw(key)
        path = self.key_path(key)
        if value is _MISSING:
            if required:
                self.reader.problem(path, "is required")
            return None if default is _MISSING else default
        if not isinstance(value, str):
            self.reader.problem(path, f"must be a string, not {_type_name(value)}")
            return None if default is _MISSING else default
        result = self.reader.interpolate(value, path)
        if result is not None and required and not result.strip():
            self.reader.problem(path, "must not be empty")
        return result

    def number(
        self,
        key: str,
        default: float,
        *,
        minimum: float | None = None,
        integer: bool = False,
        maximum: float = NUMBER_MAX,
    ) -> Any:
        """A finite number in ``[minimum, maximum]`` (every number has an upper bound:
        ``NUMBER_MAX`` unless the key has a tighter one)."""
        value = self.raw(key)
        path = self.key_path(key)
        if value is _MISSING:
            return default
        allowed = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, allowed):
            kind = "an integer" if integer else "a number"
            self.reader.problem(path, f"must be {kind}, not {_type_name(value)}")
            return default
        if not math.isfinite(value):
            self.reader.problem(path, f"must be a finite number, not {value}")
            return default
        if minimum is not None and value < minimum:
            self.reader.problem(path, f"must be at least {minimum:g}, not {_shown_number(value)}")
            return default
        if value > maximum:
            self.reader.problem(path, f"must be at most {maximum:g}, not {_shown_number(value)}")
            return default
        return value if integer else float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            self.reader.problem(
                self.key_path(key), f"must be true or false, not {_type_name(value)}"
            )
            return default
        return value

    def strings(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        """A string or a list of strings (each interpolated)."""
        value = self.raw(key)
        path = self.key_path(key)
        if value is _MISSING:
            return default
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            self.reader.problem(path, "must be a string or a list of strings")
            return default
        result: list[str] = []
        for index, item in enumerate(items):
            text = self.reader.interpolate(item, f"{path}[{index}]")
            if text is not None:
                result.append(text)
        return tuple(result)

    def secret(self, key: str, *, required: bool = False) -> Secret | None:
        """``key`` or ``key_file``: exactly one of them."""
        file_key = f"{key}_file"
        path = self.key_path(key)
        if self.has(key) and self.has(file_key):
            self.reader.problem(path, f"give either {key} or {file_key}, not both")
        if self.has(file_key):
            file_name = self.string(file_key)
            self.raw(key)
            if file_name is None:
                return None
            content = self.reader.read_secret_file(file_name, self.key_path(file_key))
            if content is not None and not content:
                self.reader.problem(self.key_path(file_key), "the file is empty")
            return Secret(content) if content else None
        value = self.string(key, required=required)
        return Secret(value) if value else None

    def table(self, key: str) -> Section | None:
        value = self.raw(key)
        if value is _MISSING:
            return None
        return self.reader.section(value, self.key_path(key))

    def tables(self, key: str) -> Iterator[Section]:
        value = self.raw(key)
        if value is _MISSING:
            return
        if not isinstance(value, list):
            self.reader.problem(self.key_path(key), f"must be an array of tables ([[{key}]])")
            return
        for index, item in enumerate(value):
            section = self.reader.section(item, f"{self.key_path(key)}[{index}]")
            if section is not None:
                yield section

    def finish(self) -> None:
        for key in self.data:
            if key not in self.seen:
                self.reader.problem(self.key_path(key), "unknown key")
