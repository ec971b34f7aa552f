"""The label and annotation contract with the chart (DESIGN.md), and the pod view built from it."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from media_common.contract import EVICT_AFTER, POOL_LABEL, POOL_QUARANTINED, QUARANTINE_REASON, QUARANTINED_AT
from media_operator.model import PodView


def rfc3339(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(int(epoch), tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: Any) -> float | None:
    """Epoch seconds, or None for a missing or malformed value (treated as absent, never fatal)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(text)  # 3.11 reads "Z" and fractions
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


def matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_view(body: Mapping[str, Any]) -> PodView:
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    return PodView(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid"),
        ip=(body.get("status") or {}).get("podIP") or None,
        quarantined=labels.get(POOL_LABEL) == POOL_QUARANTINED,
        quarantined_at=parse_rfc3339(annotations.get(QUARANTINED_AT)),
        evict_after=parse_rfc3339(annotations.get(EVICT_AFTER)),
        terminating=bool(meta.get("deletionTimestamp")),
    )


def quarantine_patch(now: float, evict_after_seconds: float, reason: str) -> dict[str, Any]:
    """The patch that takes a pod out of the Service and its ReplicaSet, and records why."""
    return {
        "metadata": {
            "labels": {POOL_LABEL: POOL_QUARANTINED},
            "annotations": {
                QUARANTINED_AT: rfc3339(now),
                QUARANTINE_REASON: reason[:1000],
                EVICT_AFTER: rfc3339(now + evict_after_seconds),
            },
        }
    }
