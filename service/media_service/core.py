"""One media service instance: every component, wired once, shared by both listeners."""

from __future__ import annotations

import asyncio
import secrets

import aioice.ice

from media_common import logs
from media_service.auth import AuthError, Identity, KeyFiles, Verifier, bearer
from media_service.bus import Bus, LocalBus, RedisBus, read_password
from media_service.config import Settings
from media_service.forward import Forwarder
from media_service.hub import Hub
from media_service.icemux import IceMux, MuxCounters, install
from media_service.leak.detector import LeakDetector, LeakSettings
from media_service.lifecycle import Lifecycle
from media_service.metrics import ServiceMetrics
from media_service.sessions import SessionManager

log = logs.get("media_service.auth")
ice_log = logs.get("media_service.icemux")


def build_verifier(settings: Settings, dev_secret: bytes | None = None) -> Verifier | None:
    """The verifier the settings ask for, None with MEDIA_AUTH=none; KeyConfigError if the key
    files cannot be used. ``dev_secret`` is development mode's ephemeral secret."""
    if settings.auth == "none":
        return None
    keys = KeyFiles(settings.auth_secret_file, settings.auth_jwks_file, extra_secret=dev_secret)
    return Verifier(keys.current, audience=settings.auth_audience or None, issuer=settings.auth_issuer or None)


class MediaService:
    def __init__(self, settings: Settings, verifier: Verifier | None) -> None:
        self.settings = settings
        self.verifier = verifier
        self.metrics = ServiceMetrics()
        self.metrics.auth_enabled.set(verifier is not None)
        self.lifecycle = Lifecycle(self.metrics)
        self.leaks = LeakDetector(
            LeakSettings(
                sample_interval=settings.leak_sample_interval,
                baseline_samples=settings.leak_baseline_samples,
                factor=settings.leak_factor,
                orphan_grace=settings.leak_orphan_grace,
            ),
            self.metrics,
        )
        self.hub = Hub(
            self.metrics,
            buffer=settings.ws_send_buffer,
            send_timeout=settings.ws_send_timeout,
            presence=self._presence,
            buffer_bytes=settings.ws_send_buffer_bytes,
            budget_bytes=settings.ws_queue_budget_bytes,
        )
        self.bus: Bus = (
            RedisBus(
                settings.redis_url,
                settings.public_url,
                self.metrics,
                self.hub.send_to_user,
                password=read_password(settings.redis_password_file),
            )
            if settings.redis_url
            else LocalBus()
        )
        self.forwarder = Forwarder()
        self.sessions = SessionManager(settings, self.metrics, accepting=lambda: self.lifecycle.accepting)

    def open_ice_mux(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the shared ICE port (MEDIA_ICE_UDP_PORT) on the host candidate addresses, and let
        new sessions join it; nothing when the port is 0. OSError if it cannot be bound."""
        settings, metrics = self.settings, self.metrics
        if not settings.ice_udp_port or self.sessions.ice_mux is not None:
            return
        counters = MuxCounters(
            dropped=lambda reason: metrics.ice_mux_drops.labels(reason=reason).inc(),
            refused=lambda reason: metrics.ice_mux_claim_refusals.labels(reason=reason).inc(),
            receive_buffer_errors=metrics.ice_mux_receive_buffer_errors.inc,
        )
        # The addresses aioice would offer (MEDIA_ICE_HOST_ADDRESSES, or every one it discovers).
        hosts = list(settings.ice_host_addresses) or aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True)
        mux = IceMux.open(
            settings.ice_udp_port,
            hosts,
            settings.ice_announced_addresses,
            counters,
            receive_buffer=settings.ice_udp_receive_buffer,
        )
        if not mux.muxes:
            raise OSError(f"no address to bind MEDIA_ICE_UDP_PORT={settings.ice_udp_port} on")
        install()
        mux.start(loop)
        metrics.ice_mux_sessions.set_function(lambda: mux.sessions)
        metrics.ice_mux_addresses.set_function(lambda: mux.addresses)
        self.sessions.ice_mux = mux
        for udp in mux.muxes:
            granted = udp.receive_buffer
            ice_log.info(
                "ice_mux_listening",
                bound=f"{udp.sockname[0]}:{udp.sockname[1]}",
                announced=f"{udp.announced[0]}:{udp.announced[1]}",
                receive_buffer=granted,
            )
            if granted < settings.ice_udp_receive_buffer:  # Linux grants twice the request, up to rmem_max
                ice_log.warning(
                    "ice_mux_receive_buffer_capped",
                    asked=settings.ice_udp_receive_buffer,
                    granted=granted,
                    detail="raise net.core.rmem_max on the node (docs/ice-mux.md)",
                )

    def close_ice_mux(self) -> None:
        mux, self.sessions.ice_mux = self.sessions.ice_mux, None
        if mux is not None:
            mux.close()

    def authenticate(
        self,
        authorization: str | None,
        query_token: str | None = None,
        *,
        transport: str,
        peer: str | None,
        claimed_user: str | None = None,
    ) -> Identity:
        """Who the client is: the token's subject (the ``Authorization: Bearer`` header, else the
        ``access_token`` query value). A ``claimed_user`` (``?user=``) must be that subject. Every
        refusal is counted and logged here, once, without the token. With MEDIA_AUTH=none the
        client is whoever it claims to be, with every grant."""
        if self.verifier is None:
            return Identity(claimed_user or f"anonymous-{secrets.token_hex(4)}")
        try:
            token = bearer(authorization)
            identity = self.verifier.verify(token if token is not None else query_token)
            if claimed_user is not None and claimed_user != identity.user:
                raise AuthError("user_mismatch", "?user= names another user than the access token")
        except AuthError as exc:
            self.metrics.auth_failures.labels(reason=exc.reason).inc()
            log.warning("auth_refused", transport=transport, reason=exc.reason, detail=str(exc), peer=peer)
            raise
        return identity

    def _presence(self, user: str, online: bool) -> None:
        if online:
            self.bus.user_online(user)
        else:
            self.bus.user_offline(user)
