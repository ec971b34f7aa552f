"""Alertmanager webhook notifications (payload version 4): validation, allow-list, dedupe.

Plain code; the HTTP layer turns ``InvalidPayload`` into 400 and everything else into 200.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from media_operator.labels import parse_rfc3339
from media_operator.model import PodKey


class InvalidPayload(ValueError):
    pass


@dataclass(frozen=True)
class Alert:
    status: str
    labels: Mapping[str, str]
    starts_at: str
    fingerprint: str

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidPayload(message)


def _str_map(value: Any, where: str) -> dict[str, str]:
    _require(isinstance(value, dict), f"{where} must be an object")
    _require(
        all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()), f"{where} must map strings to strings"
    )
    return dict(value)


def parse_notification(data: Any) -> list[Alert]:
    """The alerts of a v4 webhook payload; InvalidPayload names the first problem."""
    _require(isinstance(data, dict), "payload must be a JSON object")
    _require(data.get("version") == "4", 'unsupported payload version (expected "4")')
    _require(data.get("status") in ("firing", "resolved"), "status must be firing or resolved")
    _require(isinstance(data.get("receiver"), str), "receiver must be a string")
    _require(isinstance(data.get("alerts"), list), "alerts must be a list")
    for key in ("groupLabels", "commonLabels", "commonAnnotations"):
        if key in data:
            _str_map(data[key], key)
    alerts = []
    for index, item in enumerate(data["alerts"]):
        where = f"alerts[{index}]"
        _require(isinstance(item, dict), f"{where} must be an object")
        _require(item.get("status") in ("firing", "resolved"), f"{where}.status must be firing or resolved")
        labels = _str_map(item.get("labels"), f"{where}.labels")
        if "annotations" in item:
            _str_map(item["annotations"], f"{where}.annotations")
        starts_at = item.get("startsAt")
        _require(parse_rfc3339(starts_at) is not None, f"{where}.startsAt must be an RFC 3339 time")
        fingerprint = item.get("fingerprint")
        if fingerprint is None:  # optional in older senders: derive it from the labels, as Alertmanager does
            fingerprint = hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]
        _require(isinstance(fingerprint, str) and fingerprint != "", f"{where}.fingerprint must be a string")
        alerts.append(Alert(item["status"], labels, starts_at, fingerprint))
    return alerts


@dataclass(frozen=True)
class Triage:
    accepted: list[PodKey]
    ignored: list[tuple[str, str]]  # (alert description, why)


@dataclass
class AlertTriage:
    names: Collection[str]
    memory: int = 10_000  # (fingerprint, startsAt) pairs remembered for dedupe
    _seen: OrderedDict[tuple[str, str], None] = field(default_factory=OrderedDict)

    def triage(self, alerts: list[Alert], in_scope: Callable[[PodKey], bool]) -> Triage:
        accepted: list[PodKey] = []
        ignored: list[tuple[str, str]] = []
        for alert in alerts:
            ns, pod = alert.labels.get("namespace"), alert.labels.get("pod")
            what = f"{alert.name or '?'} {ns or '?'}/{pod or '?'}"
            identity = (alert.fingerprint, alert.starts_at)
            if alert.status != "firing":
                ignored.append((what, "resolved"))
            elif alert.name not in self.names:
                ignored.append((what, "alert name not in the allow-list"))
            elif not ns or not pod:
                ignored.append((what, "no namespace and pod labels"))
            elif not in_scope((ns, pod)):
                ignored.append((what, "pod not in scope"))
            elif identity in self._seen or (ns, pod) in accepted:
                ignored.append((what, "duplicate"))
            else:
                self._seen[identity] = None
                while len(self._seen) > self.memory:
                    self._seen.popitem(last=False)
                accepted.append((ns, pod))
        return Triage(accepted, ignored)
