"""Settings: environment variables with the MEDIA_ prefix, mirrored by command-line flags.

A flag wins over its variable, the variable over the default. An invalid value stops start-up
with one line that names the variable (or flag) and says what was expected.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """One invalid setting; the message is the whole line the user sees."""


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = lo - 1
        if not lo <= value <= hi:
            raise ValueError(f"expected an integer from {lo} to {hi}")
        return value

    parse.__doc__ = f"an integer from {lo} to {hi}"
    return parse


def _float(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not lo <= value <= hi:
            raise ValueError(f"expected a number from {lo:g} to {hi:g}")
        return value

    parse.__doc__ = f"a number from {lo:g} to {hi:g}"
    return parse


def _bool(raw: str) -> bool:
    """1/0, true/false, yes/no, on/off"""
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _host(raw: str) -> str:
    """an IP address or host name"""
    if not raw.strip():
        raise ValueError("expected an IP address or host name")
    return raw.strip()


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return raw

    parse.__doc__ = "one of " + ", ".join(options)
    return parse


def _addresses(raw: str) -> tuple[str, ...]:
    """comma-separated IP addresses"""
    items = tuple(part.strip() for part in raw.split(",") if part.strip())
    for item in items:
        ipaddress.ip_address(item)  # raises ValueError naming the bad item
    return items


def _ice_servers(raw: str) -> tuple[dict[str, Any], ...]:
    """JSON list of {"urls": ..., "username"?: ..., "credential"?: ...}"""
    if not raw.strip():
        return ()
    try:
        servers = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"expected a JSON list of ICE servers ({exc.msg})") from None
    if not isinstance(servers, list) or not all(isinstance(s, dict) and "urls" in s for s in servers):
        raise ValueError('expected a JSON list of objects with "urls"')
    for server in servers:
        urls = server["urls"] if isinstance(server["urls"], list) else [server["urls"]]
        if not all(isinstance(u, str) and u.split(":", 1)[0] in ("stun", "stuns", "turn", "turns") for u in urls):
            raise ValueError("expected stun:, stuns:, turn: or turns: URLs")
    return tuple(servers)


def _setting(env: str, default: Any, parse: Callable[[str], Any], help: str) -> Any:
    return field(default=default, metadata={"env": env, "parse": parse, "help": help})


@dataclass(frozen=True)
class Settings:
    host: str = _setting("MEDIA_HOST", "0.0.0.0", _host, "public listener address (signaling, WHIP, demo page)")
    port: int = _setting("MEDIA_PORT", 8080, _int(1, 65535), "public listener port")
    admin_host: str = _setting("MEDIA_ADMIN_HOST", "", lambda raw: raw.strip(),
                               "admin listener address; empty means the same as MEDIA_HOST")
    admin_port: int = _setting("MEDIA_ADMIN_PORT", 9090, _int(1, 65535),
                               "admin listener port: health, readiness, metrics, debug, drain")
    drain_seconds: float = _setting("MEDIA_DRAIN_SECONDS", 30.0, _float(0, 86400),
                                    "drain window after SIGTERM before remaining sessions are closed")
    max_ice_candidates: int = _setting("MEDIA_MAX_ICE_CANDIDATES", 50, _int(1, 10000),
                                       "remote ICE candidates kept per session")
    ws_send_buffer: int = _setting("MEDIA_WS_SEND_BUFFER", 256, _int(1, 100000),
                                   "messages queued per WebSocket client")
    ws_send_timeout: float = _setting("MEDIA_WS_SEND_TIMEOUT", 1.0, _float(0.01, 60),
                                      "seconds a send may wait on a full queue before the client is dropped")
    ws_max_message_bytes: int = _setting("MEDIA_WS_MAX_MESSAGE_BYTES", 65536, _int(1024, 16 * 1024 * 1024),
                                         "largest WebSocket message accepted (larger: close 1009)")
    ws_rate_limit: float = _setting("MEDIA_WS_RATE_LIMIT", 50.0, _float(0.1, 100000),
                                    "messages per second per WebSocket connection (burst: twice that)")
    whip_max_body_bytes: int = _setting("MEDIA_WHIP_MAX_BODY_BYTES", 65536, _int(1024, 16 * 1024 * 1024),
                                        "largest WHIP request body accepted (larger: 413)")
    leak_sample_interval: float = _setting("MEDIA_LEAK_SAMPLE_INTERVAL", 10.0, _float(0.01, 3600),
                                           "seconds between leak samples")
    leak_baseline_samples: int = _setting("MEDIA_LEAK_BASELINE_SAMPLES", 30, _int(1, 100000),
                                          "the sample that becomes the baseline")
    leak_factor: float = _setting("MEDIA_LEAK_FACTOR", 3.0, _float(1.0, 1000),
                                  "leak when the unowned count exceeds factor x baseline")
    leak_orphan_grace: float = _setting("MEDIA_LEAK_ORPHAN_GRACE", 30.0, _float(0, 3600),
                                        "seconds a closed session's task may live before it counts as orphaned")
    max_sessions: int = _setting("MEDIA_MAX_SESSIONS", 500, _int(1, 100000),
                                 "sessions per process; beyond it new sessions are refused (retryable)")
    session_connect_timeout: float = _setting("MEDIA_SESSION_CONNECT_TIMEOUT", 30.0, _float(1, 3600),
                                              "seconds a session may take to connect before it is closed")
    session_close_timeout: float = _setting("MEDIA_SESSION_CLOSE_TIMEOUT", 5.0, _float(0.1, 300),
                                            "bound on closing one peer connection")
    ice_servers: tuple[dict[str, Any], ...] = _setting("MEDIA_ICE_SERVERS", (), _ice_servers,
                                                       "JSON list of STUN/TURN servers; none by default")
    ice_host_addresses: tuple[str, ...] = _setting(
        "MEDIA_ICE_HOST_ADDRESSES", (), _addresses,
        "addresses offered as host ICE candidates (comma list); empty: every non-loopback address")
    fault_injection: bool = _setting("MEDIA_FAULT_INJECTION", False, _bool,
                                     "enable POST/DELETE /debug/leak on the admin port (fire drills)")
    log_format: str = _setting("MEDIA_LOG_FORMAT", "auto", _choice("auto", "json", "text"),
                               "auto: text on a terminal, JSON otherwise")
    log_level: str = _setting("MEDIA_LOG_LEVEL", "info", _choice("debug", "info", "warning", "error"),
                              "log level")

    @property
    def admin_bind_host(self) -> str:
        return self.admin_host or self.host


def _fields() -> list[dataclasses.Field[Any]]:
    return list(dataclasses.fields(Settings))


def _flag(f: dataclasses.Field[Any]) -> str:
    return "--" + f.name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="media-service",
        description="WebRTC media service with bounded resources, leak detection and graceful drain.",
        epilog="Every flag mirrors the environment variable shown; a flag wins over its variable.",
    )
    for f in _fields():
        meta = f.metadata
        default = f.default if not isinstance(f.default, tuple) else ",".join(map(str, f.default)) or "none"
        kind = (meta["parse"].__doc__ or "").strip()
        parser.add_argument(
            _flag(f), dest=f.name, default=None, metavar=meta["env"],
            help=f"{meta['help']} [{kind}; default: {default}]" if kind else f"{meta['help']} [default: {default}]",
        )
    return parser


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags and environment; raises ConfigError on the first invalid value."""
    args = build_parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in _fields():
        env = f.metadata["env"]
        raw = getattr(args, f.name)
        source = _flag(f)
        if raw is None:
            raw, source = environ.get(env), env
        if raw is None:
            continue
        try:
            values[f.name] = f.metadata["parse"](raw)
        except ValueError as exc:
            raise ConfigError(f"invalid {source}={raw!r}: {exc}") from None
    return Settings(**values)
