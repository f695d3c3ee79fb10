"""A circuit breaker per node, so a node that keeps failing is not waited on.

A node whose requests failed ``threshold`` times in a row (unreachable, or no
answer by the deadline) is not asked while its breaker is open: searches say
at once that it is unreachable and why, instead of each waiting out its
deadline. While open, the node is probed with the standard gRPC health check
every ``probe_interval_s``; the first SERVING closes the breaker half-way (one
more failure opens it again), and the next answer closes it fully. A node that
comes back is therefore asked again within about one probe interval plus the
channel's reconnect backoff.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    # Consecutive failures that open a node's breaker; 0 turns breakers off.
    threshold: int = 3
    probe_interval_s: float = 0.25
    probe_timeout_s: float = 1.0

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise ValueError("breaker threshold must be 0 (off) or more")
        if not 0 < self.probe_interval_s <= 60 or not 0 < self.probe_timeout_s <= 60:
            raise ValueError("breaker probe interval and timeout must be in (0, 60] s")


class Breaker:
    """One node's breaker; used from the event loop only."""

    __slots__ = ("failures", "last_failure", "opened_at", "settings")

    def __init__(self, settings: BreakerSettings) -> None:
        self.settings = settings
        self.failures = 0
        self.opened_at: float | None = None
        self.last_failure = ""

    @property
    def open(self) -> bool:
        return self.opened_at is not None

    def succeeded(self) -> None:
        self.failures = 0
        self.opened_at = None

    def failed(self, why: str) -> bool:
        """Count a failure; True if this one opened the breaker."""
        self.failures += 1
        self.last_failure = why
        threshold = self.settings.threshold
        if threshold and self.opened_at is None and self.failures >= threshold:
            self.opened_at = time.monotonic()
            return True
        return False

    def probed(self) -> None:
        """The node answers its health check: ask it again, on probation."""
        self.opened_at = None
        self.failures = max(0, self.settings.threshold - 1)

    def why_open(self) -> str:
        opened = self.opened_at if self.opened_at is not None else time.monotonic()
        return (
            f"not asked: its last {self.failures} requests failed (last: {self.last_failure}); "
            f"the gateway has been probing it every {self.settings.probe_interval_s:g} s for "
            f"{time.monotonic() - opened:.1f} s and asks it again once it answers"
        )
