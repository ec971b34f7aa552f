"""NOTES.txt, as `helm install` prints it: where things are, and the warnings that matter."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.chart import notes


def test_default_notes(tmp_path: Any) -> None:
    text = notes(None, tmp_path)
    assert "port-forward svc/media-media-service 8080" in text
    assert "port-forward svc/media-media-service-metrics 9090" in text
    assert "http://media-media-service-operator.media.svc:8081/alertmanager" in text
    assert "get secret media-media-service-operator-webhook -o jsonpath='{.data.token}'" in text
    assert "WARNING: no ICE servers" in text
    assert "NOTE: the PrometheusRule and ServiceMonitor are not installed" in text
    assert "DRY RUN" not in text


IMAGE_HINT = "make push-images REGISTRY=<your registry>"
OWN_SERVICE = {"image": {"repository": "registry.example.org/team/media-service"}}
OWN_IMAGES = {**OWN_SERVICE, "operator": {"image": {"repository": "registry.example.org/team/media-operator"}}}


@pytest.mark.parametrize(
    "values",
    [None, OWN_SERVICE, {"image": {"tag": "0.2.0"}}],
    ids=["defaults", "default-operator-image", "default-service-repository"],
)
def test_default_image_repositories_say_to_build_and_push_the_images(
    values: dict[str, Any] | None, tmp_path: Any
) -> None:
    """Nothing is published under the chart's default repositories: the pods could not start."""
    text = notes(values, tmp_path)
    assert IMAGE_HINT in text
    assert "set image.repository=<your registry>/media-service" in text


@pytest.mark.parametrize(
    "values",
    [OWN_IMAGES, {**OWN_SERVICE, "operator": {"enabled": False}}],
    ids=["own-images", "own-service-image-without-operator"],
)
def test_own_image_repositories_need_no_build_hint(values: dict[str, Any], tmp_path: Any) -> None:
    assert IMAGE_HINT not in notes(values, tmp_path)


@pytest.mark.parametrize(
    "values",
    [
        {"hostNetwork": True},
        {"ice": {"existingSecret": "turn"}},
        {"ice": {"servers": [{"urls": "stun:stun.example.org:3478"}]}},
    ],
)
def test_no_ice_warning_when_media_is_reachable(values: dict[str, Any], tmp_path: Any) -> None:
    assert "WARNING: no ICE servers" not in notes(values, tmp_path)


def test_monitoring_and_dry_run_notes(tmp_path: Any) -> None:
    text = notes(
        {"alerts": {"enabled": True}, "metrics": {"serviceMonitor": {"enabled": True}}, "operator": {"dryRun": True}},
        tmp_path,
    )
    assert "not installed" not in text
    assert "DRY RUN" in text


BUNDLED_NOTE = "The media pods share the bundled Redis media-media-service-redis"


@pytest.mark.parametrize(
    ("values", "bundled"),
    [(None, True), ({"replicaCount": 1}, False), ({"redis": {"url": "redis://redis.example.org:6379/0"}}, False)],
    ids=["default", "one-replica", "external"],
)
def test_bundled_redis_note_points_to_an_ha_redis(values: dict[str, Any] | None, bundled: bool, tmp_path: Any) -> None:
    text = notes(values, tmp_path)
    assert (BUNDLED_NOTE in text) is bundled
    if bundled:
        assert "set redis.url (or redis.existingSecret) to an HA Redis" in " ".join(text.split())
