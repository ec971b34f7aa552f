"""kmock's KubernetesEmulator, completed with what the operator needs and kmock 0.8 lacks.

What is added here (and documented in docs/operator.md):

- discovery entries for ``v1/namespaces`` and ``apiextensions.k8s.io/v1/customresourcedefinitions``
  (kopf waits for both before it starts its watches) and the ``pods/eviction`` subresource;
- the Eviction API: ``POST .../pods/{name}/eviction`` deletes the pod gracefully, as the real API
  server does (``tests/k8s/test_emulator_contract.py`` compares the two): the pod stays Terminating
  (watchers see ``deletionTimestamp``) until the stand-in for the kubelet lets the deletion finish
  ``termination_seconds`` later (watchers see DELETED); or it answers 429 like a PodDisruptionBudget
  does, as many times as a test asks;
- a kubeconfig pointing at the emulator, so the operator logs in the way it does on a laptop;
- the list of (verb, group, resource) the operator sent, for the RBAC check.

Requests this fixture makes itself carry kmock's own User-Agent and are not counted as the
operator's.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kmock import KubernetesEmulator, KubernetesError, ResourceInfo, Response, Server

NAMESPACE = "media"
MEDIA_LABELS = {
    "app.kubernetes.io/name": "media-service",
    "app.kubernetes.io/instance": "test",
    "app.kubernetes.io/component": "media",
    "media-service/pool": "serving",
}
#: Held by an evicted pod while "the kubelet" stops it; the fixture's own, never the operator's.
KUBELET_FINALIZER = "media-service.test/kubelet"
_EVICTION_PATH = re.compile(r"/api/v1/namespaces/[^/]+/pods/[^/]+/eviction")

#: Every (verb, api group, resource[/subresource]) any operator sent during this test session.
SESSION_CALLS: set[tuple[str, str, str]] = set()


@dataclass(frozen=True)
class Call:
    verb: str
    group: str
    resource: str  # plural, or plural/subresource
    path: str


def _verb(method: str, name: str | None, params: dict[str, str]) -> str:
    if method == "GET":
        return "watch" if params.get("watch") in ("true", "1") else ("get" if name else "list")
    return {
        "POST": "create",
        "PATCH": "patch",
        "PUT": "update",
        "DELETE": "delete" if name else "deletecollection",
    }.get(method, method.lower())


@dataclass
class Cluster:
    k8s: KubernetesEmulator
    server: Server
    refuse_evictions: int = 0  # how many evictions answer 429 before one succeeds; -1 = always
    eviction_attempts: list[tuple[float, str, int]] = field(default_factory=list)  # (time, pod, status)
    termination_seconds: float = 0.2  # an evicted pod's time in Terminating, as the kubelet stops it
    _terminations: list[asyncio.Task[None]] = field(default_factory=list)
    _names: itertools.count = field(default_factory=itertools.count)

    @property
    def url(self) -> str:
        return str(self.server.url).rstrip("/")

    def write_kubeconfig(self, path: Path) -> Path:
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "emulator",
                    "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
                    "users": [{"name": "operator", "user": {"token": "emulator-token"}}],
                    "contexts": [
                        {
                            "name": "emulator",
                            "context": {"cluster": "emulator", "user": "operator", "namespace": NAMESPACE},
                        }
                    ],
                }
            )
        )
        return path

    @staticmethod
    def pod_body(ip: str, name: str, labels: dict[str, str] | None = None, namespace: str = NAMESPACE) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "labels": dict(MEDIA_LABELS if labels is None else labels),
            },
            "spec": {"containers": [{"name": "media", "image": "media-service:test"}]},
            "status": {"phase": "Running", "podIP": ip},
        }

    def seed_pod(self, ip: str, name: str) -> str:
        """Store a pod without an API call (no watch event): for large fleets set up before the
        operator starts, which then finds them in its initial list. kmock takes ~0.1 s per POST."""
        self.k8s.objects["v1/pods", NAMESPACE, name] = self.pod_body(ip, name)
        return name

    async def add_pod(
        self, ip: str, *, name: str | None = None, labels: dict[str, str] | None = None, namespace: str = NAMESPACE
    ) -> str:
        """Create a pod through the API, as a ReplicaSet would (watchers see ADDED)."""
        name = name or f"media-{next(self._names)}"
        body = self.pod_body(ip, name, labels, namespace)
        async with self.k8s.post(f"/api/v1/namespaces/{namespace}/pods", json=body) as response:
            assert response.status in (200, 201), await response.text()
        return name

    async def _kubelet_stops(self, name: str, namespace: str) -> None:
        """What the kubelet does after a graceful deletion: stop the pod, then let the deletion finish."""
        await asyncio.sleep(self.termination_seconds)
        pod = self.pod(name, namespace)
        if pod is None:
            return
        left = [f for f in pod["metadata"].get("finalizers", []) if f != KUBELET_FINALIZER]
        async with self.k8s.patch(
            f"/api/v1/namespaces/{namespace}/pods/{name}", json={"metadata": {"finalizers": left}}
        ):
            pass

    def pod(self, name: str, namespace: str = NAMESPACE) -> dict[str, Any] | None:
        """The pod as stored now, or None once deleted."""
        try:
            obj = self.k8s.objects["v1/pods", namespace, name]
        except KeyError:
            return None
        return None if obj.deleted else dict(obj.raw)

    def events(self, name: str | None = None, reason: str | None = None) -> list[dict[str, Any]]:
        found = []
        for (resource, _, _), obj in list(self.k8s.objects.items()):
            if resource.plural != "events" or obj.deleted:
                continue
            event = dict(obj.raw)
            involved = event.get("involvedObject") or {}
            if (name is None or involved.get("name") == name) and (reason is None or event.get("reason") == reason):
                found.append(event)
        return found

    def patches(self, name: str) -> list[dict[str, Any]]:
        """The PATCH bodies the operator sent for one pod (each one is an action on it)."""
        return [
            r.data
            for r in list(self.k8s)
            if r.method == "PATCH"
            and r.name == name
            and r.resource is not None
            and r.resource.plural == "pods"
            and not _is_fixture(r.headers)
        ]

    def operator_calls(self) -> list[Call]:
        calls = []
        for request in list(self.k8s):
            if _is_fixture(request.headers) or request.resource is None or not request.resource.plural:
                continue  # the fixture's own calls; discovery (non-resource URLs every user may read)
            resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
            method = str(getattr(request.method, "value", request.method)).upper()
            verb = _verb(method, request.name, dict(request.params))
            calls.append(Call(verb, request.resource.group or "", resource, request.url.path))
        return calls

    async def _evict(self, request: Any) -> Any:
        name, namespace = request.name, request.namespace
        if self.refuse_evictions != 0:
            self.refuse_evictions -= 1 if self.refuse_evictions > 0 else 0
            self.eviction_attempts.append((time.monotonic(), name, 429))
            raise KubernetesError(
                status=429,
                reason="TooManyRequests",
                message="Cannot evict pod as it would violate the pod's disruption budget.",
                details={
                    "causes": [
                        {"reason": "DisruptionBudget", "message": "The disruption budget test needs 1 healthy pod"}
                    ]
                },
            )
        # An allowed eviction is a graceful deletion: the pod stays, Terminating, until the kubelet
        # has stopped it (a finalizer of the fixture's stands for that), as on a real API server.
        path = f"/api/v1/namespaces/{namespace}/pods/{name}"
        pod = self.pod(name, namespace)
        if pod is not None and not pod["metadata"].get("deletionTimestamp"):
            finalizers = [*pod["metadata"].get("finalizers", []), KUBELET_FINALIZER]
            async with self.k8s.patch(path, json={"metadata": {"finalizers": finalizers}}):
                pass
        async with self.k8s.delete(path) as response:
            status = response.status
        self.eviction_attempts.append((time.monotonic(), name, 201 if status == 200 else status))
        if status == 404:
            raise KubernetesError(status=404, reason="NotFound", message=f'pods "{name}" not found')
        self._terminations.append(asyncio.create_task(self._kubelet_stops(name, namespace)))
        return Response(
            status=201, payload={"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Success", "code": 201}
        )


def _is_fixture(headers: Any) -> bool:
    return str(headers.get("User-Agent", "")).startswith("kmock/")


@asynccontextmanager
async def cluster(*, operator_calls: bool = True) -> AsyncIterator[Cluster]:
    """The emulator; ``operator_calls``: whether its clients' calls count as the operator's (for
    the RBAC check), which a test that sends its own calls does not want."""
    async with KubernetesEmulator() as k8s, Server(k8s) as server:
        k8s.resources["v1/pods"] = ResourceInfo(
            namespaced=True,
            kind="Pod",
            singular="pod",
            shortnames={"po"},
            verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
            subresources={"eviction", "status"},
        )
        k8s.resources["v1/events"] = ResourceInfo(
            namespaced=True, kind="Event", singular="event", verbs={"create", "get", "list", "patch", "watch"}
        )
        k8s.resources["v1/namespaces"] = ResourceInfo(
            namespaced=False, kind="Namespace", singular="namespace", verbs={"get", "list", "watch"}
        )
        k8s.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = ResourceInfo(
            namespaced=False,
            kind="CustomResourceDefinition",
            singular="customresourcedefinition",
            verbs={"get", "list", "watch"},
        )
        state = Cluster(k8s, server)
        k8s["post", _EVICTION_PATH] << state._evict
        try:
            yield state
        finally:
            for task in state._terminations:
                task.cancel()
            await asyncio.gather(*state._terminations, return_exceptions=True)
            if operator_calls:
                SESSION_CALLS.update((c.verb, c.group, c.resource) for c in state.operator_calls())


async def eventually(check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout}s (last: {value!r})")
