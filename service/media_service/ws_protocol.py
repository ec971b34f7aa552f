"""uvicorn's WebSocket protocol, made able to drop a client that has stopped reading.

uvicorn's ``send`` waits until the transport is writable again before it writes anything, the
close frame included; for a client that never reads, that is never, and the connection (its
socket, its buffer, its handler task) would stay until TCP gives up. A close requested while the
socket no longer drains aborts the connection instead: the close frame could not reach that
client anyway, since it would sit behind the data the client is not reading.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class DroppingWebSocketProtocol(WebSocketsSansIOProtocol):
    async def send(self, message):  # type: ignore[no-untyped-def]
        if message["type"] == "websocket.close" and not self.writable.is_set() and not self.disconnected:
            self.transport.abort()  # connection_lost() follows: the handler sees a disconnect
            return
        await super().send(message)
