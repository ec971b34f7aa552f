"""The decision logic: which pod to quarantine, evict or delete, and what blocks it.

Plain code: no Kubernetes, no HTTP, no clock of its own, and nothing imported but the model. The
control loop feeds it what it saw (pods, readings, alerts) and the time, and carries out what it
returns, then reports the outcome. Everything that must survive a restart lives in the pods' labels
and annotations (``PodView``); what is kept here is only what a restart may safely forget (how long a
gauge has been up, which blocked decision was already reported, eviction backoff).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from media_operator.model import (
    Action,
    Blocked,
    BlockReason,
    Decision,
    Delete,
    Evict,
    EvictionResult,
    PodKey,
    PodView,
    Quarantine,
    Reading,
    Rules,
    Source,
)


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


class _Candidate(NamedTuple):
    """A serving pod with a confirmed leak; candidates sort by ``leak_since``, the oldest leak first."""

    leak_since: float
    key: PodKey
    source: Source


@dataclass
class _Round:
    """What the phases of one decision share: its inputs, and what it has decided so far."""

    now: float
    pods: list[PodView]
    readings: Mapping[PodKey, Reading]
    serving: list[PodView] = field(default_factory=list)
    in_quarantine: int = 0  # this round's quarantines (and dry run's would-be ones) included
    last_quarantine: float | None = None  # for the cooldown; this round's quarantine included
    leaky: int = 0
    storm: bool = False
    actions: list[Action] = field(default_factory=list)
    blocked: list[Blocked] = field(default_factory=list)


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
        """One round, phase by phase: each phase relies on the ones before it."""
        r = _Round(now, list(pods), readings)
        self._forget_gone_pods(r.pods)
        self._settle_pending(r.pods)
        r.serving, r.in_quarantine = self._serving_and_in_quarantine(r.pods)
        r.last_quarantine = self._last_quarantine(r.pods)
        self._drop_alerts_of_non_serving(r.pods, r.serving)
        candidates = self._candidates(r)
        r.storm = self._storm(r.leaky, len(r.serving))
        for candidate in sorted(candidates):
            self._admit(r, candidate)
        self._evictions(r)
        return Decision(r.actions, r.blocked, r.storm, r.leaky, len(r.serving))

    def quarantine_failed(self, key: PodKey) -> None:
        """The patch did not happen: the cooldown must not start, the pod stays a candidate."""
        self._pending.pop(key, None)

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

    # The phases of a decision, in order.

    def _forget_gone_pods(self, pods: list[PodView]) -> None:
        """What is kept of a pod no longer in scope: nothing."""
        keys = {pod.key for pod in pods}
        for gone in set(self._tracks) - keys:
            del self._tracks[gone]

    def _settle_pending(self, pods: list[PodView]) -> None:
        """Which of our quarantines went through: the watch shows the label now, or the pod is gone.
        Their time starts the cooldown."""
        unlabelled = {pod.key for pod in pods if not pod.quarantined}
        for key in [k for k in self._pending if k not in unlabelled]:
            self._confirmed(self._pending.pop(key))

    def _serving_and_in_quarantine(self, pods: list[PodView]) -> tuple[list[PodView], int]:
        """Which pods serve (the candidates' pool), and how many count against the budget: quarantined
        and not on their way out, or quarantined by us with the label not seen yet."""
        serving = [p for p in pods if not p.quarantined and not p.terminating and p.key not in self._pending]
        in_quarantine = sum(1 for p in pods if (p.quarantined and not p.terminating) or p.key in self._pending)
        return serving, in_quarantine

    def _last_quarantine(self, pods: list[PodView]) -> float | None:
        """When the newest quarantine happened, for the cooldown. It survives a restart through the
        quarantined pods' own annotations, and what they told is kept once those pods are evicted."""
        for pod in pods:
            if pod.quarantined and pod.quarantined_at is not None:
                self._confirmed(pod.quarantined_at)
        times = [self._last_quarantine_at, *self._pending.values()]
        return max([t for t in times if t is not None], default=None)

    def _drop_alerts_of_non_serving(self, pods: list[PodView], serving: list[PodView]) -> None:
        """An alert is for serving pods only: one for a pod in quarantine (or on its way out) is
        dropped, so that it cannot count if the pod is ever put back into service."""
        for key in {p.key for p in pods} - {p.key for p in serving}:
            if key in self._tracks:
                self._tracks[key].alert_at = None

    def _candidates(self, r: _Round) -> list[_Candidate]:
        """Which serving pods have a confirmed leak; counts the leaky ones on the way."""
        candidates = []
        for pod in r.serving:
            candidate = self._confirmation(r, pod)
            if candidate is not None:
                candidates.append(candidate)
        return candidates

    def _confirmation(self, r: _Round, pod: PodView) -> _Candidate | None:
        """Whether one serving pod's leak is confirmed: its gauge held 1 for the window, or an alert
        came and it reads 1 now. A pod that cannot be read, or whose gauge fell back to 0 within the
        window, is blocked (unreadable, flapping) and starts over."""
        track = self._tracks.setdefault(pod.key, _Track())
        reading = r.readings.get(pod.key)
        alerted = track.alert_at is not None
        track.alert_at = None  # consumed by this round either way
        if reading is None or not reading.readable:
            if track.leak_since is not None or alerted:
                r.blocked.append(
                    Blocked(
                        pod.key,
                        BlockReason.UNREADABLE,
                        f"metrics cannot be read: {reading.error if reading else 'not scraped'}",
                    )
                )
            track.leak_since = None
            track.reported = None
            return None
        if reading.leak:
            r.leaky += 1
            if track.leak_since is None:
                track.leak_since = r.now
        elif track.leak_since is not None:
            held = r.now - track.leak_since
            if held < self.rules.confirm_seconds:
                # Back to 0 before the window was over: not a confirmed leak. (A confirmed pod
                # that was blocked and has recovered since is simply no candidate any more.)
                r.blocked.append(
                    Blocked(
                        pod.key,
                        BlockReason.FLAPPING,
                        f"leak gauge fell back to 0 after {held:.0f}s "
                        f"(confirmation needs {self.rules.confirm_seconds:.0f}s)",
                    )
                )
            track.leak_since = None
            track.reported = None
        if alerted and reading.leak:
            # The alert stands in for the confirmation window, not for the reading: a pod whose
            # gauge reads 0 now has recovered (or the alert is stale), and the alert is dropped.
            assert track.leak_since is not None
            return _Candidate(track.leak_since, pod.key, Source.ALERTMANAGER)
        if track.leak_since is not None and r.now - track.leak_since >= self.rules.confirm_seconds:
            return _Candidate(track.leak_since, pod.key, Source.SCRAPE)
        track.reported = None
        return None

    def _storm(self, leaky: int, serving: int) -> bool:
        """Whether so many serving pods look leaky at once that it is a bad release, not bad pods."""
        return leaky >= self.rules.storm_min_pods and leaky >= self.rules.storm_fraction * serving

    def _admit(self, r: _Round, candidate: _Candidate) -> None:
        """Whether a candidate is quarantined now; a block is reported once per candidacy."""
        track = self._tracks[candidate.key]
        blocked = self._gate(r, candidate)
        if blocked is not None:
            if track.reported != blocked.reason:
                track.reported = blocked.reason
                r.blocked.append(blocked)
            return
        r.actions.append(Quarantine(candidate.key, candidate.source, candidate.leak_since))
        r.in_quarantine += 1
        r.last_quarantine = r.now
        self._pending[candidate.key] = r.now
        track.reported = None

    def _gate(self, r: _Round, candidate: _Candidate) -> Blocked | None:
        """What blocks a candidate, the first that applies: a storm, the budget, the cooldown, dry run."""
        limit = self.rules.budget.limit(len(r.pods))
        if r.storm:
            return Blocked(
                candidate.key,
                BlockReason.STORM,
                f"{r.leaky} of {len(r.serving)} serving pods look leaky at once: a bad release, not a bad pod",
            )
        if r.in_quarantine >= limit:
            return Blocked(
                candidate.key,
                BlockReason.BUDGET,
                f"{r.in_quarantine} pod(s) in quarantine, budget {self.rules.budget} allows {limit}",
            )
        if r.last_quarantine is not None and r.now - r.last_quarantine < self.rules.cooldown_seconds:
            return Blocked(
                candidate.key,
                BlockReason.COOLDOWN,
                f"last quarantine {r.now - r.last_quarantine:.0f}s ago, cooldown {self.rules.cooldown_seconds:.0f}s",
            )
        if self.rules.dry_run:
            # Counted within this decision only, so that dry-run shows what one round would do.
            r.in_quarantine += 1
            return Blocked(candidate.key, BlockReason.DRY_RUN, f"dry run: would quarantine ({candidate.source.value})")
        return None

    def _evictions(self, r: _Round) -> None:
        """Which quarantined pods (ours once the label is seen, or quarantined by hand) go now."""
        for pod in r.pods:
            if pod.quarantined and not pod.terminating and pod.key not in self._pending:
                action = self._eviction(r.now, pod, r.readings.get(pod.key), r.blocked)
                if action is not None:
                    r.actions.append(action)

    # Helpers of the phases.

    def _eviction(self, now: float, pod: PodView, reading: Reading | None, blocked: list[Blocked]) -> Action | None:
        """Whether one quarantined pod is evicted (no sessions left, or its deadline passed) or, as a
        last resort after the grace period, deleted; with eviction backoff after a refusal."""
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

    def _confirmed(self, at: float) -> None:
        if self._last_quarantine_at is None or at > self._last_quarantine_at:
            self._last_quarantine_at = at
