"""The one control loop: scrape every pod in scope, decide, carry out, record.

No per-pod timers or daemons (kopf would add finalizers for those): a single task runs a round
every scrape interval, or at once when an Alertmanager notification arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from media_common import logs
from media_operator.decisions import Decider
from media_operator.kube import KUBE_ERRORS, Kube
from media_operator.labels import quarantine_patch, rfc3339
from media_operator.metrics import OperatorMetrics
from media_operator.model import (
    Action,
    Blocked,
    BlockReason,
    Delete,
    Evict,
    EvictionResult,
    PodKey,
    PodView,
    Quarantine,
    Reading,
    Source,
)
from media_operator.podclient import PodClient
from media_operator.podstore import PodStore
from media_operator.settings import Settings

log = logs.get("media_operator.controller")

#: Alert-driven rounds start at most this often (see Controller.run).
ALERT_COALESCE_SECONDS = 1.0

QUARANTINED_REASON = "LeakQuarantined"
BLOCKED_REASON = "LeakQuarantineBlocked"
EVICTED_REASON = "QuarantineEvicted"
DELETED_REASON = "QuarantineDeleted"


@dataclass
class RoundStats:
    finished_at: float | None = None  # monotonic


@dataclass
class Controller:
    settings: Settings
    store: PodStore
    decider: Decider
    pods: PodClient
    kube: Kube
    metrics: OperatorMetrics
    clock: Callable[[], float] = time.time
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Set once the watch has delivered the pods that existed at start-up: no decision before that,
    # or the budget, the storm guard and the cooldown would be judged on part of the fleet.
    listed: asyncio.Event = field(default_factory=asyncio.Event)
    last_round: RoundStats = field(default_factory=RoundStats)
    started_at: float = field(default_factory=time.monotonic)
    _storm: bool = False

    async def run(self) -> None:
        await self.listed.wait()
        while True:
            started = time.monotonic()
            self.wake.clear()
            try:
                await self.round()
            except Exception:  # one bad round must not end the loop; the next one starts afresh
                log.exception("round_failed")
            remaining = self.settings.scrape_interval - (time.monotonic() - started)
            if remaining > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=remaining)
                # Alerts come in bursts (one notification per alert group, Alertmanager retries):
                # every one that arrives within ALERT_COALESCE_SECONDS of the last round start is
                # served by one round, not one round (and one scrape of every pod) each.
                gap = min(ALERT_COALESCE_SECONDS, self.settings.scrape_interval) - (time.monotonic() - started)
                if gap > 0:
                    await asyncio.sleep(gap)

    def healthy(self) -> bool:
        """Alive while rounds keep finishing (a stuck loop must get the operator restarted)."""
        limit = 3 * self.settings.scrape_interval + self.settings.scrape_timeout + 30
        last = self.last_round.finished_at or self.started_at
        return time.monotonic() - last < limit

    async def round(self) -> None:
        started = time.monotonic()
        now = self.clock()
        pods = self.store.snapshot()
        self.metrics.pods_watched.set(len(pods))
        scraped = await self.pods.scrape_all((p.key, p.ip) for p in pods if not p.terminating)
        for result in scraped.values():
            self.metrics.scrapes.labels(result.result).inc()
        readings = {key: s.reading for key, s in scraped.items()}

        # The round's start time, not the decision's: rounds start every interval, so a gauge seen
        # in N consecutive rounds has been up N-1 intervals, whatever each scrape took.
        decision = self.decider.decide(now, pods, readings)
        self.metrics.storm.set(1 if decision.storm else 0)
        if decision.storm != self._storm:
            self._storm = decision.storm
            # While it holds, no pod is quarantined: a bad release, not a bad pod.
            (log.warning if decision.storm else log.info)(
                "storm_guard_on" if decision.storm else "storm_guard_off",
                leaky=decision.leaky,
                serving=decision.serving,
                fraction=self.settings.storm_fraction,
            )

        by_key = {p.key: p for p in pods}
        for blocked in decision.blocked:
            await self._record_block(by_key[blocked.key], blocked)
        for action in decision.actions:
            pod = by_key[action.key]
            try:
                await self._carry_out(pod, action, readings.get(action.key))
            except Exception:  # one failed action must not keep the round's other actions from happening
                self.metrics.action_errors.labels(type(action).__name__.lower()).inc()
                log.exception("action_failed", pod=f"{pod.namespace}/{pod.name}", action=type(action).__name__)
        elapsed = time.monotonic() - started
        self.last_round = RoundStats(time.monotonic())
        self.metrics.round_seconds.set(elapsed)
        log.debug("round_done", pods=len(pods), seconds=round(elapsed, 3), actions=len(decision.actions))

    async def _record_block(self, pod: PodView, blocked: Blocked) -> None:
        self.metrics.blocked.labels(blocked.reason.value).inc()
        log.info(
            "decision_blocked", pod=f"{pod.namespace}/{pod.name}", reason=blocked.reason.value, detail=blocked.detail
        )
        type_ = "Warning" if blocked.reason is BlockReason.STORM else "Normal"
        await self._event(pod, type_, BLOCKED_REASON, f"{blocked.reason.value}: {blocked.detail}")

    async def _carry_out(self, pod: PodView, action: Action, reading: Reading | None) -> None:
        if isinstance(action, Quarantine):
            await self._quarantine(pod, action, reading)
        elif isinstance(action, Evict | Delete):
            await self._evict(pod, action)

    async def _quarantine(self, pod: PodView, action: Quarantine, reading: Reading | None) -> None:
        patched = False
        try:
            now = self.clock()
            figures = _figures(action, reading, now)
            reason = f"media_potential_goroutine_leak=1 confirmed by {action.source.value}" + (
                f" ({figures})" if figures else ""
            )
            top = await self.pods.top_tasks(pod.ip) if pod.ip else "pod has no IP"
            await self.kube.patch_pod(pod.key, quarantine_patch(now, self.settings.evict_after_seconds, reason))
            patched = True
        except KUBE_ERRORS as exc:
            log.error("quarantine_patch_failed", pod=f"{pod.namespace}/{pod.name}", error=str(exc)[:300])
            return
        finally:
            if not patched:  # whatever went wrong: the cooldown must not start, the slot is free again
                self.decider.quarantine_failed(pod.key)
        self.metrics.quarantines.labels(action.source.value).inc()
        evict_after = rfc3339(now + self.settings.evict_after_seconds)
        await self._event(
            pod,
            "Warning",
            QUARANTINED_REASON,
            f"Quarantined (out of the Service, sessions kept): {reason}; "
            f"top task groups: {top}; evict after {evict_after}",
        )
        drained = await self.pods.drain(pod.ip) if pod.ip else False
        log.warning(
            "pod_quarantined",
            pod=f"{pod.namespace}/{pod.name}",
            source=action.source.value,
            reason=reason,
            top_tasks=top,
            drained=drained,
            evict_after=evict_after,
        )

    async def _evict(self, pod: PodView, action: Evict | Delete) -> None:
        now = self.clock()
        try:
            if isinstance(action, Delete):
                result = await self.kube.delete(pod.key)
            else:
                result = await self.kube.evict(pod.key)
        except KUBE_ERRORS as exc:
            result = EvictionResult.ERROR
            log.error("eviction_failed", pod=f"{pod.namespace}/{pod.name}", error=str(exc)[:300])
        self.decider.eviction_done(pod.key, now, result)
        self.metrics.evictions.labels(result.value).inc()
        log.info("eviction_done", pod=f"{pod.namespace}/{pod.name}", result=result.value, why=action.why)
        if result is EvictionResult.EVICTED:
            await self._event(pod, "Normal", EVICTED_REASON, f"Evicted from quarantine: {action.why}")
        elif result is EvictionResult.DELETED:
            await self._event(pod, "Warning", DELETED_REASON, f"Deleted as a last resort: {action.why}")

    async def _event(self, pod: PodView, type_: str, reason: str, message: str) -> None:
        """Best effort: an Event that cannot be posted must not undo or block the decision."""
        try:
            await self.kube.post_event(pod, type_, reason, message)
        except KUBE_ERRORS as exc:
            log.warning("event_not_posted", pod=f"{pod.namespace}/{pod.name}", reason=reason, error=str(exc)[:300])

    def alert(self, key: PodKey) -> None:
        self.decider.alert(key, self.clock())
        self.wake.set()


def _figures(action: Quarantine, reading: Reading | None, now: float) -> str:
    parts = [f"gauge held {now - action.leak_since:.0f}s"] if action.source is Source.SCRAPE else []
    if reading is not None:
        figures: Mapping[str, float] = reading.figures
        parts += [f"{name}={value:g}" for name, value in figures.items()]
        if reading.sessions is not None:
            parts.append(f"media_sessions_active={reading.sessions:g}")
    return ", ".join(parts)
