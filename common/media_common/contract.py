"""Names shared by the service, the operator, the chart and the alert rules (docs/metrics.md,
docs/operator.md). A rename here is a contract change: every consumer changes with it, and
CHANGELOG.md says so."""

from __future__ import annotations

# The service's metrics that the operator reads from each pod's /metrics.
LEAK_GAUGE = "media_potential_goroutine_leak"
SESSIONS_GAUGE = "media_sessions_active"
#: Figures quoted in the quarantine Event when the pod exposes them.
LEAK_FIGURES = ("media_goroutine_count", "media_goroutine_baseline", "media_goroutine_unexplained", "media_threads")

# The label that moves media pods between pools: the Deployment, Service and PDB select `serving`.
POOL_LABEL = "media-service/pool"
POOL_SERVING = "serving"
POOL_QUARANTINED = "quarantined"

# Quarantine annotations.
QUARANTINED_AT = "media-service/quarantined-at"
QUARANTINE_REASON = "media-service/quarantine-reason"
EVICT_AFTER = "media-service/evict-after"

#: The alert the operator acts on by default (alerts/media-service.rules.yaml).
LEAK_ALERT = "MediaServiceGoroutineLeak"
