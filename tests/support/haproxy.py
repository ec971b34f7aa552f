"""A real haproxy (Debian package) in round robin in front of the service's replicas: a Service
without session affinity, as a Kubernetes user gets by default."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import free_port
from tests.support.servers import terminate, wait_until
from tests.support.tools import require_tool


@dataclass
class Haproxy:
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def stop(self) -> None:
        terminate(self.proc, 10)


def round_robin(workdir: Path, backends: list[tuple[str, int]]) -> Haproxy:
    """Balance HTTP and WebSocket connections over ``backends`` in turn, one request each."""
    binary = require_tool("haproxy", install="apt-get install haproxy (or make tools)")
    port = free_port()
    servers = "\n".join(f"    server r{i} {host}:{p}" for i, (host, p) in enumerate(backends))
    config = workdir / f"haproxy-{port}.cfg"
    config.write_text(f"""global
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout tunnel 120s
    # A new backend per request, as a Service without affinity gives (no keep-alive pinning).
    option http-server-close
frontend public
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
{servers}
""")
    log_path = workdir / f"haproxy-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    balancer = Haproxy(port, proc, log_path)

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"haproxy exited with {proc.returncode}:\n{log_path.read_text()}")
        import socket

        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, 15, f"haproxy on port {port}")
    return balancer
