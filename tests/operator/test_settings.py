"""Settings: environment variables, flags that win over them, one clear line on a bad value."""

from __future__ import annotations

import subprocess
import sys

import pytest

from media_common.settings import fields, flag
from media_operator.model import Budget
from media_operator.settings import Settings, SettingsError, load


def test_defaults_match_the_contract():
    s = load([], env={})
    assert s.namespaces == () and s.clusterwide
    assert dict(s.selector) == {"app.kubernetes.io/name": "media-service", "app.kubernetes.io/component": "media"}
    assert (s.pod_admin_port, s.scrape_interval, s.scrape_timeout, s.scrape_concurrency) == (9090, 15, 3, 50)
    assert (s.confirm_seconds, s.max_quarantined, s.storm_fraction) == (120, Budget(count=1), 0.5)
    assert (s.cooldown_seconds, s.evict_after_seconds, s.delete_grace_seconds) == (300, 900, 300)
    assert (s.dry_run, s.http_host, s.http_port, s.webhook_token) == (False, "0.0.0.0", 8081, None)
    assert s.alert_names == ("MediaServiceGoroutineLeak",)


def test_environment_and_flags():
    env = {
        "MEDIA_OPERATOR_NAMESPACES": "a, b",
        "MEDIA_OPERATOR_MAX_QUARANTINED": "10%",
        "MEDIA_OPERATOR_DRY_RUN": "true",
        "MEDIA_OPERATOR_WEBHOOK_TOKEN": "from-env",
        "MEDIA_OPERATOR_LOG_FORMAT": "text",
    }
    s = load(["--scrape-interval", "2", "--max-quarantined", "3"], env=env)
    assert s.namespaces == ("a", "b") and not s.clusterwide
    assert s.max_quarantined == Budget(count=3)  # the flag wins
    assert s.dry_run and s.scrape_interval == 2 and s.webhook_token == "from-env" and s.log_format == "text"


def test_token_file_wins(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    s = load([], env={"MEDIA_OPERATOR_WEBHOOK_TOKEN": "x", "MEDIA_OPERATOR_WEBHOOK_TOKEN_FILE": str(token)})
    assert s.webhook_token == "s3cret"
    with pytest.raises(SettingsError, match="MEDIA_OPERATOR_WEBHOOK_TOKEN_FILE"):
        load([], env={"MEDIA_OPERATOR_WEBHOOK_TOKEN_FILE": str(tmp_path / "missing")})


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("MEDIA_OPERATOR_MAX_QUARANTINED", "lots"),
        ("MEDIA_OPERATOR_MAX_QUARANTINED", "120%"),
        ("MEDIA_OPERATOR_STORM_FRACTION", "0"),
        ("MEDIA_OPERATOR_SCRAPE_INTERVAL", "-1"),
        ("MEDIA_OPERATOR_POD_ADMIN_PORT", "70000"),
        ("MEDIA_OPERATOR_DRY_RUN", "maybe"),
        ("MEDIA_OPERATOR_SELECTOR", "app!=x"),
        ("MEDIA_OPERATOR_LOG_FORMAT", "xml"),
        ("MEDIA_OPERATOR_NAMESPACES", "media-*"),
    ],
)
def test_invalid_values_name_the_variable(var, value):
    with pytest.raises(SettingsError, match=var):
        load([], env={var: value})


@pytest.mark.parametrize("selector", ["media-service/pool=serving", "app=media,media-service/pool=serving"])
def test_selector_on_the_pool_label_is_refused(selector):
    with pytest.raises(SettingsError) as raised:
        load([], env={"MEDIA_OPERATOR_SELECTOR": selector})
    message = str(raised.value)
    assert message.startswith(f"invalid MEDIA_OPERATOR_SELECTOR={selector!r}: ") and "\n" not in message
    assert "must not select on media-service/pool" in message


def test_scrape_timeout_must_be_under_twice_the_interval():
    assert load([], env={"MEDIA_OPERATOR_SCRAPE_INTERVAL": "2", "MEDIA_OPERATOR_SCRAPE_TIMEOUT": "3.9"})
    with pytest.raises(SettingsError, match=r"^MEDIA_OPERATOR_SCRAPE_TIMEOUT: must be shorter than twice"):
        load([], env={"MEDIA_OPERATOR_SCRAPE_INTERVAL": "2", "MEDIA_OPERATOR_SCRAPE_TIMEOUT": "4"})


def test_help_lists_every_setting_and_bad_values_stop_with_one_line():
    out = subprocess.run(
        [sys.executable, "-m", "media_operator", "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    for field in fields(Settings):
        assert field.metadata["env"] in out and flag(field) in out
    bad = subprocess.run(
        [sys.executable, "-m", "media_operator"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"MEDIA_OPERATOR_STORM_FRACTION": "2", "PATH": ""},
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "media-operator: invalid MEDIA_OPERATOR_STORM_FRACTION='2': expected a number above 0 to 1"
    ]
