"""Run both listeners in one event loop and own the process lifecycle.

The service, not uvicorn, handles SIGTERM and SIGINT: uvicorn would stop accepting connections at
once, before readiness could turn false and before clients could be told to move. Here the first
signal starts the drain (readiness 503, clients told, new sessions refused, existing ones go on),
the process exits once no session is left or the drain window ends, and a second signal closes
everything at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import signal
import socket
import sys
from collections.abc import Iterator
from typing import Any

import uvicorn

from media_common import logs
from media_service.app import admin_app, public_app
from media_service.auth import Verifier
from media_service.config import Settings
from media_service.connections import ConnectionLimiter, limited_protocols
from media_service.core import MediaService
from media_service.lifecycle import RETRY_AFTER_SECONDS

log = logs.get("media_service.server")

EXIT_OK = 0
EXIT_FORCED = 1


class ListenError(RuntimeError):
    pass


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # signals are the Runner's: see the module docstring


def listen(host: str, port: int) -> socket.socket:
    """Bind before serving, so a taken port is one clear line rather than a traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


class Runner:
    def __init__(self, settings: Settings, verifier: Verifier | None, *, banner: str | None = None) -> None:
        self.settings = settings
        self.service = MediaService(settings, verifier)
        self._banner = banner  # printed once listening (development mode's page address)
        self._signals = 0
        self._exit_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._forced = False
        self._failed = False
        self._servers: tuple[uvicorn.Server, ...] = ()

    async def run(self) -> int:
        settings, service = self.settings, self.service
        await service.leaks.start()  # first: every task from here on gets an owner state
        await service.bus.start()  # connects in the background: Redis down never delays serving
        sockets = [listen(settings.host, settings.port), listen(settings.admin_bind_host, settings.admin_port)]
        try:
            service.open_ice_mux(asyncio.get_running_loop())
        except OSError as exc:
            for sock in sockets:
                sock.close()
            raise ListenError(
                f"cannot bind MEDIA_ICE_UDP_PORT={settings.ice_udp_port}: {exc.strerror or exc}"
            ) from None
        # proxy_headers off: uvicorn would otherwise believe X-Forwarded-For from 127.0.0.1 by
        # default; which proxies are trusted is MEDIA_TRUSTED_PROXIES' (media_service.connections).
        common: dict[str, Any] = {
            "lifespan": "off",
            "log_config": None,
            "access_log": False,
            "server_header": False,
            "proxy_headers": False,
        }
        limiter = ConnectionLimiter(
            settings.max_connections, settings.max_connections_per_address, settings.trusted_proxies
        )
        service.metrics.connections_open.set_function(lambda: len(limiter))
        refused = service.metrics.connections_refused
        http_protocol, ws_protocol = limited_protocols(
            limiter,
            settings.request_timeout,
            on_refused=lambda reason: refused.labels(reason=reason).inc(),
            on_timeout=refused.labels(reason="timeout").inc,
        )
        public = _EmbeddedServer(
            uvicorn.Config(
                public_app(service),
                http=http_protocol,
                ws=ws_protocol,
                ws_max_size=settings.ws_max_message_bytes,
                h11_max_incomplete_event_size=16 * 1024,  # request line and headers
                timeout_graceful_shutdown=2,
                **common,
            )
        )
        admin = _EmbeddedServer(uvicorn.Config(admin_app(service, self.drain), timeout_graceful_shutdown=1, **common))
        self._servers = (public, admin)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        empty = contextvars.Context()  # the servers' own tasks belong to no session
        servers = [
            loop.create_task(s.serve(sockets=[sock]), context=empty.copy())
            for s, sock in zip((public, admin), sockets, strict=True)
        ]
        try:
            while not (public.started and admin.started):
                if any(task.done() for task in servers) or self._stop.is_set():
                    break
                await asyncio.sleep(0.005)
            if public.started and admin.started and service.lifecycle.mark_ready():
                log.info(
                    "server_started",
                    public=f"{settings.host}:{settings.port}",
                    admin=f"{settings.admin_bind_host}:{settings.admin_port}",
                    max_sessions=settings.max_sessions,
                    drain_seconds=settings.drain_seconds,
                    auth=settings.auth,
                )
                if service.verifier is None:
                    log.warning("auth_disabled", detail="MEDIA_AUTH=none: every client is whoever it says it is")
                if self._banner:
                    print(self._banner, file=sys.stderr, flush=True)
            stop = loop.create_task(self._stop.wait())
            done, _ = await asyncio.wait([stop, *servers], return_when=asyncio.FIRST_COMPLETED)
            if stop not in done:  # a listener ended on its own: nothing can be served any more
                stop.cancel()
                ended = next(task for task in servers if task.done())
                error = None if ended.cancelled() else ended.exception()
                log.error("listener_stopped", error=repr(error) if error else None)
                self._failed = True
                await self._close_everything()
        finally:
            for server in (public, admin):
                server.should_exit = True
                server.force_exit = self._forced
            await asyncio.gather(*servers, return_exceptions=True)
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            for sock in sockets:
                sock.close()
            service.close_ice_mux()
            await service.bus.stop()
            await service.forwarder.aclose()
            await service.leaks.stop()
            service.lifecycle.mark_stopped()
        log.info("server_stopped", forced=self._forced, failed=self._failed)
        return EXIT_FORCED if self._forced or self._failed else EXIT_OK

    def drain(self, source: str) -> None:
        """Start draining (idempotent). Without a signal the process keeps running: /admin/drain."""
        service = self.service
        if not service.lifecycle.begin_drain():
            return
        notified = service.hub.broadcast({"type": "draining", "retry_after": RETRY_AFTER_SECONDS})
        log.info(
            "drain_started",
            source=source,
            sessions=len(service.sessions),
            clients=notified,
            window_seconds=self.settings.drain_seconds,
        )

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            self.drain(name)
            self._exit_task = asyncio.get_running_loop().create_task(
                self._drain_then_exit(), context=contextvars.Context()
            )
        else:
            log.warning("forced_shutdown", signal=name, sessions=len(self.service.sessions))
            self._forced = True
            for server in self._servers:  # and uvicorn waits for no connection either
                server.force_exit = True
            if self._exit_task is not None:
                self._exit_task.cancel()
            self._exit_task = asyncio.get_running_loop().create_task(
                self._close_everything(), context=contextvars.Context()
            )

    async def _drain_then_exit(self) -> None:
        service = self.service
        window = service.lifecycle.drain_remaining(self.settings.drain_seconds)
        try:
            await asyncio.wait_for(service.sessions.empty.wait(), window)
            log.info("drain_complete", reason="no sessions left")
        except TimeoutError:
            log.info("drain_window_ended", sessions=len(service.sessions))
        await self._close_everything()

    async def _close_everything(self) -> None:
        service = self.service
        try:
            closed = await service.sessions.close_all("shutdown")
            log.info("sessions_closed", count=closed, reason="shutdown")
            await service.hub.close_all(1001, "server shutting down")
        finally:  # whatever went wrong, the process must not hang on until SIGKILL
            self._stop.set()
