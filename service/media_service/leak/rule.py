"""The leak rule of the original Go service, as a plain state machine.

Every sample: remember the highest raw count; the Nth sample (30 by default, 5 minutes at 10 s)
of the unexplained count becomes the baseline; a leak is suspected while the unexplained count is above
factor x baseline, and only once a baseline above zero exists. The verdict is recomputed each
sample, so it clears when the count comes back down.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LeakVerdict:
    samples: int  # samples taken so far, this one included
    count: int  # raw count of this sample
    count_max: int  # highest raw count seen
    unexplained: int  # the count the rule judges: what load cannot explain
    baseline: int | None  # None until the baseline sample has been taken
    leak: bool


class LeakRule:
    def __init__(self, baseline_samples: int = 30, factor: float = 3.0) -> None:
        if baseline_samples < 1:
            raise ValueError("baseline_samples must be at least 1")
        if factor < 1:
            raise ValueError("factor must be at least 1")
        self.baseline_samples = baseline_samples
        self.factor = factor
        self._samples = 0
        self._count_max = 0
        self._baseline: int | None = None

    def observe(self, count: int, unexplained: int) -> LeakVerdict:
        self._samples += 1
        self._count_max = max(self._count_max, count)
        if self._samples == self.baseline_samples:
            self._baseline = unexplained
        baseline = self._baseline
        leak = baseline is not None and baseline > 0 and unexplained > self.factor * baseline
        return LeakVerdict(self._samples, count, self._count_max, unexplained, baseline, leak)
