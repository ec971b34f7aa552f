"""Operator settings: every one is an environment variable ``MEDIA_OPERATOR_*`` and a flag.

The flag wins over the variable, the variable over the default. Invalid values stop start-up with
one line that names the variable.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from media_operator.labels import POOL as POOL_LABEL
from media_operator.model import Budget

PREFIX = "MEDIA_OPERATOR_"
DEFAULT_SELECTOR = "app.kubernetes.io/name=media-service,app.kubernetes.io/component=media"


class SettingsError(ValueError):
    """A setting has an invalid value; the message names the variable."""


def parse_selector(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` (equality-based only: that is what the chart's selector needs)."""
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip().removeprefix("=")  # accept k==v as well
        if not sep or not key or "!" in key:
            raise ValueError(f"only equality selectors (key=value) are supported, got {part!r}")
        if key == POOL_LABEL:
            raise ValueError(f"must not select on {POOL_LABEL}: quarantined pods would drop out of scope "
                             "and out of the budget")
        labels[key] = value
    return labels


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise ValueError("must be positive")
        return value

    return convert


def _non_negative(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        value = kind(text)
        if value < 0:
            raise ValueError("must not be negative")
        return value

    return convert


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise ValueError("must be within (0, 1]")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise ValueError("must be a TCP port (1..65535)")
    return value


def _csv(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def _namespaces(text: str) -> tuple[str, ...]:
    """Exact names only: globs would need namespace scanning (a cluster-wide list permission)."""
    names = _csv(text)
    for name in names:
        if not _DNS_LABEL.fullmatch(name):
            raise ValueError(f"{name!r} is not a namespace name (globs are not supported)")
    return names


def _log_format(text: str) -> str:
    if text not in {"json", "text"}:
        raise ValueError("must be json or text")
    return text


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()
    selector: Mapping[str, str] = field(default_factory=lambda: parse_selector(DEFAULT_SELECTOR))
    pod_admin_port: int = 9090
    scrape_interval: float = 15.0
    scrape_timeout: float = 3.0
    scrape_concurrency: int = 50
    confirm_seconds: float = 120.0
    max_quarantined: Budget = field(default_factory=lambda: Budget(count=1))
    storm_fraction: float = 0.5
    cooldown_seconds: float = 300.0
    evict_after_seconds: float = 900.0
    delete_grace_seconds: float = 300.0
    dry_run: bool = False
    http_host: str = "0.0.0.0"
    http_port: int = 8081
    webhook_token: str | None = None
    alert_names: tuple[str, ...] = ("MediaServiceGoroutineLeak",)
    log_format: str = "json"

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


@dataclass(frozen=True)
class _Option:
    name: str  # the Settings field and, upper-cased, the variable suffix
    convert: Callable[[str], Any]
    default: str
    help: str

    @property
    def env(self) -> str:
        return PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _default_log_format() -> str:
    return "text" if sys.stdout.isatty() else "json"


OPTIONS: tuple[_Option, ...] = (
    _Option("namespaces", _namespaces, "", "comma-separated namespaces to watch; empty = cluster-wide"),
    _Option("selector", parse_selector, DEFAULT_SELECTOR, "label selector of media pods (key=value,...)"),
    _Option("pod_admin_port", _port, "9090", "media pods' admin port (/metrics, /debug/tasks, /admin/drain)"),
    _Option("scrape_interval", _positive(float), "15", "seconds between scrape-and-decide rounds"),
    _Option("scrape_timeout", _positive(float), "3", "seconds one pod scrape may take (under twice the interval)"),
    _Option("scrape_concurrency", _positive(int), "50", "pods scraped at once"),
    _Option("confirm_seconds", _non_negative(float), "120", "the leak gauge must stay 1 this long"),
    _Option("max_quarantined", Budget.parse, "1", "pods in quarantine at once: a count or a percentage ('10%%')"),
    _Option("storm_fraction", _fraction, "0.5", "share of serving pods looking leaky that means a storm"),
    _Option("cooldown_seconds", _non_negative(float), "300", "seconds between two quarantines"),
    _Option("evict_after_seconds", _non_negative(float), "900", "a quarantined pod is evicted after this at the latest"),
    _Option("delete_grace_seconds", _non_negative(float), "300", "deletion (last resort) after evict-after + this"),
    _Option("dry_run", parse_bool, "false", "decide and record Events and metrics, change nothing"),
    _Option("http_host", str, "0.0.0.0", "address of the operator's HTTP server"),
    _Option("http_port", _port, "8081", "port of /metrics, /healthz and /alertmanager"),
    _Option("webhook_token", str, "", "bearer token of POST /alertmanager (no token: endpoint off)"),
    _Option("webhook_token_file", str, "", "file holding the bearer token (wins over the variable)"),
    _Option("alert_names", _csv, "MediaServiceGoroutineLeak", "alert names /alertmanager acts on"),
    _Option("log_format", _log_format, "", "json or text (default: json unless stdout is a terminal)"),
)


_EMPTY_MEANS_UNSET = {"webhook_token", "webhook_token_file", "log_format"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="media-operator",
        description="Quarantine media-service pods whose task-leak gauge stays up, then evict them.",
    )
    for option in OPTIONS:
        parser.add_argument(
            option.flag,
            dest=option.name,
            metavar="BOOL" if option.convert is parse_bool else option.name.split("_")[-1].upper(),
            default=None,  # resolved in load(): the environment must not leak into --help (the token)
            help=f"{option.help} [env {option.env}; default {option.default or 'none'!r}]",
        )
    return parser


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags and the environment; raises SettingsError naming the bad one."""
    env = os.environ if env is None else env
    flags = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    for option in OPTIONS:
        text = flags[option.name] if flags[option.name] is not None else env.get(option.env, option.default)
        try:
            unset = text == "" and option.name in _EMPTY_MEANS_UNSET
            values[option.name] = None if unset else option.convert(text)
        except ValueError as exc:
            raise SettingsError(f"{option.env} ({option.flag}): invalid value {text!r}: {exc}") from None

    token_file = values.pop("webhook_token_file")
    token = values.pop("webhook_token") or None
    if token_file:
        try:
            token = Path(token_file).read_text().strip() or None
        except OSError as exc:
            raise SettingsError(f"{PREFIX}WEBHOOK_TOKEN_FILE: cannot read {token_file!r}: {exc.strerror}") from None
    values["webhook_token"] = token
    values["log_format"] = values["log_format"] or _default_log_format()
    if not values["selector"]:
        raise SettingsError(f"{PREFIX}SELECTOR: must select at least one label")
    if values["scrape_timeout"] >= values["scrape_interval"] * 2:
        raise SettingsError(f"{PREFIX}SCRAPE_TIMEOUT: must be shorter than twice the scrape interval")
    return Settings(**values)
