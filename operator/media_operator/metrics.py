"""The operator's own metrics (names are a contract with the alert rules and dashboards)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from media_common.metrics import new_registry
from media_operator.model import BlockReason, EvictionResult, Source

SCRAPE_RESULTS = ("ok", "error", "unparseable")
ACTIONS = ("quarantine", "evict", "delete")


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = new_registry()
        r = self.registry
        self.pods_watched = Gauge("media_operator_pods_watched", "Media pods matching the selector", registry=r)
        self.scrapes = Counter("media_operator_scrapes", "Pod metric scrapes by result", ["result"], registry=r)
        self.quarantines = Counter(
            "media_operator_quarantines", "Pods quarantined, by what confirmed the leak", ["source"], registry=r
        )
        self.blocked = Counter(
            "media_operator_decisions_blocked", "Decisions not carried out, by reason", ["reason"], registry=r
        )
        self.evictions = Counter(
            "media_operator_evictions", "Eviction attempts of quarantined pods, by result", ["result"], registry=r
        )
        self.storm = Gauge("media_operator_storm", "1 while the storm guard holds every quarantine", registry=r)
        # Beyond the contract: a round close to the scrape interval means the fleet outgrew the settings.
        self.round_seconds = Gauge(
            "media_operator_round_duration_seconds", "Duration of the last scrape-and-decide round", registry=r
        )
        self.action_errors = Counter(
            "media_operator_action_errors",
            "Actions that failed unexpectedly (a bug, not an API refusal), by action",
            ["action"],
            registry=r,
        )
        # Pre-create every label value so that rate() and absent() work from the first scrape.
        for result in SCRAPE_RESULTS:
            self.scrapes.labels(result)
        for source in Source:
            self.quarantines.labels(source.value)
        for reason in BlockReason:
            self.blocked.labels(reason.value)
        for action in ACTIONS:
            self.action_errors.labels(action)
        for eviction in EvictionResult:
            self.evictions.labels(eviction.value)
