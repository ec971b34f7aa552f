"""A real redis-server (Debian package) on a free loopback port, in a folder of the test's own:
no persistence, killed and restarted at will by the failure tests."""

from __future__ import annotations

import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import free_port
from tests.support.servers import terminate, wait_until
from tests.support.tools import require_tool


@dataclass
class RedisServer:
    binary: str
    port: int
    workdir: Path
    password: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"redis-{self.port}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> RedisServer:
        """Start (again, empty: nothing is saved) on the same port."""
        argv = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(self.log_path),
        ]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(self._answers, 15, f"redis-server on port {self.port}")
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited with {self.proc.returncode}:\n{self.log()}")
        return self.command("PING") in ("+PONG", "-NOAUTH Authentication required.")

    def command(self, *words: str) -> str:
        """One inline command over a fresh connection; the first reply line."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            prefix = f"AUTH {self.password}\r\n" if self.password else ""
            sock.sendall((prefix + " ".join(words) + "\r\n").encode())
            reply = b""
            while reply.count(b"\r\n") < (2 if prefix else 1):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        return reply.decode().split("\r\n")[1 if prefix else 0]

    def kill(self) -> None:
        """Gone at once, as a crashed or partitioned Redis is: no goodbye to its clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, 10)


def redis_server(workdir: Path, password: str | None = None) -> RedisServer:
    binary = require_tool("redis-server", install="apt-get install redis-server (or make tools)")
    return RedisServer(binary, free_port(), workdir, password).start()
