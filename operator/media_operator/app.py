"""Wiring: settings → kopf (watch, login) + control loop + HTTP server, in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

import kopf
from aiohttp import web

from media_common import logs
from media_operator.alerts import AlertTriage
from media_operator.controller import Controller
from media_operator.decisions import Decider
from media_operator.kube import Kube, load_configuration
from media_operator.metrics import OperatorMetrics
from media_operator.podclient import PodClient
from media_operator.podstore import PodStore
from media_operator.settings import Settings, SettingsError, load
from media_operator.web import build_app

log = logs.get("media_operator")


def build_registry(store: PodStore) -> kopf.OperatorRegistry:
    """The thin kopf layer: credentials, and pod watch events into the store. Nothing else.

    An event handler needs no finalizer and writes nothing to the pod (no progress annotations),
    so pods never hang in Terminating when the operator is gone.
    """
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    async def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return await kopf.login_via_async_client(**kwargs)

    @kopf.on.event("", "v1", "pods", registry=registry)
    def pod_event(event: kopf.RawEvent, **_: Any) -> None:
        store.apply(event.get("type"), event["object"])

    return registry


def kopf_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # Namespaces are listed explicitly (no globs): nothing to scan, and no cluster-wide
    # namespace list permission needed.
    settings.scanning.disabled = True
    # The operator posts its own Events with the pod's uid; kopf must not post per-handler ones.
    settings.posting.enabled = False
    return settings


async def run(settings: Settings, *, stop: asyncio.Event | None = None, ready: asyncio.Event | None = None) -> None:
    """Run until kopf stops (SIGTERM/SIGINT) or ``stop`` is set; ``ready`` is set once decisions start."""
    store = PodStore(settings.selector)
    metrics = OperatorMetrics()
    configuration = await load_configuration()
    async with (
        Kube(configuration) as kube,
        PodClient(
            settings.pod_admin_port, timeout=settings.scrape_timeout, concurrency=settings.scrape_concurrency
        ) as pods,
    ):
        controller = Controller(settings, store, Decider(settings.rules()), pods, kube, metrics)
        triage = AlertTriage(settings.alert_names)
        app = build_web(controller, triage, settings, store)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        await site.start()
        log.info(
            "operator_started",
            namespaces=list(settings.namespaces) or "cluster-wide",
            selector=dict(settings.selector),
            dry_run=settings.dry_run,
            http_port=settings.http_port,
            alertmanager=bool(settings.webhook_token),
        )
        loop_task = asyncio.create_task(controller.run(), name="media-operator control loop")
        kopf_ready = asyncio.Event()
        gate_task = asyncio.create_task(
            _open_when_listed(controller, kopf_ready, settings.scrape_interval, ready),
            name="media-operator start-up gate",
        )
        try:
            await kopf.operator(
                registry=build_registry(store),
                settings=kopf_settings(),
                standalone=True,  # single replica by default; see docs/operator.md for peering
                clusterwide=settings.clusterwide,
                namespaces=settings.namespaces,
                stop_flag=stop,
                ready_flag=kopf_ready,
            )
        finally:
            for task in (gate_task, loop_task):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await runner.cleanup()
            log.info("operator_stopped")


async def _open_when_listed(
    controller: Controller, kopf_ready: asyncio.Event, interval: float, ready: asyncio.Event | None
) -> None:
    """Let the loop decide and the webhook answer once kopf has listed the existing pods.

    kopf raises its ready flag when its watchers start; each first lists the pods there are, then
    streams changes. kopf offers no public signal for the end of that listing, so the gate opens one
    scrape interval later: a first round on a partial list could break the budget or miss a storm.
    """
    await kopf_ready.wait()
    await asyncio.sleep(interval)
    controller.listed.set()
    log.info("pods_listed", pods=len(controller.store))
    if ready is not None:
        ready.set()


def build_web(controller: Controller, triage: AlertTriage, settings: Settings, store: PodStore) -> web.Application:
    return build_app(controller, triage, settings.webhook_token, lambda key: store.get(key) is not None)


def run_cli(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load(argv)
    except SettingsError as exc:
        print(f"media-operator: {exc}", file=sys.stderr)
        return 2
    # kopf's own INFO lines (start-up, watch errors) stay; its per-object chatter does not.
    logs.configure(
        settings.log_format,
        settings.log_level,
        own="media_operator",
        quiet={"kopf": logging.INFO, "kopf.objects": logging.WARNING},
    )
    asyncio.run(run(settings))
    return 0
