"""Operator settings: each one a ``MEDIA_OPERATOR_*`` environment variable and a flag, declared
once here on the shared foundation (``media_common.settings``): the flag wins over the variable,
the variable over the default, and an invalid value stops start-up with one line naming it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from media_common import settings as common
from media_common.contract import LEAK_ALERT, POOL_LABEL
from media_common.logs import LEVELS
from media_common.settings import SettingsError, integer, number, setting
from media_operator.model import Budget, Rules

DEFAULT_SELECTOR = {"app.kubernetes.io/name": "media-service", "app.kubernetes.io/component": "media"}
#: Upper bound of counts and durations: the chart's schema sets none, so only nonsense is refused.
MAX = 1_000_000_000
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

__all__ = ["Settings", "SettingsError", "load"]


def parse_selector(raw: str) -> dict[str, str]:
    """key=value,... (equality only)"""
    labels: dict[str, str] = {}
    for part in common.csv(raw):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip().removeprefix("=")  # accept k==v as well
        if not sep or not key or "!" in key:
            raise ValueError(f"expected equality selectors (key=value), got {part!r}")
        if key == POOL_LABEL:
            raise ValueError(
                f"must not select on {POOL_LABEL}: quarantined pods would drop out of scope and out of the budget"
            )
        labels[key] = value
    if not labels:
        raise ValueError("expected at least one key=value")
    return labels


def parse_namespaces(raw: str) -> tuple[str, ...]:
    """comma-separated namespace names; empty: cluster-wide"""
    names = common.csv(raw)
    for name in names:
        # Exact names only: globs would need namespace scanning (a cluster-wide list permission).
        if not _DNS_LABEL.fullmatch(name):
            raise ValueError(f"expected namespace names, got {name!r} (globs are not supported)")
    return names


def parse_budget(raw: str) -> Budget:
    """a count, or a percentage of the matching pods (10%)"""
    try:
        return Budget.parse(raw)
    except ValueError:
        raise ValueError("expected a count (0 or more) or a percentage from 0% to 100%") from None


def _env(name: str) -> str:
    return "MEDIA_OPERATOR_" + name


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = setting(_env("NAMESPACES"), (), parse_namespaces, "namespaces to watch")
    selector: Mapping[str, str] = setting(
        _env("SELECTOR"), DEFAULT_SELECTOR, parse_selector, "label selector of media pods"
    )
    pod_admin_port: int = setting(
        _env("POD_ADMIN_PORT"), 9090, integer(1, 65535), "media pods' admin port (/metrics, /debug/tasks, /admin/drain)"
    )
    scrape_interval: float = setting(
        _env("SCRAPE_INTERVAL"), 15.0, number(0, MAX, above=True), "seconds between scrape-and-decide rounds"
    )
    scrape_timeout: float = setting(
        _env("SCRAPE_TIMEOUT"),
        3.0,
        number(0, MAX, above=True),
        "seconds one pod scrape may take (under twice the interval)",
    )
    scrape_concurrency: int = setting(_env("SCRAPE_CONCURRENCY"), 50, integer(1, MAX), "pods scraped at once")
    confirm_seconds: float = setting(
        _env("CONFIRM_SECONDS"), 120.0, number(0, MAX), "the leak gauge must stay 1 this long"
    )
    max_quarantined: Budget = setting(
        _env("MAX_QUARANTINED"), Budget(count=1), parse_budget, "pods in quarantine at once"
    )
    storm_fraction: float = setting(
        _env("STORM_FRACTION"), 0.5, number(0, 1, above=True), "share of serving pods looking leaky that means a storm"
    )
    cooldown_seconds: float = setting(
        _env("COOLDOWN_SECONDS"), 300.0, number(0, MAX), "seconds between two quarantines"
    )
    evict_after_seconds: float = setting(
        _env("EVICT_AFTER_SECONDS"), 900.0, number(0, MAX), "a quarantined pod is evicted after this at the latest"
    )
    delete_grace_seconds: float = setting(
        _env("DELETE_GRACE_SECONDS"), 300.0, number(0, MAX), "deletion (last resort) after evict-after + this"
    )
    dry_run: bool = setting(
        _env("DRY_RUN"), False, common.boolean, "decide and record Events and metrics, change nothing"
    )
    http_host: str = setting(_env("HTTP_HOST"), "0.0.0.0", common.host, "address of the operator's HTTP server")
    http_port: int = setting(_env("HTTP_PORT"), 8081, integer(1, 65535), "port of /metrics, /healthz and /alertmanager")
    webhook_token: str | None = setting(
        _env("WEBHOOK_TOKEN"), None, common.optional_text, "bearer token of POST /alertmanager (none: endpoint off)"
    )
    webhook_token_file: str | None = setting(
        _env("WEBHOOK_TOKEN_FILE"), None, common.optional_text, "file holding the bearer token (wins over the variable)"
    )
    alert_names: tuple[str, ...] = setting(
        _env("ALERT_NAMES"), (LEAK_ALERT,), common.csv, "alert names /alertmanager acts on"
    )
    log_format: str = setting(
        _env("LOG_FORMAT"), "auto", common.choice("auto", "json", "text"), "auto: text on a terminal, JSON otherwise"
    )
    log_level: str = setting(_env("LOG_LEVEL"), "info", common.choice(*LEVELS), "log level")

    def __post_init__(self) -> None:
        if self.scrape_timeout >= self.scrape_interval * 2:
            raise SettingsError(f"{_env('SCRAPE_TIMEOUT')}: must be shorter than twice the scrape interval")

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    def rules(self) -> Rules:
        """The decision logic's share of the settings."""
        return Rules(
            confirm_seconds=self.confirm_seconds,
            budget=self.max_quarantined,
            storm_fraction=self.storm_fraction,
            cooldown_seconds=self.cooldown_seconds,
            evict_after_seconds=self.evict_after_seconds,
            delete_grace_seconds=self.delete_grace_seconds,
            dry_run=self.dry_run,
            retry_base_seconds=self.scrape_interval,  # a refused eviction is retried from the next round on
        )


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags and the environment; SettingsError names the bad one."""
    settings = common.load(
        Settings,
        argv,
        env,
        prog="media-operator",
        description="Quarantine media-service pods whose task-leak gauge stays up, then evict them.",
    )
    if settings.webhook_token_file:
        try:
            token = Path(settings.webhook_token_file).read_text().strip() or None
        except OSError as exc:
            raise SettingsError(
                f"invalid {_env('WEBHOOK_TOKEN_FILE')}={settings.webhook_token_file!r}: cannot read it ({exc.strerror})"
            ) from None
        settings = dataclasses.replace(settings, webhook_token=token)
    return settings
