"""The decision logic: which pod to quarantine, evict or delete, and what blocks it.

Plain code: no Kubernetes, no HTTP, no clock of its own. The control loop feeds it what it saw
(pods, readings, alerts) and the time, and carries out what it returns, then reports the outcome.
Everything that must survive a restart lives in the pods' labels and annotations (``PodView``);
what is kept here is only what a restart may safely forget (how long a gauge has been up, which
blocked decision was already reported, eviction backoff).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from media_operator.settings import Budget

PodKey = tuple[str, str]  # (namespace, name)


class Source(str, Enum):
    SCRAPE = "scrape"
    ALERTMANAGER = "alertmanager"


class BlockReason(str, Enum):
    BUDGET = "budget"
    STORM = "storm"
    COOLDOWN = "cooldown"
    DRY_RUN = "dry_run"
    UNREADABLE = "unreadable"
    FLAPPING = "flapping"


class EvictionResult(str, Enum):
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
class Rules:
    confirm_seconds: float = 120.0
    budget: Budget = field(default_factory=lambda: Budget(count=1))
    storm_fraction: float = 0.5
    cooldown_seconds: float = 300.0
    evict_after_seconds: float = 900.0
    delete_grace_seconds: float = 300.0
    dry_run: bool = False
    retry_base_seconds: float = 15.0  # first eviction retry after a 429; doubles up to 16x
    storm_min_pods: int = 2  # one leaky pod is a bad pod, never evidence of a bad release


@dataclass
class _Track:
    leak_since: float | None = None
    alert_at: float | None = None  # an Alertmanager notification, consumed by the next decision
    reported: BlockReason | None = None  # the block already reported for the current candidacy
    first_seen_quarantined: float | None = None
    evict_attempts: int = 0
    next_evict_at: float = 0.0
    evicted: bool = False
    deleted: bool = False


@dataclass
class Decider:
    rules: Rules
    _tracks: dict[PodKey, _Track] = field(default_factory=dict)
    _last_quarantine_at: float | None = None  # the newest quarantine whose patch went through
    # Quarantined by us, label not seen yet: when (a failed patch drops its entry and its cooldown).
    _pending: dict[PodKey, float] = field(default_factory=dict)

    def alert(self, key: PodKey, now: float) -> None:
        """An Alertmanager notification stands in for the confirmation window at the next decision:
        the pod is a candidate then if its gauge reads 1 (a reading of 0 drops the alert)."""
        self._tracks.setdefault(key, _Track()).alert_at = now

    def decide(self, now: float, pods: Iterable[PodView], readings: Mapping[PodKey, Reading]) -> Decision:
        pods = list(pods)
        keys = {pod.key for pod in pods}
        for gone in set(self._tracks) - keys:
            del self._tracks[gone]
        unlabelled = {pod.key for pod in pods if not pod.quarantined}
        for key in [k for k in self._pending if k not in unlabelled]:  # the watch caught up, or it is gone
            self._confirmed(self._pending.pop(key))

        blocked: list[Blocked] = []
        actions: list[Action] = []
        serving = [p for p in pods if not p.quarantined and not p.terminating and p.key not in self._pending]
        in_quarantine = sum(1 for p in pods if (p.quarantined and not p.terminating) or p.key in self._pending)

        # The cooldown survives a restart through the quarantined pods' own annotations.
        annotated = [p.quarantined_at for p in pods if p.quarantined and p.quarantined_at is not None]
        last = max([t for t in [self._last_quarantine_at, *self._pending.values(), *annotated] if t is not None],
                   default=None)

        # An alert is for serving pods only: one for a pod in quarantine (or on its way out) is dropped,
        # so that it cannot count if the pod is ever put back into service.
        for key in keys - {p.key for p in serving}:
            if key in self._tracks:
                self._tracks[key].alert_at = None

        candidates: list[tuple[float, PodKey, Source]] = []
        leaky = 0
        for pod in serving:
            track = self._tracks.setdefault(pod.key, _Track())
            reading = readings.get(pod.key)
            alerted = track.alert_at is not None
            track.alert_at = None
            if reading is None or not reading.readable:
                if track.leak_since is not None or alerted:
                    blocked.append(Blocked(pod.key, BlockReason.UNREADABLE,
                                           f"metrics cannot be read: {reading.error if reading else 'not scraped'}"))
                track.leak_since = None
                track.reported = None
                continue
            if reading.leak:
                leaky += 1
                if track.leak_since is None:
                    track.leak_since = now
            elif track.leak_since is not None:
                held = now - track.leak_since
                if held < self.rules.confirm_seconds:
                    # Back to 0 before the window was over: not a confirmed leak. (A confirmed pod
                    # that was blocked and has recovered since is simply no candidate any more.)
                    blocked.append(Blocked(pod.key, BlockReason.FLAPPING,
                                           f"leak gauge fell back to 0 after {held:.0f}s "
                                           f"(confirmation needs {self.rules.confirm_seconds:.0f}s)"))
                track.leak_since = None
                track.reported = None
            if alerted and reading.leak:
                # The alert stands in for the confirmation window, not for the reading: a pod whose
                # gauge reads 0 now has recovered (or the alert is stale), and the alert is dropped.
                assert track.leak_since is not None
                candidates.append((track.leak_since, pod.key, Source.ALERTMANAGER))
            elif track.leak_since is not None and now - track.leak_since >= self.rules.confirm_seconds:
                candidates.append((track.leak_since, pod.key, Source.SCRAPE))
            else:
                track.reported = None

        storm = leaky >= self.rules.storm_min_pods and leaky >= self.rules.storm_fraction * len(serving)
        limit = self.rules.budget.limit(len(pods))
        for leak_since, key, source in sorted(candidates):
            track = self._tracks[key]
            reason: BlockReason | None = None
            if storm:
                reason, detail = BlockReason.STORM, (
                    f"{leaky} of {len(serving)} serving pods look leaky at once: a bad release, not a bad pod")
            elif in_quarantine >= limit:
                reason, detail = BlockReason.BUDGET, (
                    f"{in_quarantine} pod(s) in quarantine, budget {self.rules.budget} allows {limit}")
            elif last is not None and now - last < self.rules.cooldown_seconds:
                reason, detail = BlockReason.COOLDOWN, (
                    f"last quarantine {now - last:.0f}s ago, cooldown {self.rules.cooldown_seconds:.0f}s")
            elif self.rules.dry_run:
                # Counted within this decision only, so that dry-run shows what one round would do.
                in_quarantine += 1
                reason, detail = BlockReason.DRY_RUN, f"dry run: would quarantine ({source.value})"
            if reason is not None:
                if track.reported != reason:
                    track.reported = reason
                    blocked.append(Blocked(key, reason, detail))
                continue
            actions.append(Quarantine(key, source, leak_since))
            in_quarantine += 1
            last = now
            self._pending[key] = now
            track.reported = None

        for pod in pods:
            if pod.quarantined and not pod.terminating and pod.key not in self._pending:
                action = self._eviction(now, pod, readings.get(pod.key), blocked)
                if action is not None:
                    actions.append(action)
        return Decision(actions, blocked, storm, leaky, len(serving))

    def _eviction(self, now: float, pod: PodView, reading: Reading | None, blocked: list[Blocked]) -> Action | None:
        track = self._tracks.setdefault(pod.key, _Track())
        if track.deleted:
            return None
        if track.first_seen_quarantined is None:
            track.first_seen_quarantined = now
        deadline = self._deadline(pod, track.first_seen_quarantined)
        action: Action | None = None
        if now >= deadline + self.rules.delete_grace_seconds:
            action = Delete(pod.key, f"still present {now - deadline:.0f}s after its evict-after deadline")
        elif track.evicted or now < track.next_evict_at:
            return None
        elif reading is not None and reading.sessions is not None and reading.sessions <= 0:
            action = Evict(pod.key, "no sessions left")
        elif now >= deadline:
            action = Evict(pod.key, "evict-after deadline passed")
        if action is not None and self.rules.dry_run:
            if track.reported != BlockReason.DRY_RUN:
                track.reported = BlockReason.DRY_RUN
                blocked.append(Blocked(pod.key, BlockReason.DRY_RUN, f"dry run: would {type(action).__name__.lower()}"))
            return None
        return action

    def _deadline(self, pod: PodView, first_seen: float) -> float:
        if pod.evict_after is not None:
            return pod.evict_after
        # Quarantined by hand (label only): count from the annotation, or from when we saw it.
        start = pod.quarantined_at if pod.quarantined_at is not None else first_seen
        return start + self.rules.evict_after_seconds

    def quarantine_failed(self, key: PodKey) -> None:
        """The patch did not happen: the cooldown must not start, the pod stays a candidate."""
        self._pending.pop(key, None)

    def _confirmed(self, at: float) -> None:
        if self._last_quarantine_at is None or at > self._last_quarantine_at:
            self._last_quarantine_at = at

    def eviction_done(self, key: PodKey, now: float, result: EvictionResult) -> None:
        track = self._tracks.setdefault(key, _Track())
        if result is EvictionResult.EVICTED:
            track.evicted = True
        elif result is EvictionResult.DELETED:
            track.deleted = True
        else:
            track.evict_attempts += 1
            backoff = self.rules.retry_base_seconds * 2 ** min(track.evict_attempts - 1, 4)
            track.next_evict_at = now + backoff

