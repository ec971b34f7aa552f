"""The Kubernetes calls kopf does not make for the operator: patch, Event, eviction, deletion.

One client library (kubernetes_asyncio), credentials loaded the same way kopf's
``login_via_async_client`` loads them: in-cluster service account first, then KUBECONFIG.
"""

from __future__ import annotations

import datetime
import os
import socket
import uuid
from types import TracebackType
from typing import Any, Self

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import ApiException

from media_operator.model import EvictionResult, PodKey, PodView

COMPONENT = "media-operator"
REQUEST_TIMEOUT = 10.0  # seconds; one slow API call must not stall the round
#: What a call to the API server can fail with: an error status, the connection, the timeout.
KUBE_ERRORS = (ApiException, aiohttp.ClientError, TimeoutError)


async def load_configuration() -> client.Configuration:
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        await config.load_kube_config(client_configuration=configuration)
    return configuration


class Kube:
    def __init__(self, configuration: client.Configuration) -> None:
        self._api_client = client.ApiClient(configuration=configuration)
        self._core = client.CoreV1Api(self._api_client)
        self._instance = os.environ.get("HOSTNAME") or socket.gethostname()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._api_client.close()

    async def patch_pod(self, key: PodKey, patch: dict[str, Any]) -> None:
        namespace, name = key
        await self._core.patch_namespaced_pod(name, namespace, patch, _request_timeout=REQUEST_TIMEOUT)

    async def post_event(self, pod: PodView, type_: str, reason: str, message: str) -> None:
        now = datetime.datetime.now(tz=datetime.UTC).replace(microsecond=0)
        body = client.CoreV1Event(
            api_version="v1",
            kind="Event",
            metadata=client.V1ObjectMeta(name=f"{pod.name}.{uuid.uuid4().hex[:16]}", namespace=pod.namespace),
            involved_object=client.V1ObjectReference(
                api_version="v1", kind="Pod", namespace=pod.namespace, name=pod.name, uid=pod.uid
            ),
            type=type_,
            reason=reason,
            message=message[:1024],
            source=client.V1EventSource(component=COMPONENT),
            reporting_component=COMPONENT,
            reporting_instance=self._instance,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        await self._core.create_namespaced_event(pod.namespace, body, _request_timeout=REQUEST_TIMEOUT)

    async def evict(self, key: PodKey) -> EvictionResult:
        namespace, name = key
        body = client.V1Eviction(
            api_version="policy/v1", kind="Eviction", metadata=client.V1ObjectMeta(name=name, namespace=namespace)
        )
        try:
            await self._core.create_namespaced_pod_eviction(name, namespace, body, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 429:  # a PodDisruptionBudget refuses it for now
                return EvictionResult.RETRY
            if exc.status == 404:  # gone already: what the eviction wanted
                return EvictionResult.EVICTED
            raise
        return EvictionResult.EVICTED

    async def delete(self, key: PodKey) -> EvictionResult:
        namespace, name = key
        try:
            await self._core.delete_namespaced_pod(name, namespace, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status != 404:
                raise
        return EvictionResult.DELETED
