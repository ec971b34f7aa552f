"""A WebSocket client that completes the handshake and then reads nothing: a slow client as the
network makes one, for the hub's tests and benchmark."""

from __future__ import annotations

import asyncio
import socket

from websockets.client import ClientProtocol
from websockets.http11 import Response
from websockets.uri import parse_uri


class NonReader:
    """A WebSocket client that completes the handshake and then reads nothing, until told to."""

    def __init__(self, sock: socket.socket, protocol: ClientProtocol) -> None:
        self.sock = sock
        self.protocol = protocol

    @classmethod
    async def open(cls, host: str, port: int, path: str) -> NonReader:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A small window, and the segment size of a real network rather than loopback's 64 KiB, from
        # which the server's kernel sizes its send buffer (about 4 MiB on loopback otherwise).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1400)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (host, port))
            protocol = ClientProtocol(parse_uri(f"ws://{host}:{port}{path}"))
            protocol.send_request(protocol.connect())
            await loop.sock_sendall(sock, b"".join(protocol.data_to_send()))
            async with asyncio.timeout(10):
                while protocol.handshake_exc is None and not any(
                    isinstance(e, Response) for e in protocol.events_received()
                ):
                    data = await loop.sock_recv(sock, 4096)
                    if not data:
                        raise ConnectionError("closed during the handshake")
                    protocol.receive_data(data)
            if protocol.handshake_exc is not None:
                raise protocol.handshake_exc
        except BaseException:
            sock.close()
            raise
        return cls(sock, protocol)

    async def read_to_end(self, timeout: float) -> int | None:
        """Read what the server left, until it ends the connection; the close code if a frame came."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        data = await loop.sock_recv(self.sock, 1 << 16)
                    except ConnectionResetError:
                        break  # aborted by the server
                    if not data:
                        break
                    self.protocol.receive_data(data)
                    if self.protocol.close_rcvd is not None:
                        break
        finally:
            self.sock.close()
        return None if self.protocol.close_rcvd is None else self.protocol.close_rcvd.code
