"""A stand-in for the kubelet and the container runtime of one Node: the only part of Kubernetes the
k8s tests simulate (there is no container runtime on these machines).

Like a kubelet it registers its Node, and (standing in for the scheduler too) binds every pending pod
to it. For each bound pod it runs the pod's container as a real process on a loopback address of the
pod's own (127.0.0.N): ``media-service`` for the media containers and ``redis-server`` for the
bundled Redis, with the environment the pod spec gives (values, field and secret references, ``$(VAR)``
expansion) and its Secret and ConfigMap volumes written to a folder of the pod's. It reports the
pod IP, phase Running and the Ready condition from the process's readiness, and when a pod is
deleted it sends SIGTERM, waits up to the pod's grace period and then finishes the deletion, as a
kubelet does. Pods of other images (the operator, helm test pods) are bound and left pending: the
tests run the operator themselves, with the chart's service-account token.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.kube_cluster import Cluster

VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class RunningPod:
    namespace: str
    name: str
    uid: str
    ip: str
    kind: str  # media | redis | operator
    proc: subprocess.Popen[bytes]
    folder: Path
    ready_url: str | None
    ready: bool = False
    deleting_since: float | None = None
    grace: float = 30.0
    exit_code: int | None = None


@dataclass
class Kubelet:
    cluster: Cluster
    workdir: Path
    node: str = "node-1"
    first_address: int = 10
    pods: dict[str, RunningPod] = field(default_factory=dict)  # by uid
    finished: list[RunningPod] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _next_address: int = 0

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Kubelet:
        self._next_address = self.first_address
        with self.cluster.api() as api:
            node = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": self.node, "labels": {"kubernetes.io/hostname": self.node}},
            }
            response = api.post("/api/v1/nodes", json=node)
            assert response.status_code in (201, 409), response.text
            status = {
                "status": {
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "lastHeartbeatTime": _now(),
                            "lastTransitionTime": _now(),
                        }
                    ],
                    "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                    "capacity": {"cpu": "2", "memory": "24Gi", "pods": "110"},
                    "allocatable": {"cpu": "2", "memory": "24Gi", "pods": "110"},
                }
            }
            patched = api.patch(
                f"/api/v1/nodes/{self.node}/status",
                json=status,
                headers={"Content-Type": "application/merge-patch+json"},
            )
            assert patched.status_code == 200, patched.text
        self._thread = threading.Thread(target=self._run, name="kubelet-stand-in", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for pod in list(self.pods.values()):
            self._kill(pod)

    def _run(self) -> None:
        with self.cluster.api() as api:
            while not self._stop.is_set():
                try:
                    self._sync(api)
                except Exception as exc:  # a failed round is retried; the tests read the errors
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                self._stop.wait(0.2)

    # --- one round ------------------------------------------------------------------------------

    def _sync(self, api: httpx.Client) -> None:
        items = api.get("/api/v1/pods").raise_for_status().json()["items"]
        seen = set()
        for pod in items:
            meta, spec = pod["metadata"], pod["spec"]
            uid = meta["uid"]
            seen.add(uid)
            if not spec.get("nodeName"):
                if not meta.get("deletionTimestamp"):
                    self._bind(api, pod)
                continue
            if spec["nodeName"] != self.node:
                continue
            running = self.pods.get(uid)
            if meta.get("deletionTimestamp"):
                self._delete(api, pod, running)
                continue
            if running is None and pod["status"].get("phase") in (None, "Pending"):
                running = self._launch(api, pod)
            if running is not None:
                self._report(api, pod, running)
        for uid in [uid for uid in self.pods if uid not in seen]:  # gone without us: stop it
            self._kill(self.pods.pop(uid))

    def _bind(self, api: httpx.Client, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
        }
        response = api.post(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding", json=binding)
        if response.status_code not in (201, 409):
            self.errors.append(f"bind {meta['name']}: {response.status_code} {response.text[:200]}")

    # --- containers -----------------------------------------------------------------------------

    def _launch(self, api: httpx.Client, pod: dict[str, Any]) -> RunningPod | None:
        meta, spec = pod["metadata"], pod["spec"]
        (container, *_) = spec["containers"]
        image = container.get("image", "")
        kind = (
            "redis"
            if "/redis" in image or image.startswith("redis")
            else "operator"
            if "media-operator" in image
            else "media"
            if "media-service:" in image or "media-service@" in image
            else None
        )
        if kind is None:
            return None  # not ours to run (helm test pods)
        ip = f"127.0.0.{self._next_address}"
        self._next_address += 1
        folder = self.workdir / f"{meta['namespace']}-{meta['name']}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        mounts = self._volumes(api, pod, container, folder)
        env = self._environment(api, pod, container, ip, mounts)
        log = (folder / "container.log").open("wb")
        if kind == "media":
            env.update({"MEDIA_HOST": ip, "MEDIA_ADMIN_HOST": ip, "MEDIA_ICE_HOST_ADDRESSES": ip})
            argv = [sys.executable, "-m", "media_service", *container.get("args", [])]
            ready_url = f"http://{ip}:{env.get('MEDIA_ADMIN_PORT', '9090')}/ready"
        elif kind == "operator":
            # The pod's own service-account token, as the kubelet projects it: RBAC applies for real.
            account = spec.get("serviceAccountName", "default")
            token = self._token(api, meta, account)
            env["KUBECONFIG"] = str(self.cluster.kubeconfig_for(token, folder / "kubeconfig", meta["namespace"]))
            env["MEDIA_OPERATOR_HTTP_HOST"] = ip
            argv = [sys.executable, "-m", "media_operator", *container.get("args", [])]
            ready_url = f"http://{ip}:{env.get('MEDIA_OPERATOR_HTTP_PORT', '8081')}/healthz"
        else:
            args = [_remap(a, mounts) for a in container.get("args", [])]
            argv = [shutil.which("redis-server") or "redis-server", *args, "--bind", ip, "--dir", str(folder)]
            ready_url = None
        proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
        log.close()
        grace = float(spec.get("terminationGracePeriodSeconds", 30))
        running = RunningPod(
            meta["namespace"], meta["name"], meta["uid"], ip, kind, proc, folder, ready_url, grace=grace
        )
        self.pods[meta["uid"]] = running
        return running

    def _volumes(
        self, api: httpx.Client, pod: dict[str, Any], container: dict[str, Any], folder: Path
    ) -> dict[str, Path]:
        """Write the pod's Secret and ConfigMap volumes, and emptyDirs, under ``folder``; mount path → folder."""
        namespace = pod["metadata"]["namespace"]
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            target = folder / "volumes" / mount["name"]
            target.mkdir(parents=True, exist_ok=True)
            if "secret" in volume:
                data = api.get(f"/api/v1/namespaces/{namespace}/secrets/{volume['secret']['secretName']}").json()
                files = {k: base64.b64decode(v) for k, v in (data.get("data") or {}).items()}
                self._project(files, volume["secret"].get("items"), target)
            elif "configMap" in volume:
                data = api.get(f"/api/v1/namespaces/{namespace}/configmaps/{volume['configMap']['name']}").json()
                files = {k: v.encode() for k, v in (data.get("data") or {}).items()}
                self._project(files, volume["configMap"].get("items"), target)
            mounts[mount["mountPath"]] = target
        return mounts

    @staticmethod
    def _token(api: httpx.Client, meta: dict[str, Any], account: str) -> str:
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": 3600,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
            },
        }
        response = api.post(f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token", json=request)
        response.raise_for_status()
        token: str = response.json()["status"]["token"]
        return token

    @staticmethod
    def _project(files: dict[str, bytes], items: list[dict[str, str]] | None, target: Path) -> None:
        chosen = {item["path"]: files[item["key"]] for item in items} if items else files
        for path, content in chosen.items():
            (target / path).parent.mkdir(parents=True, exist_ok=True)
            (target / path).write_bytes(content)

    def _environment(
        self, api: httpx.Client, pod: dict[str, Any], container: dict[str, Any], ip: str, mounts: dict[str, Path]
    ) -> dict[str, str]:
        meta = pod["metadata"]
        env: dict[str, str] = {}
        for item in container.get("env", []):
            if "value" in item:
                value = VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), item["value"])
            else:
                source = item["valueFrom"]
                if "fieldRef" in source:
                    value = {
                        "status.podIP": ip,
                        "metadata.name": meta["name"],
                        "metadata.namespace": meta["namespace"],
                        "spec.nodeName": self.node,
                    }[source["fieldRef"]["fieldPath"]]
                elif "secretKeyRef" in source:
                    ref = source["secretKeyRef"]
                    data = api.get(f"/api/v1/namespaces/{meta['namespace']}/secrets/{ref['name']}").json()
                    value = base64.b64decode(data["data"][ref["key"]]).decode()
                else:
                    ref = source["configMapKeyRef"]
                    data = api.get(f"/api/v1/namespaces/{meta['namespace']}/configmaps/{ref['name']}").json()
                    value = data["data"][ref["key"]]
            env[item["name"]] = _remap(value, mounts)
        return env

    # --- status ---------------------------------------------------------------------------------

    def _report(self, api: httpx.Client, pod: dict[str, Any], running: RunningPod) -> None:
        code = running.proc.poll()
        if code is None and running.ready_url is not None:
            try:
                ready = httpx.get(running.ready_url, timeout=1).status_code == 200
            except httpx.HTTPError:
                ready = False
        else:
            ready = code is None and running.ready_url is None
        status = pod["status"]
        current = {c["type"]: c["status"] for c in status.get("conditions", [])}
        phase = "Running" if code is None else ("Succeeded" if code == 0 else "Failed")
        if status.get("podIP") == running.ip and status.get("phase") == phase and current.get("Ready") == str(ready):
            return
        running.ready = ready
        state = {"running": {"startedAt": _now()}} if code is None else {"terminated": {"exitCode": code}}
        body = {
            "status": {
                "phase": phase,
                "hostIP": "127.0.0.1",
                "podIP": running.ip,
                "podIPs": [{"ip": running.ip}],
                "startTime": status.get("startTime") or _now(),
                "conditions": [
                    {"type": t, "status": str(v), "lastTransitionTime": _now()}
                    for t, v in (
                        ("PodScheduled", True),
                        ("Initialized", True),
                        ("ContainersReady", ready),
                        ("Ready", ready),
                    )
                ],
                "containerStatuses": [
                    {
                        "name": c["name"],
                        "image": c.get("image", ""),
                        "imageID": "",
                        "ready": ready,
                        "restartCount": 0,
                        "started": code is None,
                        "state": state,
                    }
                    for c in pod["spec"]["containers"]
                ],
            }
        }
        response = api.patch(
            f"/api/v1/namespaces/{running.namespace}/pods/{running.name}/status",
            json=body,
            headers={"Content-Type": "application/merge-patch+json"},
        )
        if response.status_code != 200:
            self.errors.append(f"status {running.name}: {response.status_code} {response.text[:300]}")

    def _delete(self, api: httpx.Client, pod: dict[str, Any], running: RunningPod | None) -> None:
        """SIGTERM, up to the grace period, SIGKILL; then the deletion is finished (grace 0)."""
        meta = pod["metadata"]
        if running is not None:
            if running.deleting_since is None:
                running.deleting_since = time.monotonic()
                grace = meta.get("deletionGracePeriodSeconds")
                running.grace = float(grace) if grace is not None else running.grace
                with contextlib.suppress(ProcessLookupError):
                    running.proc.send_signal(signal.SIGTERM)
            if running.proc.poll() is None:
                if time.monotonic() - running.deleting_since < running.grace:
                    return
                running.proc.kill()
                running.proc.wait(10)
            running.exit_code = running.proc.returncode
            self.finished.append(self.pods.pop(meta["uid"]))
        api.request(
            "DELETE",
            f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
            json={
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": meta["uid"]},
            },
        )

    def _kill(self, running: RunningPod) -> None:
        if running.proc.poll() is None:
            running.proc.send_signal(signal.SIGTERM)
            try:
                running.proc.wait(10)
            except subprocess.TimeoutExpired:
                running.proc.kill()
                running.proc.wait(10)

    def running(self, namespace: str, kind: str = "media") -> list[RunningPod]:
        return [p for p in self.pods.values() if p.namespace == namespace and p.kind == kind]


def _remap(value: str, mounts: dict[str, Path]) -> str:
    """A path under a mount point, moved to where the stand-in wrote that volume."""
    for mount_path, folder in sorted(mounts.items(), key=lambda item: -len(item[0])):
        if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
            return str(folder) + value[len(mount_path.rstrip("/")) :]
    return value
