"""The WebSocket signaling protocol for one connection (JSON text frames; see docs/api.md).

Plain logic over the session manager and the hub: the Starlette endpoint only feeds it frames.
Every refusal is answered with an ``error`` message and leaves the connection usable.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from media_common import logs
from media_service.auth import ALL, Grants
from media_service.bus import BusUnavailable
from media_service.errors import ErrorCode
from media_service.hub import encode, size_of
from media_service.ratelimit import TokenBucket
from media_service.sessions import BadRequest, Forbidden, Session, SessionError, SessionLimit, UnknownSession

if TYPE_CHECKING:
    from media_service.core import MediaService
    from media_service.hub import Client

log = logs.get("media_service.signaling")

#: Offers one connection may hold open at once; the process-wide cap is MEDIA_MAX_SESSIONS.
MAX_SESSIONS_PER_CONNECTION = 8
#: A flooding client gets one rate_limited error a second, not one per dropped message.
RATE_ERROR_INTERVAL = 1.0
#: The least a relayed message costs per recipient device, in bytes of MEDIA_WS_RELAY_RATE_BYTES.
RELAY_MIN_COST = 256


class SignalingConnection:
    def __init__(self, service: MediaService, client: Client, grants: Grants = ALL) -> None:
        self._service = service
        self._client = client
        self._grants = grants  # what the client's access token allows
        self.sessions: set[str] = set()
        limit = service.settings.ws_rate_limit
        self._bucket = TokenBucket(rate=limit, burst=max(1.0, 2 * limit))
        relay = service.settings.ws_relay_rate_bytes
        self._relay_bucket = TokenBucket(rate=relay, burst=2 * relay)
        self._last_rate_error = float("-inf")
        self._handlers = {
            "offer": self._offer,
            "candidate": self._candidate,
            "bye": self._bye,
            "message": self._message,
            "ping": self._ping,
        }

    def send(self, message: dict[str, Any]) -> None:
        self._service.hub.send(self._client, message)

    def error(self, code: ErrorCode, message: str, session: str | None = None) -> None:
        self._service.metrics.ws_messages_rejected.labels(code=code).inc()
        body: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if session is not None:
            body["session"] = session
        self.send(body)

    def _admitted(self) -> bool:
        """The rate limit, for every frame the client sends."""
        if self._bucket.take():
            return True
        now = time.monotonic()
        if now - self._last_rate_error >= RATE_ERROR_INTERVAL:
            self._last_rate_error = now
            self.error(ErrorCode.RATE_LIMITED, f"more than {self._service.settings.ws_rate_limit:g} messages a second")
        else:
            self._service.metrics.ws_messages_rejected.labels(code=ErrorCode.RATE_LIMITED).inc()
        return False

    async def handle_binary(self) -> None:
        if self._admitted():
            self.error(ErrorCode.BAD_REQUEST, "binary frames are not part of the protocol")

    async def handle_text(self, text: str) -> None:
        if not self._admitted():
            return
        try:
            message = json.loads(text)
        except json.JSONDecodeError as exc:
            self.error(ErrorCode.BAD_REQUEST, f"malformed JSON: {exc.msg} at position {exc.pos}")
            return
        except (ValueError, RecursionError) as exc:  # integers over 4300 digits, nesting too deep
            self.error(ErrorCode.BAD_REQUEST, f"malformed JSON: {str(exc)[:120] or type(exc).__name__}")
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self.error(ErrorCode.BAD_REQUEST, "a message is a JSON object with a string 'type'")
            return
        handler = self._handlers.get(message["type"])
        if handler is None:
            self.error(ErrorCode.BAD_REQUEST, f"unknown message type {message['type'][:64]!r}")
            return
        session = message.get("session") if isinstance(message.get("session"), str) else None
        try:
            await handler(message)
        except SessionError as exc:
            self.error(exc.code, str(exc), session)
        except Exception:
            log.exception("signaling_failed", type=message["type"])
            self.error(ErrorCode.INTERNAL, "internal error handling the message", session)

    async def close(self) -> None:
        """The connection is gone: its sessions go with it, so nothing outlives the client."""
        for session_id in list(self.sessions):
            await self._service.sessions.close(session_id, "closed")

    async def _offer(self, message: dict[str, Any]) -> None:
        if not self._grants.publish:
            raise Forbidden("the access token does not grant publish")
        if len(self.sessions) >= MAX_SESSIONS_PER_CONNECTION:
            self._service.metrics.sessions_rejected.labels(code=ErrorCode.SESSION_LIMIT).inc()
            raise SessionLimit(f"at most {MAX_SESSIONS_PER_CONNECTION} sessions per connection")
        session, answer = await self._service.sessions.open(
            message.get("sdp"), on_closed=self._session_closed, user=self._client.user
        )
        self.sessions.add(session.id)
        self.send({"type": "answer", "session": session.id, "sdp": answer})

    def _own_session(self, message: dict[str, Any]) -> str:
        session_id = message.get("session")
        if not isinstance(session_id, str):
            raise BadRequest(f"{message['type']} needs a 'session' string")
        if session_id not in self.sessions:
            # Sessions of other connections are invisible: same answer as a session that never was.
            raise UnknownSession(f"no session {session_id[:64]!r} on this connection")
        return session_id

    async def _candidate(self, message: dict[str, Any]) -> None:
        session_id = self._own_session(message)
        if "candidate" not in message:
            raise BadRequest("candidate message needs a 'candidate' (null ends trickling)")
        await self._service.sessions.add_candidate(session_id, message["candidate"])

    async def _bye(self, message: dict[str, Any]) -> None:
        await self._service.sessions.close(self._own_session(message), "closed")

    async def _message(self, message: dict[str, Any]) -> None:
        to = message.get("to")
        if not isinstance(to, str) or not to:
            raise BadRequest("message needs a non-empty 'to' string")
        if not self._grants.may_message(to):
            raise Forbidden(f"the access token does not grant messages to {to[:64]!r}")
        relayed = {
            "type": "message",
            "from": {"user": self._client.user, "device": self._client.device},
            "data": message.get("data"),
        }
        # Fan-out is paid for: the relayed size once per recipient device, at least RELAY_MIN_COST
        # each (a tiny message to thousands of devices costs the loop as much as a big one).
        cost = max(size_of(encode(relayed)), RELAY_MIN_COST)
        if not self._relay_bucket.charge(cost * max(1, self._service.hub.device_count(to))):
            self._service.metrics.ws_messages_rejected.labels(code=ErrorCode.RATE_LIMITED).inc()
            self.send(
                {
                    "type": "error",
                    "code": ErrorCode.RATE_LIMITED,
                    "message": f"more than {self._service.settings.ws_relay_rate_bytes} bytes a second relayed "
                    "(size times recipient devices); the message was not sent",
                }
            )
            return
        local = self._service.hub.send_to_user(to, relayed)
        try:
            # Awaited here, so one connection's messages leave in the order they came.
            remote = await self._service.bus.publish(to, relayed)
        except BusUnavailable as exc:
            self.error(ErrorCode.UNAVAILABLE, f"{exc}; delivered to {local} device(s) on this replica only")
            return
        self._relay_bucket.debit(cost * remote)  # the other replicas' devices, known only now
        if local + remote == 0:
            self.error(ErrorCode.NOT_ONLINE, f"user {to[:64]!r} has no device connected")

    async def _ping(self, message: dict[str, Any]) -> None:
        self.send({"type": "pong"})

    def _session_closed(self, session: Session, reason: str) -> None:
        self.sessions.discard(session.id)
        self.send({"type": "bye", "session": session.id, "reason": reason})
