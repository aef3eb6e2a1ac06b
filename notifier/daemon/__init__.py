"""The run loop and the service around it (``bcs-notifier run``).

- :mod:`notifier.daemon.loop`: the :class:`Daemon` - its cycle, start, stop, signals, leases
- :mod:`notifier.daemon.schedule`: the pure timetable (intervals, jitter, backoff, hangs)
- :mod:`notifier.daemon.polls`: what a finished poll changes; :mod:`~notifier.daemon.delivery`:
  the dispatcher between polls; :mod:`~notifier.daemon.reload`: SIGHUP
- :mod:`notifier.daemon.status`: status line, ``/healthz``, watchdog
- :mod:`notifier.daemon.serve`: :func:`serve` (lock, migrate, listener, systemd)
- :mod:`notifier.daemon.seams`: the poller/dispatcher protocols, components, executors
"""

from notifier.daemon.delivery import OUTBOX_RECHECK, SUMMARY_MAX_AGE
from notifier.daemon.loop import GRACE_BATCH, Daemon, DaemonOptions
from notifier.daemon.polls import failure_kind
from notifier.daemon.schedule import (
    DISPATCH_FAILURE_BACKOFF_MAX,
    DISPATCH_RETRY,
    SIGNATURE_BACKOFF,
    stuck_after,
)
from notifier.daemon.seams import (
    ComponentFactory,
    Components,
    DaemonThreadExecutor,
    DispatcherLike,
    ExecutorLike,
    InlineExecutor,
    PollerLike,
    PollResultLike,
    SourceSchedule,
    Wakeup,
    stop_dispatcher,
)
from notifier.daemon.serve import ServeOptions, default_components, serve
from notifier.daemon.status import DELIVERY_RESULTS, dispatch_counts

__all__ = [
    "DELIVERY_RESULTS",
    "DISPATCH_FAILURE_BACKOFF_MAX",
    "DISPATCH_RETRY",
    "GRACE_BATCH",
    "OUTBOX_RECHECK",
    "SIGNATURE_BACKOFF",
    "SUMMARY_MAX_AGE",
    "ComponentFactory",
    "Components",
    "Daemon",
    "DaemonOptions",
    "DaemonThreadExecutor",
    "DispatcherLike",
    "ExecutorLike",
    "InlineExecutor",
    "PollResultLike",
    "PollerLike",
    "ServeOptions",
    "SourceSchedule",
    "Wakeup",
    "default_components",
    "dispatch_counts",
    "failure_kind",
    "serve",
    "stop_dispatcher",
    "stuck_after",
]
