"""Network namespaces, veth pairs and nftables rules that a test makes for itself, and removes.

A namespace joined to the test's own by a veth pair stands for a pod: the service runs inside it
(``ip netns exec``), clients stay outside, and an nftables table inside drops every UDP datagram
that is neither to nor from one port. Media then reaches the service only if it uses that port.
Names carry a random suffix, so that runs never meet; everything is removed by the context
managers' finally clauses, whatever the test did.

Needs root, ``ip`` (Debian ``iproute2``) and ``nft`` (Debian ``nftables``): missing, the test
fails in CI and is skipped elsewhere (``tests.support.tools.unavailable``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from tests.support.tools import find_tool, unavailable


def require_netns() -> tuple[str, str]:
    """Paths of ``ip`` and ``nft``, or a failure in CI and a skip elsewhere saying why."""
    ip, nft = find_tool("ip"), find_tool("nft")
    missing = [name for name, path in (("ip (iproute2)", ip), ("nft (nftables)", nft)) if path is None]
    if missing:
        unavailable(f"{' and '.join(missing)} not installed; install with: apt-get install iproute2 nftables")
    if os.geteuid() != 0:
        unavailable("network namespaces need root (CI runs as root)")
    assert ip is not None and nft is not None
    return ip, nft


def run(*command: str, input: str | None = None) -> None:
    result = subprocess.run(command, input=input, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")


@dataclass(frozen=True)
class Namespace:
    name: str
    outside: str  # the test's end of the veth pair (the clients' address)
    inside: str  # the namespace's end (the service's address)
    ip: str
    nft: str

    def exec(self) -> list[str]:
        """The command prefix that runs a program inside the namespace."""
        return [self.ip, "netns", "exec", self.name]

    def udp_only_through(self, port: int) -> None:
        """Inside the namespace, drop every UDP datagram neither to nor from ``port``. Separate
        accept rules: nft 1.0.6 compiles ``udp sport != P udp dport != P`` into one compare."""
        table = f"only_{port}_{self.name.replace('-', '_')}"
        rules = f"""
table inet {table} {{
    chain input {{
        type filter hook input priority 0; policy accept;
        udp dport {port} accept
        udp sport {port} accept
        meta l4proto udp counter drop
    }}
    chain output {{
        type filter hook output priority 0; policy accept;
        udp sport {port} accept
        udp dport {port} accept
        meta l4proto udp counter drop
    }}
}}
"""
        run(self.ip, "netns", "exec", self.name, self.nft, "-f", "-", input=rules)

    def host_port(self, published: int, bound: int) -> None:
        """Inside the namespace, what a hostPort does: UDP to ``published`` is forwarded (DNAT) to
        ``bound``, replies leave from ``published``; ``bound`` itself cannot be reached from
        outside, and the service cannot open flows of its own from it (as behind the node's NAT)."""
        table = f"hostport_{self.name.replace('-', '_')}"
        rules = f"""
table ip {table} {{
    chain guard {{
        type filter hook prerouting priority -300; policy accept;
        udp dport {bound} counter drop
    }}
    chain forward_port {{
        type nat hook prerouting priority -100; policy accept;
        udp dport {published} counter dnat ip to {self.inside}:{bound}
    }}
    chain replies_only {{
        type filter hook output priority 0; policy accept;
        udp sport {bound} ct state new counter drop
    }}
}}
"""
        run(self.ip, "netns", "exec", self.name, self.nft, "-f", "-", input=rules)

    def nft_list(self) -> str:
        return subprocess.run(
            [self.ip, "netns", "exec", self.name, self.nft, "list", "ruleset"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout


def _subnet() -> tuple[str, str]:
    """Two addresses of a random /30 in 10.213.0.0/16."""
    base = ipaddress.ip_address("10.213.0.0") + 4 * secrets.randbelow(16384)
    return str(base + 1), str(base + 2)


@contextlib.contextmanager
def namespace() -> Iterator[Namespace]:
    """A fresh namespace joined to this one by a veth pair, removed (with the pair and every
    nftables table in it) on the way out."""
    ip, nft = require_netns()
    suffix = secrets.token_hex(4)
    name, outside_link, inside_link = f"icemux-{suffix}", f"imo{suffix}", f"imi{suffix}"
    outside, inside = _subnet()
    try:
        run(ip, "netns", "add", name)
        run(ip, "link", "add", outside_link, "type", "veth", "peer", "name", inside_link, "netns", name)
        run(ip, "addr", "add", f"{outside}/30", "dev", outside_link)
        run(ip, "link", "set", outside_link, "up")
        run(ip, "-n", name, "addr", "add", f"{inside}/30", "dev", inside_link)
        run(ip, "-n", name, "link", "set", inside_link, "up")
        run(ip, "-n", name, "link", "set", "lo", "up")
        yield Namespace(name, outside, inside, ip, nft)
    finally:
        subprocess.run([ip, "netns", "del", name], capture_output=True, timeout=30)
        subprocess.run([ip, "link", "del", outside_link], capture_output=True, timeout=30)


def leftovers() -> list[str]:
    """Namespaces and links of these tests still present (none, once every test has finished)."""
    ip = find_tool("ip")
    if ip is None:
        return []
    names = subprocess.run([ip, "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    links = subprocess.run([ip, "-o", "link"], capture_output=True, text=True, timeout=30).stdout
    return [line.split()[0] for line in names.splitlines() if line.startswith("icemux-")] + [
        line.split(":")[1].strip().split("@")[0] for line in links.splitlines() if ": imo" in line
    ]
