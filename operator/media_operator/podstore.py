"""The media pods in scope, kept current by the watch (kopf's event handler feeds it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from media_operator.labels import matches, pod_view
from media_operator.model import PodKey, PodView


@dataclass
class PodStore:
    selector: Mapping[str, str]
    _pods: dict[PodKey, PodView] = field(default_factory=dict)

    def apply(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """One watch event. Filtering here (not in the watch) also drops a pod whose labels stop matching."""
        pod = pod_view(body)
        labels = (body.get("metadata") or {}).get("labels") or {}
        if event_type == "DELETED" or not matches(labels, self.selector):
            self._pods.pop(pod.key, None)
        else:
            self._pods[pod.key] = pod

    def get(self, key: PodKey) -> PodView | None:
        return self._pods.get(key)

    def snapshot(self) -> list[PodView]:
        return list(self._pods.values())

    def __len__(self) -> int:
        return len(self._pods)
