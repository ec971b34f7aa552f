"""The service's Prometheus metrics. The names are a contract with the operator, the alert rules
and the dashboards (see docs/metrics.md); each app instance has its own registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, generate_latest

from media_common.metrics import new_registry
from media_service.auth import REASONS as AUTH_REASONS
from media_service.icemux import CLAIM_REFUSAL_REASONS, DROP_REASONS
from media_service.leak.ownership import OwnerState
from media_service.relay import DROP_REASONS as FORWARDED_DROP_REASONS

CLOSE_REASONS = ("closed", "shutdown", "timeout", "failed")
BUS_DIRECTIONS = ("out", "in")
#: out: ok published, error not published; in: ok delivered here, ignored no device here (or our own).
BUS_RESULTS = ("ok", "error", "ignored")
#: ok answered by the owner; not_found no owner recorded; unavailable Redis or the owner unreachable.
FORWARD_RESULTS = ("ok", "not_found", "unavailable")
#: What became of a viewer's keyframe request for forwarded video (media_service.relay).
KEYFRAME_REQUEST_RESULTS = ("relayed", "coalesced")
#: Why a public connection was closed by a bound (media_service.connections).
CONNECTION_REFUSAL_REASONS = ("process", "address", "timeout")
#: Why a remote ICE candidate's address is refused (media_service.ice.refusal).
ICE_REFUSAL_REASONS = ("loopback", "link_local", "metadata", "private", "unroutable")


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = new_registry()
        r = self.registry
        # Leak detection. Kept under the original Go service's names for compatibility.
        self.goroutine_count = Gauge("media_goroutine_count", "asyncio tasks + threads of the process", registry=r)
        self.goroutine_count_max = Gauge("media_goroutine_count_max", "highest media_goroutine_count seen", registry=r)
        self.goroutine_unexplained = Gauge(
            "media_goroutine_unexplained",
            "what load cannot explain: unowned and orphaned tasks plus threads; the count the leak rule judges",
            registry=r,
        )
        self.goroutine_baseline = Gauge(
            "media_goroutine_baseline", "baseline of media_goroutine_unexplained; -1 until established", registry=r
        )
        self.potential_leak = Gauge("media_potential_goroutine_leak", "1 = leak suspected, 0 = normal", registry=r)
        self.asyncio_tasks = Gauge(
            "media_asyncio_tasks",
            "asyncio tasks by owner state: live, closing, orphaned, unowned",
            ["owner"],
            registry=r,
        )
        self.threads = Gauge("media_threads", "threads of the process", registry=r)
        # Sessions.
        self.sessions_active = Gauge("media_sessions_active", "open WebRTC sessions", registry=r)
        self.sessions_created = Counter("media_sessions_created", "WebRTC sessions created", registry=r)
        self.sessions_closed = Counter(
            "media_sessions_closed", "WebRTC sessions closed, by reason", ["reason"], registry=r
        )
        self.sessions_rejected = Counter(
            "media_sessions_rejected", "offers refused, by error code", ["code"], registry=r
        )
        self.ice_candidates_rejected = Counter(
            "media_ice_candidates_rejected", "remote ICE candidates refused by the per-session cap", registry=r
        )
        self.ice_candidates_refused = Counter(
            "media_ice_candidates_refused",
            "remote ICE candidates dropped for their address: no checks are sent there",
            ["reason"],
            registry=r,
        )
        for reason in ICE_REFUSAL_REASONS:
            self.ice_candidates_refused.labels(reason=reason)
        # Forwarded media (MEDIA_ECHO_MODE=forward).
        self.keyframe_requests = Counter(
            "media_keyframe_requests",
            "keyframe requests (PLI, FIR) from viewers of forwarded video, by result: relayed to the sending peer "
            "as a PLI, or coalesced with one relayed less than 0.25 s before",
            ["result"],
            registry=r,
        )
        for result in KEYFRAME_REQUEST_RESULTS:
            self.keyframe_requests.labels(result=result)
        self.forwarded_packets_dropped = Counter(
            "media_forwarded_packets_dropped",
            "received media packets not forwarded, by reason: codec (not one the sender negotiated), "
            "srtp (failed SRTP authentication: a replay, or forged)",
            ["reason"],
            registry=r,
        )
        for reason in FORWARDED_DROP_REASONS:
            self.forwarded_packets_dropped.labels(reason=reason)
        # The shared ICE port (MEDIA_ICE_UDP_PORT); exported, at 0, without it too.
        self.ice_mux_sessions = Gauge(
            "media_ice_mux_sessions", "sessions whose ICE runs on the shared UDP port", registry=r
        )
        self.ice_mux_addresses = Gauge(
            "media_ice_mux_addresses", "remote addresses claimed by sessions on the shared UDP port", registry=r
        )
        self.ice_mux_drops = Counter(
            "media_ice_mux_drops", "datagrams of the shared UDP port dropped, by reason", ["reason"], registry=r
        )
        for reason in DROP_REASONS:
            self.ice_mux_drops.labels(reason=reason)
        self.ice_mux_claim_refusals = Counter(
            "media_ice_mux_claim_refusals",
            "remote addresses a session was refused on the shared UDP port, by reason",
            ["reason"],
            registry=r,
        )
        for reason in CLAIM_REFUSAL_REASONS:
            self.ice_mux_claim_refusals.labels(reason=reason)
        self.ice_mux_fallbacks = Counter(
            "media_ice_mux_fallbacks",
            "sessions given their own ports because their offer cannot share one (MEDIA_ICE_UNBUNDLED=fallback)",
            registry=r,
        )
        self.ice_mux_receive_buffer_errors = Counter(
            "media_ice_mux_receive_buffer_errors",
            "datagrams the kernel dropped because the shared UDP port's receive buffer was full (SO_RXQ_OVFL)",
            registry=r,
        )
        # Public listener connections.
        self.connections_open = Gauge("media_connections_open", "open connections on the public listener", registry=r)
        self.connections_refused = Counter(
            "media_connections_refused",
            "public connections closed by a bound: process or address cap, or the request deadline (timeout)",
            ["reason"],
            registry=r,
        )
        for reason in CONNECTION_REFUSAL_REASONS:
            self.connections_refused.labels(reason=reason)
        # Signaling hub.
        self.ws_clients = Gauge("media_ws_clients", "connected WebSocket clients", registry=r)
        self.ws_send_timeouts = Counter(
            "media_ws_send_timeouts", "slow WebSocket clients dropped by the send timeout", registry=r
        )
        self.ws_messages_rejected = Counter(
            "media_ws_messages_rejected", "client messages refused, by error code", ["code"], registry=r
        )
        # Authentication.
        self.auth_enabled = Gauge(
            "media_auth_enabled", "1 when clients need an access token, 0 with MEDIA_AUTH=none", registry=r
        )
        self.auth_failures = Counter(
            "media_auth_failures",
            "connections and requests refused for their access token, by reason",
            ["reason"],
            registry=r,
        )
        # The bus between replicas (always 1 without Redis: one process is its own bus).
        self.bus_up = Gauge("media_bus_up", "1 while the bus between replicas works, 0 while it does not", registry=r)
        self.bus_messages = Counter(
            "media_bus_messages",
            "messages through the bus, by direction (out, in) and result (ok, error, ignored)",
            ["direction", "result"],
            registry=r,
        )
        self.bus_subscriptions = Gauge(
            "media_bus_subscriptions", "users with a device here whose channel Redis has confirmed", registry=r
        )
        self.bus_reconnects = Counter("media_bus_reconnects", "times the bus lost Redis and reconnected", registry=r)
        self.whip_forwards = Counter(
            "media_whip_forwards",
            "WHIP requests forwarded to the replica holding the session, by result",
            ["result"],
            registry=r,
        )
        # Lifecycle.
        self.draining = Gauge("media_draining", "1 while draining", registry=r)
        self.ready = Gauge("media_ready", "1 while ready to take new sessions", registry=r)

        self.goroutine_baseline.set(-1)
        for state in OwnerState:
            self.asyncio_tasks.labels(owner=state.value)
        for reason in CLOSE_REASONS:
            self.sessions_closed.labels(reason=reason)
        for reason in AUTH_REASONS:
            self.auth_failures.labels(reason=reason)
        self.bus_up.set(1)
        for direction in BUS_DIRECTIONS:
            for result in BUS_RESULTS:
                self.bus_messages.labels(direction=direction, result=result)
        for result in FORWARD_RESULTS:
            self.whip_forwards.labels(result=result)

    def render(self) -> bytes:
        return generate_latest(self.registry)
