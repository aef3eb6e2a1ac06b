"""An embedded stand-in for the BCS operation-record API and the IAM token API.

``with Simulator(seed=1) as sim:`` serves both on ``sim.endpoint`` (127.0.0.1, a free port)
with a manual clock that tests move with ``sim.advance(seconds)``; ``Simulator(speed=20)``
runs the scripted story 20 times faster than real time instead. ``sim.config_snippet(auth)``
gives a client working credentials (a ``[[sources]]`` block; the service's
:func:`notifier.demo.source_config` turns the same into a ``SourceConfig``);
``sim.inject(...)`` makes the next responses fail on purpose; ``sim.records()`` is the
truth to compare with.

The scenario engine (:mod:`notifier.simulator.scenario`) is pure: records are a function of
the seed, the story's origin and the simulated time. The package imports nothing of the
service (a test checks): it stands in for the outside world, so it shares no code with the
client it is there to check.
"""

from notifier.simulator.auth import Credentials, ReceivedRequest
from notifier.simulator.clock import ManualClock, ScaledClock, SimClock
from notifier.simulator.faults import Fault, FaultKind
from notifier.simulator.http import RequestLogEntry, SimResponse
from notifier.simulator.scenario import Scenario
from notifier.simulator.server import Simulator
from notifier.simulator.stories import DEFAULT_STORY, TEMPLATES, OperationSpec

__all__ = [
    "DEFAULT_STORY",
    "TEMPLATES",
    "Credentials",
    "Fault",
    "FaultKind",
    "ManualClock",
    "OperationSpec",
    "ReceivedRequest",
    "RequestLogEntry",
    "ScaledClock",
    "Scenario",
    "SimClock",
    "SimResponse",
    "Simulator",
]
