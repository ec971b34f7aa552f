"""MediaServiceBusDown on the real path: a real redis-server, the real media service with
MEDIA_REDIS_URL, and a real Prometheus scraping it and evaluating the fast variant of alerts/ (the
production expression and annotations, a `for` of seconds). The alert stays silent while the bus
works, is pending once Redis is killed, fires no sooner than its `for` after that, and resolves when
Redis is back and the service has reconnected by itself."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.media_process import media_service
from tests.support.prometheus import fast_rules, prometheus_server, static_job, wait_until
from tests.support.redis_server import redis_server

pytestmark = pytest.mark.slow

ALERT = "MediaServiceBusDown"
POD = {"namespace": "media", "pod": "media-bus"}
FOR_SECONDS = 3


def test_bus_down_fires_after_its_wait_and_resolves_when_redis_is_back(tmp_path: Path) -> None:
    redis = redis_server(tmp_path)
    try:
        with (
            media_service(tmp_path, host="127.0.0.7", env={"MEDIA_REDIS_URL": redis.url}) as media,
            prometheus_server(
                tmp_path / "prom",
                scrape_configs=[static_job("media-service", f"{media.host}:{media.admin_port}", POD)],
                rule_paths=fast_rules(tmp_path / "rules", for_=f"{FOR_SECONDS}s"),
            ) as prom,
        ):
            media.poll_metric("media_bus_up", lambda v: v == 1)
            prom.wait_for_query('media_bus_up{job="media-service"}', lambda r: [s["value"][1] for s in r] == ["1"])
            # Longer than the alert's `for`, evaluated every second: a working bus raises nothing.
            time.sleep(FOR_SECONDS + 2)
            assert prom.alerts(ALERT) == []

            redis.kill()
            killed = time.monotonic()
            states: list[tuple[float, str]] = []

            def firing() -> list[dict]:
                alerts = prom.alerts(ALERT)
                states.extend((time.monotonic() - killed, a["state"]) for a in alerts)
                return [a for a in alerts if a["state"] == "firing"]

            (alert,) = wait_until(firing, 30, f"{ALERT} firing", every=0.2)
            first_firing = next(t for t, state in states if state == "firing")
            assert "pending" in [state for _, state in states], states
            assert first_firing >= FOR_SECONDS, f"fired {first_firing:.1f}s after Redis went away"
            assert {k: alert["labels"][k] for k in ("alertname", "severity", *POD)} == {
                "alertname": ALERT,
                "severity": "warning",
                **POD,
            }
            # The figures come from the service's real series: nothing refused yet, none unknown.
            description = " ".join(alert["annotations"]["description"].split())
            assert description.startswith("media/media-bus has not reached Redis"), description
            assert "In the last 5 minutes 0 messages for users on other replicas" in description, description
            assert "and 0 WHIP requests for other replicas' sessions got 503" in description, description
            assert media.metric("media_bus_up") == 0
            assert '"bus_disconnected"' in media.log()

            redis.start()  # empty, on the same port
            media.poll_metric("media_bus_up", lambda v: v == 1, timeout=30)
            wait_until(lambda: not prom.alerts(ALERT), 30, f"{ALERT} resolved")
            assert media.metric("media_bus_reconnects_total") == 1
    finally:
        redis.stop()
