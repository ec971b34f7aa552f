"""Make tests/chart/schemas/*.json from the npm package @kubernetes-models/prometheus-operator.

That package (1.x) ships each CRD's openAPIV3Schema as a JavaScript object literal, generated from
prometheus-operator's CRD YAML (example/prometheus-operator-crd/). This turns it into strict JSON
Schema for the chart tests:
- `metadata` points at Kubernetes' ObjectMeta in kubernetes-validate's definitions;
- OpenAPI's `nullable` becomes a `null` type;
- objects with declared properties reject unknown keys, as the API server's strict field
  validation does (a typo in a ServiceMonitor would otherwise be pruned silently).

Run once after `npm pack @kubernetes-models/prometheus-operator@1.6.3 && tar xzf *.tgz`:
    python tests/chart/schemas/from_kubernetes_models.py package/monitoring.coreos.com/v1
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
OBJECT_META = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def strict(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: strict(v) for k, v in node.items()}
        if node.get("$ref", "").startswith("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"):
            node["$ref"] = OBJECT_META
        if node.pop("nullable", False) and isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        if "properties" in node and node["properties"] and "additionalProperties" not in node:
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [strict(v) for v in node]
    return node


def extract(js_file: Path) -> dict[str, Any]:
    match = re.search(r"^const schema = (\{.*?^\});$", js_file.read_text(), re.S | re.M)
    assert match, f"no schema literal in {js_file}"
    return json.loads(match.group(1))


def main(source_dir: str) -> None:
    for kind in ("PrometheusRule", "ServiceMonitor"):
        schema = strict(extract(Path(source_dir) / f"{kind}.js"))
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        out = HERE / f"{kind.lower()}-monitoring-v1.json"
        out.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        print(out)


if __name__ == "__main__":
    main(sys.argv[1])
