"""Noticing that the SQLite database was deleted or replaced, and never starting over silently.

Two parts, both for SQLite files (other databases have no file to lose this way):

- :class:`DatabaseFile` remembers the file's identity (device and inode) when the service
  starts; :meth:`DatabaseFile.check` says when the file is gone or is another file. The run
  loop checks every cycle: it says so loudly, stops polling and delivering (a new empty file
  would take a silent baseline, and the old one is lost anyway), stops feeding the systemd
  watchdog and fails ``/healthz``.
- :class:`BaselineMarker` is a small JSON file beside the database,
  ``<database>.baselines.json``, that records for each source that it has a baseline and the
  latest ``record_time`` stored for it. When a source has no baseline in the database but
  the marker says it had one, the database was lost: the poll says so (an error line), and
  instead of a silent baseline it reports every operation updated after the latest
  ``record_time`` the lost database held (``operation.created`` with its current state), so
  the changes made while there was no database are not lost. Deleting the marker together
  with the database is how to start over on purpose.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

logger = logging.getLogger(__name__)

MARKER_SUFFIX: Final = ".baselines.json"


def sqlite_file(engine: Engine | str) -> Path | None:
    """The database file of a SQLite engine or URL, None for other databases and ``:memory:``."""
    url = make_url(engine) if isinstance(engine, str) else engine.url
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser().absolute()


class DatabaseFile:
    """The identity of the database file at start; :meth:`check` compares it with now."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.identity = self._identity()

    @classmethod
    def for_engine(cls, engine: Engine) -> DatabaseFile | None:
        path = sqlite_file(engine)
        return cls(path) if path is not None else None

    def _identity(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_dev, stat.st_ino)

    def check(self) -> str | None:
        """None while the file is the one the service started with, else what happened."""
        if self.identity is None:  # not there at start (cannot happen after a migration)
            self.identity = self._identity()
            return None
        now = self._identity()
        if now is None:
            return f"the database file {self.path} was deleted under the running service"
        if now != self.identity:
            return f"the database file {self.path} was replaced by another file"
        return None


@dataclass(frozen=True)
class MarkedSource:
    """What the marker knows of one source."""

    baseline_at: int  # ms
    last_record_time: int  # ns, the latest record_time stored


class BaselineMarker:
    """``<database>.baselines.json``: which sources have a baseline in that database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: dict[str, MarkedSource] | None = None

    @classmethod
    def for_engine(cls, engine: Engine | str) -> BaselineMarker | None:
        """The marker of an engine's or a URL's SQLite file (None for other databases)."""
        database = sqlite_file(engine)
        if database is None:
            return None
        return cls(database.with_name(database.name + MARKER_SUFFIX))

    def sources(self) -> dict[str, MarkedSource]:
        if self._cache is None:
            self._cache = self._read()
        return dict(self._cache)

    def get(self, source: str) -> MarkedSource | None:
        return self.sources().get(source)

    def _read(self) -> dict[str, MarkedSource]:
        try:
            data: Any = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("cannot read the baseline marker %s: %s", self.path, exc)
            return {}
        found: dict[str, MarkedSource] = {}
        entries = data.get("sources") if isinstance(data, dict) else None
        for name, entry in (entries or {}).items():
            if isinstance(entry, dict):
                baseline = entry.get("baseline_at")
                last = entry.get("last_record_time")
                if isinstance(baseline, int) and isinstance(last, int):
                    found[str(name)] = MarkedSource(baseline, last)
        return found

    def update(self, source: str, *, baseline_at: int, last_record_time: int) -> None:
        """Note ``source``'s baseline and latest record time (written only on a change)."""
        current = self.sources()
        known = current.get(source)
        latest = max(last_record_time, known.last_record_time if known else 0)
        entry = MarkedSource(known.baseline_at if known else baseline_at, latest)
        if entry == known:
            return
        current[source] = entry
        try:
            self._write(current)
        except OSError as exc:
            logger.warning("cannot write the baseline marker %s: %s", self.path, exc)
            return
        self._cache = current

    def _write(self, sources: dict[str, MarkedSource]) -> None:
        document = {
            "about": "bcs-notifier: sources with a baseline in the database beside this file",
            "sources": {
                name: {"baseline_at": entry.baseline_at, "last_record_time": entry.last_record_time}
                for name, entry in sorted(sources.items())
            },
        }
        handle, name = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                json.dump(document, file, indent=1)
                file.flush()
                os.fsync(file.fileno())
            os.replace(name, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise
