"""A circuit breaker: closed -> open after N consecutive failures -> half-open after a
cool-down, when exactly one probe call decides whether it closes or opens again."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("mami.forge_image.breaker")


class BreakerOpen(Exception):
    """The circuit is open: the call was refused without touching the server.

    Never retried: it is deliberately not a transient fault."""


class CircuitBreaker:
    """Shared by every job of a process. Not thread-safe; use it from one event loop.

    Callers run ``acquire()`` before a call (it raises :class:`BreakerOpen` or lets the
    call through), then exactly one of ``success()``, ``failure()`` or ``abort()``
    (the call ended without a verdict, e.g. it was cancelled).
    """

    def __init__(
        self,
        threshold: int,
        cooldown: float,
        *,
        name: str = "forge",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = max(1, threshold)
        self.cooldown = cooldown
        self.name = name
        self.clock = clock
        self.state = "closed"
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self.probe_in_flight = False
        self.counts = {"successes": 0, "failures": 0, "rejected": 0, "opened": 0, "closed": 0}

    def acquire(self) -> None:
        """Let a call through or raise :class:`BreakerOpen` (cheap: no I/O)."""
        if self.state == "open":
            assert self.opened_at is not None
            if self.clock() - self.opened_at < self.cooldown:
                self._reject()
            self._transition("half_open")
        if self.state == "half_open":
            if self.probe_in_flight:
                self._reject()
            self.probe_in_flight = True

    def success(self) -> None:
        """The server answered sensibly: reset the failure count (and close)."""
        self.counts["successes"] += 1
        self.consecutive_failures = 0
        self.probe_in_flight = False
        if self.state != "closed":
            self.counts["closed"] += 1
            self._transition("closed")

    def failure(self) -> None:
        """The server failed: count it; open at the threshold or when a probe fails."""
        self.counts["failures"] += 1
        self.consecutive_failures += 1
        self.probe_in_flight = False
        if self.state == "half_open" or (
            self.state == "closed" and self.consecutive_failures >= self.threshold
        ):
            self.opened_at = self.clock()
            self.counts["opened"] += 1
            self._transition("open")

    def abort(self) -> None:
        """The call ended without a verdict: free the probe slot, change nothing else."""
        self.probe_in_flight = False

    def snapshot(self) -> dict[str, Any]:
        """State and counters, for ``/health`` and logs."""
        retry_in = None
        if self.state == "open" and self.opened_at is not None:
            retry_in = round(max(0.0, self.cooldown - (self.clock() - self.opened_at)), 3)
        return {
            "state": self.state,
            "consecutive_failures": self.consecutive_failures,
            "threshold": self.threshold,
            "cooldown_s": self.cooldown,
            "retry_in_s": retry_in,
            **self.counts,
        }

    def _reject(self) -> None:
        self.counts["rejected"] += 1
        raise BreakerOpen(f"circuit {self.name} is {self.state.replace('_', '-')}")

    def _transition(self, state: str) -> None:
        if state == self.state:
            return
        previous, self.state = self.state, state
        level = logging.WARNING if state == "open" else logging.INFO
        log.log(level, "circuit %s: %s -> %s (%s)", self.name, previous, state, self.snapshot())
