"""Settings: defaults from the contract, flags over variables, one clear line per bad value."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from media_service.config import Settings, SettingsError, load

DOCS = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"
#: The child imports the code under test, wherever it lives, and nothing else from this environment.
PYTHONPATH = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}
#: Settings are loaded without reading the key files: a path is enough here.
KEYS = {"MEDIA_AUTH_SECRET_FILE": "/run/secrets/media-auth"}


def test_defaults_are_the_contract() -> None:
    s = load([], KEYS)
    assert (s.host, s.port, s.admin_port, s.drain_seconds) == ("0.0.0.0", 8080, 9090, 30.0)
    assert (s.max_ice_candidates, s.ws_send_buffer, s.ws_send_timeout) == (50, 256, 1.0)
    assert (s.leak_sample_interval, s.leak_baseline_samples, s.leak_factor) == (10.0, 30, 3.0)
    assert (s.max_sessions, s.ice_servers, s.fault_injection) == (500, (), False)
    assert s.admin_bind_host == "0.0.0.0"
    assert (s.auth, s.auth_jwks_file, s.auth_audience, s.auth_issuer, s.dev) == ("token", "", "", "", False)


def test_without_keys_the_service_refuses_to_start() -> None:
    with pytest.raises(SettingsError) as error:
        load([], {})
    message = str(error.value)
    assert "\n" not in message
    for variable in ("MEDIA_AUTH_SECRET_FILE", "MEDIA_AUTH_JWKS_FILE", "MEDIA_AUTH=none", "MEDIA_DEV"):
        assert variable in message
    assert load([], {"MEDIA_AUTH": "none"}).auth == "none"
    assert load([], {"MEDIA_AUTH_JWKS_FILE": "/keys.json"}).auth_jwks_file == "/keys.json"
    assert load(["--dev"], {}).dev is True  # a yes/no flag may stand alone
    with pytest.raises(SettingsError, match="MEDIA_DEV=1 needs MEDIA_AUTH=token"):
        load(["--dev"], {"MEDIA_AUTH": "none"})


def test_flag_wins_over_variable_over_default() -> None:
    env = {"MEDIA_PORT": "9000", "MEDIA_DRAIN_SECONDS": "5", "MEDIA_FAULT_INJECTION": "yes"}
    s = load(["--port", "9001"], {**env, **KEYS})
    assert (s.port, s.drain_seconds, s.fault_injection) == (9001, 5.0, True)
    assert load(["--admin-host", "127.0.0.1"], KEYS).admin_bind_host == "127.0.0.1"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MEDIA_PORT": "http"}, "invalid MEDIA_PORT='http': expected an integer from 1 to 65535"),
        ({"MEDIA_PORT": "70000"}, "invalid MEDIA_PORT='70000': expected an integer from 1 to 65535"),
        ({"MEDIA_WS_SEND_TIMEOUT": "0"}, "invalid MEDIA_WS_SEND_TIMEOUT='0': expected a number from 0.01 to 60"),
        ({"MEDIA_LEAK_FACTOR": "nan"}, "invalid MEDIA_LEAK_FACTOR='nan': expected a number from 1 to 1000"),
        ({"MEDIA_FAULT_INJECTION": "maybe"}, "invalid MEDIA_FAULT_INJECTION='maybe': expected 1/0"),
        ({"MEDIA_LOG_FORMAT": "xml"}, "invalid MEDIA_LOG_FORMAT='xml': expected one of auto, json, text"),
        ({"MEDIA_ICE_SERVERS": "[{"}, "invalid MEDIA_ICE_SERVERS='[{': expected a JSON list of ICE servers"),
        ({"MEDIA_ICE_SERVERS": '[{"url": "stun:x"}]'}, 'expected a JSON list of objects with "urls"'),
        ({"MEDIA_ICE_SERVERS": '[{"urls": "http://x"}]'}, "expected stun:, stuns:, turn: or turns: URLs"),
        ({"MEDIA_ICE_HOST_ADDRESSES": "127.0.0.1,nope"}, "invalid MEDIA_ICE_HOST_ADDRESSES='127.0.0.1,nope'"),
        ({"MEDIA_REDIS_URL": "http://redis:6379"}, "expected a redis:// or rediss:// URL"),
        ({"MEDIA_REDIS_URL": "redis://"}, "expected a redis:// or rediss:// URL with a host"),
        ({"MEDIA_ADVERTISE_URL": "10.1.2.3:8080"}, "expected http://host:port or https://host:port"),
        ({"MEDIA_ADVERTISE_URL": "http://10.1.2.3:8080/whip"}, "expected http://host:port or https://host:port"),
        ({"MEDIA_REDIS_PASSWORD_FILE": "/nonexistent/password"}, "expected a readable file"),
    ],
)
def test_invalid_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as error:
        load([], {**env, **KEYS})
    assert str(error.value).startswith("invalid MEDIA_") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_invalid_flag_names_the_flag() -> None:
    with pytest.raises(SettingsError, match=r"^invalid --max-sessions='0': expected an integer from 1"):
        load(["--max-sessions", "0"], KEYS)


def test_ice_servers_parse() -> None:
    raw = '[{"urls": ["stun:stun.example.net"]}, {"urls": "turn:t.example.net", "username": "u", "credential": "p"}]'
    servers = load([], {"MEDIA_ICE_SERVERS": raw, **KEYS}).ice_servers
    assert servers[1] == {"urls": "turn:t.example.net", "username": "u", "credential": "p"}


def test_command_line_help_and_errors() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "media_service", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for field in dataclasses.fields(Settings):
        assert field.metadata["env"] in help_text
    bad = subprocess.run(
        [sys.executable, "-m", "media_service"],
        env={"MEDIA_MAX_SESSIONS": "-1", **PYTHONPATH},
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "media-service: invalid MEDIA_MAX_SESSIONS='-1': expected an integer from 1 to 100000"
    ]
    unreadable = subprocess.run(
        [sys.executable, "-m", "media_service"],
        env={"MEDIA_AUTH_SECRET_FILE": "/nonexistent/secret", **PYTHONPATH},
        capture_output=True,
        text=True,
    )
    assert unreadable.returncode == 2
    assert unreadable.stderr.strip().splitlines() == [
        "media-service: cannot read MEDIA_AUTH_SECRET_FILE=/nonexistent/secret: No such file or directory"
    ]


def test_docs_list_every_setting_with_its_default() -> None:
    table = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `(MEDIA_\w+)` \| `--[\w-]+` \| `([^`]*)` \|", DOCS.read_text(), re.MULTILINE)
    }
    for field in dataclasses.fields(Settings):
        default = field.default
        shown = (
            {(): "(none)", "": "(empty)", False: "0", True: "1"}.get(default, default)
            if not isinstance(default, (int, float)) or isinstance(default, bool)
            else default
        )
        assert table.get(field.metadata["env"]) == str(shown), field.metadata["env"]
    assert set(table) == {f.metadata["env"] for f in dataclasses.fields(Settings)}


def test_the_public_url_other_replicas_forward_to() -> None:
    assert load([], {**KEYS, "MEDIA_ADVERTISE_URL": "http://10.1.2.3:8080/"}).public_url == "http://10.1.2.3:8080"
    assert load([], {**KEYS, "MEDIA_HOST": "10.0.0.9", "MEDIA_PORT": "8443"}).public_url == "http://10.0.0.9:8443"
    assert load([], {**KEYS, "MEDIA_HOST": "fd00::9"}).public_url == "http://[fd00::9]:8080"
    derived = load([], KEYS).public_url  # listening on every address: the host's name stands for it
    assert derived.startswith("http://") and derived.endswith(":8080") and "0.0.0.0" not in derived
    settings = load([], {**KEYS, "MEDIA_REDIS_URL": "rediss://:secret@redis.example:6380/1"})
    assert settings.redis_url == "rediss://:secret@redis.example:6380/1"
