"""A real TURN server (coturn, Debian package ``coturn``) on a free port of one address of this
host, with one long-term user; relayed ports in a small range of its own."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aioice import stun

from tests.support.servers import terminate, wait_until
from tests.support.tools import require_tool

USER, PASSWORD, REALM = "media", "turn-test-password", "media.test"


@dataclass(frozen=True)
class TurnServer:
    address: str
    port: int
    log_path: Path

    def ice_server(self) -> dict[str, str]:
        """The server as an entry of MEDIA_ICE_SERVERS (or an RTCIceServer's fields)."""
        return {"urls": f"turn:{self.address}:{self.port}?transport=udp", "username": USER, "credential": PASSWORD}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _free_udp_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _answers(address: str, port: int) -> bool:
    """A STUN Binding request gets a response (coturn answers those without credentials)."""
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        sock.sendto(bytes(request), (address, port))
        try:
            data = sock.recv(2048)
        except TimeoutError:
            return False
    return stun.parse_message(data).transaction_id == request.transaction_id


@contextlib.contextmanager
def turn_server(workdir: Path, address: str = "127.0.0.1") -> Iterator[TurnServer]:
    binary = require_tool("turnserver", install="apt-get install coturn")
    port = _free_udp_port(address)
    relay_base = 40000 + 100 * (os.getpid() % 200)  # a small range of its own per test process
    log_path = workdir / f"turnserver-{port}.log"
    argv = [
        binary,
        f"--listening-ip={address}",
        f"--relay-ip={address}",
        f"--listening-port={port}",
        f"--min-port={relay_base}",
        f"--max-port={relay_base + 99}",
        "--lt-cred-mech",
        f"--user={USER}:{PASSWORD}",
        f"--realm={REALM}",
        "--fingerprint",
        "--allow-loopback-peers",
        "--no-tls",
        "--no-dtls",
        "--no-tcp-relay",
        "--no-cli",
        "--no-stdout-log",
        f"--log-file={log_path}",
        "--simple-log",
        f"--pidfile={workdir / 'turnserver.pid'}",
        "--userdb=" + str(workdir / "turndb"),
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        server = TurnServer(address, port, log_path)
        wait_until(lambda: proc.poll() is None and _answers(address, port), 15, f"turnserver on {address}:{port}")
        yield server
    finally:
        terminate(proc)
