"""A real Kubernetes control plane on loopback: etcd, kube-apiserver and kube-controller-manager as
built by ``.ci/install-k8s``, for one test session.

The API server runs with the RBAC authorizer, service-account token signing, PodSecurity admission
and an audit log of every request; the controller manager with every controller but node
lifecycle (no kubelet sends heartbeats: the stand-in in ``kubelet.py`` only binds and runs pods).
The admin authenticates with a static token; everything else (the operator) gets service-account
tokens through the TokenRequest API, so RBAC is enforced on it for real.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import secrets
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.support.ports import free_port
from tests.support.servers import terminate, wait_until
from tests.support.tools import REPO

K8S_VERSION = os.environ.get("K8S_VERSION", "v1.36.3")
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}


def binaries() -> Path | None:
    """Where .ci/install-k8s put the binaries, or None when they are not built."""
    cache = Path(os.environ.get("MEDIA_K8S_CACHE", Path.home() / ".cache" / "media-service" / "k8s"))
    folder = cache / K8S_VERSION
    wanted = ("etcd", "kube-apiserver", "kube-controller-manager", "prometheus")
    return folder if all((folder / name).is_file() for name in wanted) else None


def _write_key(path: Path, key: Any) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and the API server's serving certificate for 127.0.0.1: (ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "media-service test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.crt", folder / "apiserver.crt", folder / "apiserver.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(paths[2], key)
    return paths


@dataclass
class Cluster:
    workdir: Path
    server: str
    ca_file: Path
    admin_token: str | None
    audit_log: Path | None
    kubeconfig: Path
    bin_dir: Path | None
    admin_cert: tuple[str, str] | None = None  # (certificate, key) files, as kind's kubeconfig has
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def external(self) -> bool:
        """A cluster of the user's (MEDIA_K8S_KUBECONFIG), not one these tests started."""
        return not self.procs

    def client_options(self, token: str | None = None) -> dict[str, Any]:
        """httpx options for the API server, as the admin unless ``token`` is given."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        token = token or self.admin_token
        if token is None and self.admin_cert is not None:
            context.load_cert_chain(*self.admin_cert)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return {"base_url": self.server, "verify": context, "headers": headers, "timeout": 30}

    def api(self, token: str | None = None) -> httpx.Client:
        """An HTTP client of the API server, as the admin unless ``token`` is given."""
        return httpx.Client(**self.client_options(token))

    def kubeconfig_for(self, token: str, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig that authenticates with ``token`` (a service account's, for one)."""
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {"name": "test", "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)}}
                    ],
                    "users": [{"name": "user", "user": {"token": token}}],
                    "contexts": [
                        {"name": "test", "context": {"cluster": "test", "user": "user", "namespace": namespace}}
                    ],
                    "current-context": "test",
                }
            )
        )
        return path

    def audit(self) -> list[dict[str, Any]]:
        """Every request the API server has logged so far (one JSON event a line)."""
        if self.audit_log is None:
            pytest.skip("this test reads the API server's audit log: set MEDIA_K8S_AUDIT_LOG (docs/testing.md)")
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip()]

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            if name in self.procs:
                terminate(self.procs[name], 20)


def _start(cluster: Cluster, name: str, argv: list[str]) -> None:
    with (cluster.workdir / f"{name}.log").open("wb") as log:
        cluster.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=cluster.workdir)


def start_cluster(workdir: Path, bin_dir: Path) -> Cluster:
    """etcd, kube-apiserver and kube-controller-manager on free loopback ports, ready to serve."""
    workdir.mkdir(parents=True, exist_ok=True)
    ca, cert, key = _certificates(workdir)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(workdir / "sa.key", sa_key)
    (workdir / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    admin_token = secrets.token_hex(24)
    (workdir / "tokens.csv").write_text(f'{admin_token},admin,admin,"system:masters"\n')
    (workdir / "audit-policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY))
    etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
    server = f"https://127.0.0.1:{api_port}"
    cluster = Cluster(workdir, server, ca, admin_token, workdir / "audit.log", workdir / "admin.kubeconfig", bin_dir)
    cluster.kubeconfig_for(admin_token, cluster.kubeconfig)
    try:
        _start(
            cluster,
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--data-dir",
                str(workdir / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
        )
        _start(
            cluster,
            "kube-apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--secure-port={api_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--tls-cert-file={cert}",
                f"--tls-private-key-file={key}",
                f"--client-ca-file={ca}",
                f"--token-auth-file={workdir / 'tokens.csv'}",
                "--anonymous-auth=false",
                "--authorization-mode=RBAC",
                "--service-cluster-ip-range=10.96.0.0/24",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={workdir / 'sa.pub'}",
                f"--service-account-signing-key-file={workdir / 'sa.key'}",
                "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,PodSecurity,DefaultStorageClass",
                f"--audit-policy-file={workdir / 'audit-policy.yaml'}",
                f"--audit-log-path={cluster.audit_log}",
                "--audit-log-mode=blocking",
                "--endpoint-reconciler-type=none",
                "--enable-priority-and-fairness=false",
            ],
        )

        def api_ready() -> bool:
            for name, proc in cluster.procs.items():
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited with {proc.returncode}:\n{cluster.log(name)[-3000:]}")
            with cluster.api() as api:
                return api.get("/readyz").status_code == 200

        wait_until(api_ready, 90, "kube-apiserver /readyz", every=0.3)
        _start(
            cluster,
            "kube-controller-manager",
            [
                str(bin_dir / "kube-controller-manager"),
                f"--kubeconfig={cluster.kubeconfig}",
                "--leader-elect=false",
                f"--root-ca-file={ca}",
                f"--service-account-private-key-file={workdir / 'sa.key'}",
                "--use-service-account-credentials=true",
                "--controllers=*,-node-lifecycle-controller",
                "--secure-port=0",
            ],
        )

        def default_service_account() -> bool:
            if cluster.procs["kube-controller-manager"].poll() is not None:
                raise AssertionError(
                    f"kube-controller-manager exited:\n{cluster.log('kube-controller-manager')[-3000:]}"
                )
            with cluster.api() as api:
                return api.get("/api/v1/namespaces/default/serviceaccounts/default").status_code == 200

        # The service-account controller is running once it has made the default namespace's account.
        wait_until(default_service_account, 90, "the service-account controller", every=0.3)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def connect_cluster(kubeconfig: Path, workdir: Path, audit_log: Path | None) -> Cluster:
    """A cluster of the user's, from the current context of ``kubeconfig`` (token or client
    certificate, as kind writes it); ``audit_log``: where its API server's audit log can be read."""
    config = yaml.safe_load(kubeconfig.read_text())
    (context,) = [c["context"] for c in config["contexts"] if c["name"] == config["current-context"]]
    (server,) = [c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"]]
    (user,) = [u["user"] for u in config["users"] if u["name"] == context["user"]]
    workdir.mkdir(parents=True, exist_ok=True)

    def file(data_key: str, path_key: str, section: dict[str, Any], name: str) -> str:
        if path_key in section:
            return str(section[path_key])
        (workdir / name).write_bytes(base64.b64decode(section[data_key]))
        return str(workdir / name)

    ca = file("certificate-authority-data", "certificate-authority", server, "ca.crt")
    cert = None
    if "token" not in user:
        cert = (
            file("client-certificate-data", "client-certificate", user, "admin.crt"),
            file("client-key-data", "client-key", user, "admin.key"),
        )
    return Cluster(workdir, server["server"], Path(ca), user.get("token"), audit_log, kubeconfig, None, cert)


def kubectl_env(cluster: Cluster) -> dict[str, str]:
    return {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}


def install_k8s() -> Path | None:
    """Build (or find) the binaries with .ci/install-k8s; None if that fails."""
    found = binaries()
    if found is not None:
        return found
    result = subprocess.run(["bash", str(REPO / ".ci" / "install-k8s")], capture_output=True, text=True, check=False)
    return Path(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 and result.stdout.strip() else None


def poll(predicate: Any, timeout: float, what: str, every: float = 0.2) -> Any:
    """The controllers are asynchronous: poll with a deadline, never sleep a fixed time."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)
