"""The chart README's values table, made from the `# --` comments of values.yaml.

    python -m tests.support.values_doc          # print the table
    python -m tests.support.values_doc --write  # rewrite it in charts/media-service/README.md

A `# -- text` comment documents the key on the next line; the default shown is that key's value.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "media-service"
BEGIN = "<!-- values-table:begin -->"
END = "<!-- values-table:end -->"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):")


def documented_keys(values_text: str) -> list[tuple[str, str]]:
    """(dotted key, description) for every key under a `# --` comment, in file order."""
    path: list[tuple[int, str]] = []
    pending: list[str] | None = None
    found = []
    for line in values_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if pending is not None and stripped.startswith("#"):
            pending.append(stripped[1:].strip())
            continue
        match = KEY.match(line)
        if match:
            indent = len(match["indent"])
            while path and path[-1][0] >= indent:
                path.pop()
            path.append((indent, match["key"]))
            if pending is not None:
                found.append((".".join(k for _, k in path), " ".join(pending)))
        if stripped and not stripped.startswith("-"):
            pending = None
    return found


def lookup(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        node = node[part]
    return node


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(values_path: Path = CHART / "values.yaml") -> str:
    text = values_path.read_text()
    values = yaml.safe_load(text)
    rows = ["| Key | Default | Description |", "|---|---|---|"]
    for key, description in documented_keys(text):
        default = json.dumps(lookup(values, key), separators=(", ", ": "))
        rows.append(f"| `{key}` | `{cell(default)}` | {cell(description)} |")
    return "\n".join(rows)


def with_table(readme: str, values_table: str) -> str:
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{values_table}\n{END}{tail}"


def main(argv: list[str]) -> None:
    if "--write" in argv:
        readme = CHART / "README.md"
        readme.write_text(with_table(readme.read_text(), table()))
    else:
        print(table())


if __name__ == "__main__":
    main(sys.argv[1:])
