"""The operator's vocabulary: the plain data types every other module speaks.

The bottom layer (model → clients → decision logic → handlers, each importing only downwards, as kopf
layers its own package): no I/O, no clock, and nothing imported from the operator, so that any module
can use these types without an import cycle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

PodKey = tuple[str, str]  # (namespace, name)


class Source(StrEnum):
    SCRAPE = "scrape"
    ALERTMANAGER = "alertmanager"


class BlockReason(StrEnum):
    BUDGET = "budget"
    STORM = "storm"
    COOLDOWN = "cooldown"
    DRY_RUN = "dry_run"
    UNREADABLE = "unreadable"
    FLAPPING = "flapping"


class EvictionResult(StrEnum):
    EVICTED = "evicted"
    RETRY = "retry"  # refused for now (429: a disruption budget), try again later
    DELETED = "deleted"
    ERROR = "error"


@dataclass(frozen=True)
class PodView:
    """What the operator knows of a pod from Kubernetes (labels and annotations included)."""

    namespace: str
    name: str
    ip: str | None = None
    quarantined: bool = False
    quarantined_at: float | None = None  # epoch seconds, from the annotation
    evict_after: float | None = None  # epoch seconds, from the annotation
    terminating: bool = False  # deletionTimestamp set: Kubernetes is removing it already
    uid: str | None = None

    @property
    def key(self) -> PodKey:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class Reading:
    """One scrape of a pod's /metrics; ``leak`` is None when the metrics could not be read."""

    leak: bool | None
    sessions: float | None = None
    error: str | None = None
    figures: Mapping[str, float] = field(default_factory=dict, compare=False)  # for messages only

    @property
    def readable(self) -> bool:
        return self.leak is not None


@dataclass(frozen=True)
class Quarantine:
    key: PodKey
    source: Source
    leak_since: float  # when the gauge was first seen at 1 in this run (or the alert arrived)


@dataclass(frozen=True)
class Evict:
    key: PodKey
    why: str


@dataclass(frozen=True)
class Delete:
    key: PodKey
    why: str


Action = Quarantine | Evict | Delete


@dataclass(frozen=True)
class Blocked:
    key: PodKey
    reason: BlockReason
    detail: str


@dataclass(frozen=True)
class Decision:
    actions: list[Action]
    blocked: list[Blocked]
    storm: bool
    leaky: int  # serving pods whose gauge reads 1 right now
    serving: int


@dataclass(frozen=True)
class Budget:
    """``maxQuarantined``: an absolute count, or a percentage of the matching pods."""

    count: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, text: str) -> Budget:
        text = text.strip()
        if text.endswith("%"):
            percent = float(text[:-1])
            if not 0 <= percent <= 100:
                raise ValueError("a percentage must be within 0%..100%")
            return cls(percent=percent)
        count = int(text)
        if count < 0:
            raise ValueError("a count must not be negative")
        return cls(count=count)

    def limit(self, matching_pods: int) -> int:
        """How many pods may be in quarantine at once.

        A percentage rounds down (like maxUnavailable), but a positive percentage of a non-empty
        fleet allows at least one pod: otherwise "10%" of a small fleet would silently mean "never".
        """
        if self.count is not None:
            return self.count
        assert self.percent is not None
        allowed = math.floor(matching_pods * self.percent / 100)
        if allowed == 0 and self.percent > 0 and matching_pods > 0:
            return 1
        return allowed

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else str(self.count)


@dataclass(frozen=True)
class Rules:
    """The decision logic's configuration: ``Settings.rules()`` builds it, and the defaults live
    there only (docs/operator.md lists them)."""

    confirm_seconds: float
    budget: Budget
    storm_fraction: float
    cooldown_seconds: float
    evict_after_seconds: float
    delete_grace_seconds: float
    dry_run: bool
    retry_base_seconds: float  # first eviction retry after a 429; doubles up to 16x
    storm_min_pods: int = 2  # one leaky pod is a bad pod, never evidence of a bad release
