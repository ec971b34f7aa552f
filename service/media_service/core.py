"""One media service instance: every component, wired once, shared by both listeners."""

from __future__ import annotations

from media_service.bus import Bus, LocalBus, RedisBus, read_password
from media_service.config import Settings
from media_service.forward import Forwarder
from media_service.hub import Hub
from media_service.leak.detector import LeakDetector, LeakSettings
from media_service.lifecycle import Lifecycle
from media_service.metrics import ServiceMetrics
from media_service.sessions import SessionManager


class MediaService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
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

    def _presence(self, user: str, online: bool) -> None:
        if online:
            self.bus.user_online(user)
        else:
            self.bus.user_offline(user)
