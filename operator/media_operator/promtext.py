"""Read the two gauges the operator needs from a pod's Prometheus text exposition."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from media_common.contract import LEAK_FIGURES, LEAK_GAUGE, SESSIONS_GAUGE
from media_operator.model import Reading

_WANTED = (LEAK_GAUGE, SESSIONS_GAUGE, *LEAK_FIGURES)


class Unparseable(ValueError):
    """The exposition is not valid text format, or lacks a usable leak gauge."""


def parse_reading(text: str) -> Reading:
    """The leak gauge (must be present and 0 or 1) and the session count (optional).

    Only the lines of the wanted metrics go through the parser: a pod's exposition is a few
    kilobytes of which the operator needs a handful of samples, for every pod in every round.
    """
    # Sample lines only (no HELP/TYPE): a third of the parser's time, and the values are the same.
    lines = [line for line in text.splitlines() if line.startswith(_WANTED)]
    values: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families("\n".join(lines) + "\n"):
            for sample in family.samples:
                if sample.name in _WANTED and not sample.labels:
                    values[sample.name] = sample.value
    except (ValueError, IndexError, KeyError) as exc:  # the parser raises any of these on bad input
        raise Unparseable(f"bad exposition: {exc}") from None
    if LEAK_GAUGE not in values:
        raise Unparseable(f"{LEAK_GAUGE} is missing")
    leak = values[LEAK_GAUGE]
    if leak not in (0.0, 1.0):
        raise Unparseable(f"{LEAK_GAUGE} is {leak}, expected 0 or 1")
    figures = {name: values[name] for name in LEAK_FIGURES if name in values}
    return Reading(leak=leak == 1.0, sessions=values.get(SESSIONS_GAUGE), figures=figures)
