"""Token bucket: ``rate`` tokens a second, up to ``burst`` saved. ``take`` admits one event;
``charge`` admits work of any size while the bucket is not in debt, and may leave it in debt (a
fan-out whose cost is known only as it goes), so the next events wait until it is paid back."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._last = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def full(self) -> bool:
        """Refilled to its burst: forgetting this bucket loses nothing."""
        self._refill()
        return self._tokens >= self.burst

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def charge(self, amount: float) -> bool:
        """Admit ``amount`` unless the bucket is in debt; admitted, it may go into debt."""
        self._refill()
        if self._tokens < 0:
            return False
        self._tokens -= amount
        return True

    def debit(self, amount: float) -> None:
        """Charge what was already done (no refusal possible)."""
        self._refill()
        self._tokens -= amount
