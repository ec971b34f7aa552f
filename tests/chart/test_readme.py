"""The chart README: its values table matches values.yaml's comments, and every value is documented."""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.support.chart import CHART
from tests.support.tools import REPO
from tests.support.values_doc import BEGIN, END, documented_keys, table

README = CHART / "README.md"


def leaves(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        return [leaf for key, child in node.items() for leaf in leaves(child, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


def test_values_table_is_in_sync() -> None:
    text = README.read_text()
    section = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert section == table(), "run `python -m tests.support.values_doc --write`"


def test_every_value_is_documented() -> None:
    documented = {key for key, _ in documented_keys((CHART / "values.yaml").read_text())}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    undocumented = [
        leaf for leaf in leaves(values) if not any(leaf == key or leaf.startswith(key + ".") for key in documented)
    ]
    assert undocumented == []


def test_table_generator_sees_a_new_comment() -> None:
    text = "a:\n  # -- The b.\n  b: 1\n  # -- The c,\n  # on two lines.\n  c: [x]\n"
    assert documented_keys(text) == [("a.b", "The b."), ("a.c", "The c, on two lines.")]


def test_readme_shows_install_with_the_values_people_change_first() -> None:
    text = README.read_text()
    assert "helm install media charts/media-service" in text
    for value in (
        "image.repository",
        "image.tag",
        "ice.existingSecret",
        "hostNetwork",
        "metrics.serviceMonitor.labels",
        "alerts.labels",
        "operator.maxQuarantined",
        "redis.url",
        "redis.existingSecret",
    ):
        assert value in text.split("## WebRTC reachability")[0], value


def test_relative_links_stay_in_the_repository() -> None:
    """The README is read in the repository: no link to a file outside it, or to none."""
    targets = re.findall(r"\]\((?!https?:|#)([^)#]+)", README.read_text())
    assert "../../docs/architecture.md" in targets
    for target in targets:
        path = (README.parent / target).resolve()
        assert path.is_file(), target
        assert path.is_relative_to(REPO), target


def test_readme_says_what_a_single_redis_means_and_how_to_go_ha() -> None:
    """The chart's failure message sends people to this section; it must exist and say the costs."""
    text = README.read_text()
    section = " ".join(text.split("## Replicas and Redis", 1)[1].split("\n## ", 1)[0].split())
    for words in (
        "single point of failure for the traffic between media pods only",
        "Media, sessions and delivery within a pod go on",
        "### An HA Redis",
        "Sentinel",
        "IPv6",
        "brackets",
    ):
        assert words in section, words
