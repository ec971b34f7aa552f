"""Service settings: each one a ``MEDIA_*`` environment variable and a flag, declared once here on
the shared foundation (``media_common.settings``): a flag wins over its variable, the variable over
the default, and an invalid value stops start-up with one line that names the variable (or flag).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from media_common import settings as common
from media_common.logs import LEVELS
from media_common.settings import SettingsError, boolean, choice, host, integer, number, setting

PROG = "media-service"
DESCRIPTION = (
    "WebRTC media service with bounded resources, leak detection and graceful drain. "
    "`media-service token --help`: mint an access token."
)

__all__ = ["Settings", "SettingsError", "build_parser", "load"]


def _addresses(raw: str) -> tuple[str, ...]:
    """comma-separated IP addresses"""
    items = tuple(part.strip() for part in raw.split(",") if part.strip())
    for item in items:
        ipaddress.ip_address(item)  # raises ValueError naming the bad item
    return items


def parse_announced(raw: str) -> tuple[str, int | None]:
    """``address`` or ``address:port`` (``[v6]:port``) -> (address, port or None)."""
    text = raw.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") if rest.startswith(":") else None
        if rest and port is None:
            raise ValueError(f"expected [address]:port, not {raw!r}")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, None
    address = str(ipaddress.ip_address(host))
    if port is None:
        return address, None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected a port from 1 to 65535 in {raw!r}")
    return address, int(port)


def _announced(raw: str) -> tuple[tuple[str, int | None], ...]:
    """comma-separated address or address:port ([v6]:port), at most one IPv4 and one IPv6"""
    items = tuple(parse_announced(part) for part in raw.split(",") if part.strip())
    versions = [ipaddress.ip_address(address).version for address, _ in items]
    if len(set(versions)) != len(versions):
        raise ValueError("expected at most one IPv4 and one IPv6 address")
    return items


def _origins(raw: str) -> tuple[str, ...]:
    """comma-separated origins (https://host[:port]) or *"""
    items = tuple(part.strip().rstrip("/") for part in raw.split(",") if part.strip())
    for item in items:
        parts = urlsplit(item)
        if item != "*" and (parts.scheme not in ("http", "https") or not parts.hostname or parts.path):
            raise ValueError(f"expected scheme://host[:port] or *, not {item!r}")
    return items


def _redis_url(raw: str) -> str:
    """redis:// or rediss:// URL; empty: no Redis, one process"""
    url = raw.strip()
    if url and urlsplit(url).scheme not in ("redis", "rediss"):
        raise ValueError("expected a redis:// or rediss:// URL")
    if url and not urlsplit(url).hostname:
        raise ValueError("expected a redis:// or rediss:// URL with a host")
    return url


def _readable_file(raw: str) -> str:
    """a readable file; empty: none"""
    path = raw.strip()
    if path:
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ValueError(f"expected a readable file ({exc.strerror})") from None
    return path


def _http_url(raw: str) -> str:
    """http(s)://host:port of this replica's public listener; empty: derived"""
    url = raw.strip().rstrip("/")
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
            raise ValueError("expected http://host:port or https://host:port")
    return url


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


@dataclass(frozen=True)
class Settings:
    host: str = setting("MEDIA_HOST", "0.0.0.0", host, "public listener address (signaling, WHIP, demo page)")
    port: int = setting("MEDIA_PORT", 8080, integer(1, 65535), "public listener port")
    admin_host: str = setting(
        "MEDIA_ADMIN_HOST", "", common.text, "admin listener address; empty means the same as MEDIA_HOST"
    )
    admin_port: int = setting(
        "MEDIA_ADMIN_PORT", 9090, integer(1, 65535), "admin listener port: health, readiness, metrics, debug, drain"
    )
    max_connections: int = setting(
        "MEDIA_MAX_CONNECTIONS",
        2048,
        integer(1, 1000000),
        "open connections (HTTP and WebSocket) on the public listener; more are closed at once",
    )
    max_connections_per_address: int = setting(
        "MEDIA_MAX_CONNECTIONS_PER_ADDRESS",
        64,
        integer(1, 1000000),
        "open connections from one client address (trusted proxies count only in the total)",
    )
    trusted_proxies: tuple[str, ...] = setting(
        "MEDIA_TRUSTED_PROXIES",
        (),
        _addresses,
        "addresses of proxies in front of the service (comma list): exempt from the per-address cap, which then counts "
        "their WebSocket clients by X-Forwarded-For",
    )
    request_timeout: float = setting(
        "MEDIA_REQUEST_TIMEOUT",
        10.0,
        number(0.1, 3600),
        "seconds for a whole HTTP request (headers and body, a WebSocket handshake included) to arrive",
    )
    drain_seconds: float = setting(
        "MEDIA_DRAIN_SECONDS", 30.0, number(0, 86400), "drain window after SIGTERM before remaining sessions are closed"
    )
    max_ice_candidates: int = setting(
        "MEDIA_MAX_ICE_CANDIDATES", 50, integer(1, 10000), "remote ICE candidates kept per session"
    )
    ws_send_buffer: int = setting(
        "MEDIA_WS_SEND_BUFFER", 256, integer(1, 100000), "messages queued per WebSocket client"
    )
    ws_send_buffer_bytes: int = setting(
        "MEDIA_WS_SEND_BUFFER_BYTES",
        1 << 20,
        integer(65536, 1 << 30),
        "bytes queued per WebSocket client before it must catch up within MEDIA_WS_SEND_TIMEOUT; twice that: dropped",
    )
    ws_queue_budget_bytes: int = setting(
        "MEDIA_WS_QUEUE_BUDGET_BYTES",
        128 << 20,
        integer(1 << 20, 1 << 40),
        "bytes queued for all WebSocket clients together; past it, clients that are behind are dropped",
    )
    ws_relay_rate_bytes: int = setting(
        "MEDIA_WS_RELAY_RATE_BYTES",
        1 << 20,
        integer(1024, 1 << 40),
        "bytes a second one connection may relay with 'message', counted once per recipient device",
    )
    ws_send_timeout: float = setting(
        "MEDIA_WS_SEND_TIMEOUT",
        1.0,
        number(0.01, 60),
        "seconds a send may wait on a full queue before the client is dropped",
    )
    ws_max_message_bytes: int = setting(
        "MEDIA_WS_MAX_MESSAGE_BYTES",
        65536,
        integer(1024, 16 * 1024 * 1024),
        "largest WebSocket message accepted (larger: close 1009)",
    )
    ws_rate_limit: float = setting(
        "MEDIA_WS_RATE_LIMIT",
        50.0,
        number(0.1, 100000),
        "messages per second per WebSocket connection (burst: twice that)",
    )
    whip_max_body_bytes: int = setting(
        "MEDIA_WHIP_MAX_BODY_BYTES",
        65536,
        integer(1024, 16 * 1024 * 1024),
        "largest WHIP request body accepted (larger: 413)",
    )
    leak_sample_interval: float = setting(
        "MEDIA_LEAK_SAMPLE_INTERVAL", 10.0, number(0.01, 3600), "seconds between leak samples"
    )
    leak_baseline_samples: int = setting(
        "MEDIA_LEAK_BASELINE_SAMPLES", 30, integer(1, 100000), "the sample that becomes the baseline"
    )
    leak_factor: float = setting(
        "MEDIA_LEAK_FACTOR", 3.0, number(1.0, 1000), "leak when the unexplained count exceeds factor x baseline"
    )
    leak_orphan_grace: float = setting(
        "MEDIA_LEAK_ORPHAN_GRACE",
        30.0,
        number(0, 3600),
        "seconds a closed session's task may live before it counts as orphaned",
    )
    max_sessions: int = setting(
        "MEDIA_MAX_SESSIONS",
        500,
        integer(1, 100000),
        "sessions per process; beyond it new sessions are refused (retryable)",
    )
    max_offer_bytes: int = setting(
        "MEDIA_MAX_OFFER_BYTES",
        32768,
        integer(512, 16 * 1024 * 1024),
        "largest offer SDP answered (Chromium's is about 7 KB a video section); larger: bad_request",
    )
    max_offer_sections: int = setting(
        "MEDIA_MAX_OFFER_SECTIONS", 8, integer(1, 1000), "media sections (m=) of one offer; more: bad_request"
    )
    max_offer_tracks: int = setting(
        "MEDIA_MAX_OFFER_TRACKS",
        4,
        integer(0, 1000),
        "audio/video media sections of one offer (each an OS thread with MEDIA_ECHO_MODE=transcode); more: bad_request",
    )
    max_offer_codecs: int = setting(
        "MEDIA_MAX_OFFER_CODECS",
        64,
        integer(1, 128),
        "payload types of one audio/video section (Chromium offers about 40); more: bad_request",
    )
    max_offer_attributes: int = setting(
        "MEDIA_MAX_OFFER_ATTRIBUTES",
        1000,
        integer(10, 100000),
        "attribute lines (a=) of one offer (Chromium: about 200 a video section); more: bad_request",
    )
    max_tracks: int = setting(
        "MEDIA_MAX_TRACKS",
        1000,
        integer(1, 1000000),
        "audio/video media sections of all sessions of the process (OS threads when transcoding); beyond it offers are "
        "refused (retryable)",
    )
    max_sessions_per_user: int = setting(
        "MEDIA_MAX_SESSIONS_PER_USER",
        32,
        integer(1, 100000),
        "sessions one user (the access token's subject) may hold, WebSocket and WHIP together; beyond it: "
        "session_limit",
    )
    offer_rate_per_user: float = setting(
        "MEDIA_OFFER_RATE_PER_USER",
        20.0,
        number(0.1, 100000),
        "offers a second one user may have answered, WebSocket and WHIP together (burst: twice that); more: "
        "rate_limited",
    )
    session_connect_timeout: float = setting(
        "MEDIA_SESSION_CONNECT_TIMEOUT",
        30.0,
        number(1, 3600),
        "seconds a session may take to connect before it is closed",
    )
    session_close_timeout: float = setting(
        "MEDIA_SESSION_CLOSE_TIMEOUT", 5.0, number(0.1, 300), "bound on closing one peer connection"
    )
    echo_mode: str = setting(
        "MEDIA_ECHO_MODE",
        "forward",
        choice("forward", "transcode"),
        "forward: echo the RTP packets the peer sends (no decode, no encode, no thread per track); transcode: "
        "decode and encode every frame again (aiortc's own path, for comparison)",
    )
    dtls_certificate_rotation: float = setting(
        "MEDIA_DTLS_CERTIFICATE_ROTATION",
        86400.0,
        number(60, 604800),
        "seconds the process's one DTLS certificate serves new sessions before a new one is made",
    )
    ice_servers: tuple[dict[str, Any], ...] = setting(
        "MEDIA_ICE_SERVERS", (), _ice_servers, "JSON list of STUN/TURN servers; none by default"
    )
    ice_host_addresses: tuple[str, ...] = setting(
        "MEDIA_ICE_HOST_ADDRESSES",
        (),
        _addresses,
        "addresses offered as host ICE candidates (comma list); empty: every non-loopback address",
    )
    ice_udp_port: int = setting(
        "MEDIA_ICE_UDP_PORT",
        0,
        integer(0, 65535),
        "one UDP port for the ICE of every session (host candidates, checks, DTLS, media); 0: a port per session",
    )
    ice_announced_addresses: tuple[tuple[str, int | None], ...] = setting(
        "MEDIA_ICE_ANNOUNCED_ADDRESSES",
        (),
        _announced,
        "with MEDIA_ICE_UDP_PORT: the host candidate clients reach (the node address; :port when a hostPort or "
        "NodePort differs from the bound port); empty: the bound addresses",
    )
    ice_udp_receive_buffer: int = setting(
        "MEDIA_ICE_UDP_RECEIVE_BUFFER",
        4 << 20,
        integer(65536, 1 << 30),
        "SO_RCVBUF bytes asked for the shared ICE port (the kernel caps it at net.core.rmem_max)",
    )
    ice_unbundled: str = setting(
        "MEDIA_ICE_UNBUNDLED",
        "refuse",
        choice("refuse", "fallback"),
        "with MEDIA_ICE_UDP_PORT, an offer whose media sections do not share one BUNDLE transport: refuse "
        "(bad_request) or fallback (the session binds its own ports, unreachable where only the one port is open)",
    )
    allowed_origins: tuple[str, ...] = setting(
        "MEDIA_ALLOWED_ORIGINS",
        (),
        _origins,
        "origins whose pages may open /ws (browsers send Origin); empty: the service's own origin only; *: any",
    )
    ice_allow_loopback: bool = setting(
        "MEDIA_ICE_ALLOW_LOOPBACK",
        False,
        boolean,
        "send ICE checks to clients' loopback candidates (tests and local development on one machine only)",
    )
    ice_allow_private: bool = setting(
        "MEDIA_ICE_ALLOW_PRIVATE",
        True,
        boolean,
        "send ICE checks to clients' private-range candidates (10/8, 172.16/12, 192.168/16, fc00::/7, 100.64/10); "
        "0 for pods that serve only clients on the internet",
    )
    auth: str = setting(
        "MEDIA_AUTH",
        "token",
        choice("token", "none"),
        "token: clients need a signed access token; none: anyone is whoever they say (local development only)",
    )
    auth_secret_file: str = setting(
        "MEDIA_AUTH_SECRET_FILE", "", common.text, "file holding the HMAC secret that verifies HS256 access tokens"
    )
    auth_jwks_file: str = setting(
        "MEDIA_AUTH_JWKS_FILE",
        "",
        common.text,
        "JWKS file of public keys (ES256, EdDSA, RS256) that verify access tokens, chosen by kid",
    )
    auth_audience: str = setting(
        "MEDIA_AUTH_AUDIENCE", "", common.text, "the 'aud' access tokens must carry; empty: not checked"
    )
    auth_issuer: str = setting(
        "MEDIA_AUTH_ISSUER", "", common.text, "the 'iss' access tokens must carry; empty: not checked"
    )
    dev: bool = setting(
        "MEDIA_DEV",
        False,
        boolean,
        "development mode: an ephemeral token secret (unless MEDIA_AUTH_SECRET_FILE is set) and the demo page's URL "
        "with a token printed at start",
    )
    redis_url: str = setting(
        "MEDIA_REDIS_URL", "", _redis_url, "the bus between replicas; empty: one process, everything in memory"
    )
    redis_password_file: str = setting(
        "MEDIA_REDIS_PASSWORD_FILE", "", _readable_file, "file holding the Redis password (wins over one in the URL)"
    )
    advertise_url: str = setting(
        "MEDIA_ADVERTISE_URL",
        "",
        _http_url,
        "how other replicas reach this one's public listener; empty: http://<MEDIA_HOST or host name>:<MEDIA_PORT>",
    )
    fault_injection: bool = setting(
        "MEDIA_FAULT_INJECTION", False, boolean, "enable POST/DELETE /debug/leak on the admin port (fire drills)"
    )
    log_format: str = setting(
        "MEDIA_LOG_FORMAT", "auto", choice("auto", "json", "text"), "auto: text on a terminal, JSON otherwise"
    )
    log_level: str = setting("MEDIA_LOG_LEVEL", "info", choice(*LEVELS), "log level")

    @property
    def admin_bind_host(self) -> str:
        return self.admin_host or self.host

    @property
    def public_url(self) -> str:
        """Where the other replicas forward requests for this replica's sessions."""
        if self.advertise_url:
            return self.advertise_url
        host = self.host if self.host not in ("0.0.0.0", "::", "") else socket.gethostname()
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"


def check(settings: Settings) -> Settings:
    """Rules between settings; SettingsError names the variables."""
    keys = settings.auth_secret_file or settings.auth_jwks_file
    if settings.auth == "token" and not keys and not settings.dev:
        raise SettingsError(
            "no keys to verify access tokens: set MEDIA_AUTH_SECRET_FILE and/or MEDIA_AUTH_JWKS_FILE, "
            "or MEDIA_DEV=1 for local development, or MEDIA_AUTH=none to turn authentication off"
        )
    if settings.ice_announced_addresses and not settings.ice_udp_port:
        raise SettingsError(
            "MEDIA_ICE_ANNOUNCED_ADDRESSES needs MEDIA_ICE_UDP_PORT: sessions have no one port to announce"
        )
    if settings.auth == "none" and settings.dev:
        raise SettingsError("MEDIA_DEV=1 needs MEDIA_AUTH=token: development mode mints tokens")
    return settings


def build_parser() -> argparse.ArgumentParser:
    return common.build_parser(Settings, PROG, DESCRIPTION)


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags and environment; raises SettingsError on the first invalid value."""
    return check(common.load(Settings, argv, environ, prog=PROG, description=DESCRIPTION))
