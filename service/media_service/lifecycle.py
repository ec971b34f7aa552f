"""Lifecycle state machine: starting → ready → draining → stopped.

Plain state and transitions, with no I/O: the server reacts to the transitions (readiness,
draining notices, closing sessions); this module only decides which transitions are legal.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from media_service.metrics import ServiceMetrics

#: Seconds a refused client should wait before retrying: enough for the endpoint controller to
#: take a draining pod out of the Service, so the retry lands on another instance.
RETRY_AFTER_SECONDS = 2


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


class Lifecycle:
    def __init__(self, metrics: ServiceMetrics | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self._clock = clock
        self.state = State.STARTING
        self.drain_started_at: float | None = None
        self._publish()

    @property
    def accepting(self) -> bool:
        """New sessions are taken only while ready."""
        return self.state is State.READY

    @property
    def draining(self) -> bool:
        return self.state is State.DRAINING

    def mark_ready(self) -> bool:
        """starting → ready. False (and no change) if a drain or stop came first."""
        if self.state is not State.STARTING:
            return False
        self.state = State.READY
        self._publish()
        return True

    def begin_drain(self) -> bool:
        """starting|ready → draining. True only for the call that started the drain."""
        if self.state not in (State.STARTING, State.READY):
            return False
        self.state = State.DRAINING
        self.drain_started_at = self._clock()
        self._publish()
        return True

    def drain_remaining(self, window: float) -> float:
        """Seconds left in the drain window (the full window when not draining)."""
        if self.drain_started_at is None:
            return window
        return max(0.0, window - (self._clock() - self.drain_started_at))

    def mark_stopped(self) -> None:
        self.state = State.STOPPED
        self._publish()

    def _publish(self) -> None:
        if self._metrics is not None:
            self._metrics.ready.set(1 if self.state is State.READY else 0)
            self._metrics.draining.set(1 if self.state is State.DRAINING else 0)
