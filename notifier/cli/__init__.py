"""The ``bcs-notifier`` command line: a thin composition root.

It parses options, wires the library together and turns ``NotifierError`` into a one-line
message and an exit code. click is imported only inside this package. Each module below
adds its commands to the ``main`` group.
"""

from notifier.cli import core, delivery, durations, service, simulation, sources
from notifier.cli.base import main

__all__ = ["core", "delivery", "durations", "main", "service", "simulation", "sources"]
