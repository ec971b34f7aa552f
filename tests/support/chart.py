"""Render charts/media-service with the real helm binary."""

from __future__ import annotations

import functools
import json
import subprocess
import tempfile
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from tests.support.prometheus import REPO, require_tool

CHART = REPO / "charts" / "media-service"
RELEASE = "media"
NAMESPACE = "media"

#: Every optional feature on, with the values people set first.
ALL_ON: dict[str, Any] = {
    "hostNetwork": True,
    "iceMux": {"enabled": True},
    "ice": {"servers": [{"urls": ["stun:stun.example.org:3478"]}]},
    "autoscaling": {"enabled": True},
    "networkPolicy": {"enabled": True},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "alerts": {"enabled": True, "labels": {"release": "prometheus"}},
    "dashboard": {"enabled": True},
    "operator": {
        "serviceMonitor": {"enabled": True},
        "rbac": {"clusterWide": True},
        "watchNamespaces": ["media", "media-canary"],
    },
}


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with a repeated key. PyYAML, helm and kubectl keep the last
    value silently; kustomize, Flux, kubeconform and server-side strict field validation reject the
    manifest, so the chart must never render one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<` may repeat; flatten_mapping resolves it
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


def load_all(text: str) -> list[dict[str, Any]]:
    """The non-empty documents of rendered manifests, loaded strictly."""
    return [doc for doc in yaml.load_all(text, Loader=StrictLoader) if doc]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([require_tool("helm"), *args], capture_output=True, text=True, timeout=120, check=False)
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stderr}"
    return result


def values_file(values: dict[str, Any], directory: Path) -> Path:
    path = directory / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def template(values: dict[str, Any] | None = None, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as tmp:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra]
        if values:
            args += ["--values", str(values_file(values, Path(tmp)))]
        return helm(*args, check=check)


@functools.lru_cache(maxsize=32)
def _render(values_json: str, extra: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    text = template(json.loads(values_json), *extra).stdout
    return tuple(load_all(text))


def render(values: dict[str, Any] | None = None, *extra: str) -> list[dict[str, Any]]:
    """The rendered objects (a fresh copy, callers may change it)."""
    return json.loads(json.dumps(_render(json.dumps(values or {}, sort_keys=True), extra)))


def objects(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    found = [
        d
        for d in objects(docs, kind)
        if component is None or d["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, f"expected one {kind} ({component}), got {[d['metadata']['name'] for d in found]}"
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def notes(values: dict[str, Any] | None, tmp_path: Any) -> str:
    args = ["install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"]
    if values:
        args += ["--values", str(values_file(values, tmp_path))]
    out = helm(*args).stdout
    assert "NOTES:" in out
    return out.split("NOTES:", 1)[1]
