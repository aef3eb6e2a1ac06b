"""The one exponential back-off of the service: a pure function, no clock, no randomness.

Every retry delay is ``base * 2 ** (attempt - 1)`` (``attempt`` 1 is the first retry), the
exponent optionally held at ``max_exponent``, capped at ``cap``, then spread by a ``jitter``
rule over a random ``draw`` in [0, 1) that the caller supplies (so callers and tests decide
where randomness comes from)::

    jitter="none"     the capped delay itself                          (draw unused)
    jitter="equal"    half fixed, half random: [delay / 2, delay)      ("equal jitter")
    jitter="upward"   from the delay up to twice it, still capped      [delay, min(cap, 2 delay))

The shape follows dramatiq's ``compute_backoff``. No attempt count overflows: past the
largest float the delay is simply ``cap``.
"""

from __future__ import annotations

import math
from typing import Literal

Jitter = Literal["none", "equal", "upward"]


def compute_backoff(
    attempt: int,
    *,
    base: float,
    cap: float,
    max_exponent: int | None = None,
    jitter: Jitter = "none",
    draw: float = 0.0,
) -> float:
    """Seconds to wait before retry ``attempt`` (see the module docstring); 0 for
    ``attempt <= 0`` (nothing failed yet)."""
    if attempt <= 0:
        return 0.0
    exponent = attempt - 1 if max_exponent is None else min(attempt - 1, max_exponent)
    try:
        raw = math.ldexp(base, exponent)
    except OverflowError:
        raw = math.inf
    delay = min(cap, raw)
    if jitter == "equal":
        return float(delay / 2 + draw * delay / 2)
    if jitter == "upward":
        return min(cap, raw * (1.0 + draw))
    return float(delay)
