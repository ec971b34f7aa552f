"""The chart keeps the admin port to what needs it and the webhook token stable: NetworkPolicies
select Prometheus and Alertmanager by namespace and pods, and a token given as a value renders the
same on every `helm template`."""

from __future__ import annotations

import base64

from tests.support.chart import load_all, one, render, template

TOKEN = "t" * 40


def admin_peers(docs: list[dict]) -> list[dict]:
    policy = next(
        d
        for d in docs
        if d["kind"] == "NetworkPolicy" and d["metadata"]["labels"].get("app.kubernetes.io/component") == "media"
    )
    return next(
        rule["from"] for rule in policy["spec"]["ingress"] if any(p.get("port") == "admin" for p in rule["ports"])
    )


def test_prometheus_is_selected_by_namespace_and_pods() -> None:
    peers = admin_peers(render())
    prometheus = [p for p in peers if "namespaceSelector" in p]
    assert prometheus == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ]  # not {}: any pod labelled prometheus in any namespace
    # Every other peer is a pod of this namespace (the operator, the helm test): no namespaceSelector.
    assert all(set(p) == {"podSelector"} for p in peers if p not in prometheus)
    # helm merges maps: the default namespace label is removed with null, as values.yaml says.
    mine = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": None, "team": "observability"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prom"}},
    }
    assert {
        "namespaceSelector": {"matchLabels": {"team": "observability"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prom"}},
    } in admin_peers(render({"networkPolicy": {"prometheus": mine}}))
    operator_policy = one(render(), "NetworkPolicy", "operator")
    for peer in operator_policy["spec"]["ingress"][0]["from"]:
        assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}


def webhook_token(values: dict) -> str:
    docs = load_all(template(values).stdout)  # no cache: each render is a new one
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-operator-webhook"))
    return base64.b64decode(next(iter(secret["data"].values()))).decode()


def test_a_webhook_token_given_as_a_value_is_stable_across_renders() -> None:
    assert webhook_token({"operator": {"webhook": {"token": TOKEN}}}) == TOKEN
    assert webhook_token({"operator": {"webhook": {"token": TOKEN}}}) == TOKEN
    # Without it and without a cluster to look up, each render draws a new one (what the value fixes).
    assert webhook_token({}) != webhook_token({})
    refused = template({"operator": {"webhook": {"token": "short"}}}, check=False)
    assert refused.returncode != 0 and "token" in refused.stderr


def test_on_the_host_network_the_admin_port_binds_the_pod_ip() -> None:
    from tests.support.chart import container, env

    plain = env(container(one(render(), "Deployment", "media")))
    assert plain["MEDIA_ADMIN_HOST"] == "0.0.0.0"
    hosted = container(one(render({"hostNetwork": True}), "Deployment", "media"))
    names = [e["name"] for e in hosted["env"]]
    assert env(hosted)["MEDIA_ADMIN_HOST"] == "$(POD_IP)"
    assert names.index("POD_IP") < names.index("MEDIA_ADMIN_HOST")  # substituted only if defined before
    chosen = env(
        container(one(render({"hostNetwork": True, "config": {"adminHost": "10.0.0.5"}}), "Deployment", "media"))
    )
    assert chosen["MEDIA_ADMIN_HOST"] == "10.0.0.5"
