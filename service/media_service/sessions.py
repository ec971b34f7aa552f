"""WebRTC sessions: one aiortc RTCPeerConnection each, echoing back whatever the peer sends
(media as the RTP packets it sent, ``relay.py``, unless ``MEDIA_ECHO_MODE=transcode``).

Every session is bounded (remote ICE candidates, time to connect, time to close) and removed the
moment its peer connection fails or closes. All its tasks, including the ones aiortc starts, are
created under the session's owner id, so the leak detector can tell a live session's tasks from
orphans.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCDataChannel, RTCIceCandidate, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InvalidAccessError, InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import candidate_from_sdp

from media_common import logs
from media_service import certificates
from media_service.certificates import CertificateSource
from media_service.config import Settings
from media_service.dtls import prefer_server
from media_service.errors import ErrorCode
from media_service.ice import restrict_remote_addresses, rtc_configuration
from media_service.icemux import IceMux, joining
from media_service.leak.ownership import Owner, owned_by
from media_service.memory import MemoryTrimmer, libc_trim
from media_service.metrics import KEYFRAME_REQUEST_RESULTS, ServiceMetrics
from media_service.offer import OfferLimits, OfferRefused
from media_service.offer import check_offer as check_offer_shape
from media_service.ratelimit import TokenBucket
from media_service.relay import Counters, echo_forwarded

log = logs.get("media_service.sessions")

OnClosed = Callable[["Session", str], None]

#: Past this many users' offer buckets, the ones refilled to full are forgotten.
OFFER_BUCKETS_PRUNE_AT = 10_000
#: The mids of the media sections of an SDP.
MID = re.compile(r"^a=mid:(\S+)", re.MULTILINE)

#: What aiortc raises for an offer it cannot answer: the client's fault, answered with bad_request.
REJECTED_OFFER = (
    ValueError,
    AssertionError,
    IndexError,
    KeyError,
    OperationError,
    InvalidAccessError,
    InvalidStateError,
)


class SessionError(Exception):
    """A refused request; ``code`` is the protocol's error code."""

    code = ErrorCode.INTERNAL
    retryable = False


class BadRequest(SessionError):
    code = ErrorCode.BAD_REQUEST


class UnknownSession(SessionError):
    code = ErrorCode.UNKNOWN_SESSION


class CandidateLimit(SessionError):
    code = ErrorCode.ICE_CANDIDATE_LIMIT


class SessionLimit(SessionError):
    code = ErrorCode.SESSION_LIMIT
    retryable = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds until a slot is sure to free, when known


class OfferRateLimited(SessionError):
    code = ErrorCode.RATE_LIMITED
    retryable = True

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # one offer's worth of refill


class Draining(SessionError):
    code = ErrorCode.DRAINING
    retryable = True


class Forbidden(SessionError):
    """The access token does not grant this."""

    code = ErrorCode.FORBIDDEN


@dataclass(eq=False)
class Session:
    id: str
    pc: RTCPeerConnection
    owner: Owner
    candidates: int = 0
    listeners: list[OnClosed] = field(default_factory=list)
    user: str | None = None  # who opened it: only that user's tokens may change or end it
    tracks: int = 0  # audio/video sections: aiortc holds an OS thread for each when transcoding
    via: str = "ws"  # the protocol that opened it (ws or whip): only that protocol may act on it
    answer: str = ""  # the answer SDP: its ICE credentials name the ICE session (the WHIP ETag)


class SessionManager:
    """Creates, tracks and closes sessions; the only place that touches RTCPeerConnection."""

    def __init__(
        self,
        settings: Settings,
        metrics: ServiceMetrics,
        accepting: Callable[[], bool],
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._accepting = accepting
        self._sessions: dict[str, Session] = {}
        self._reserved = 0  # offers being answered: they hold a slot before they exist
        self._tracks = 0  # audio/video sections of live sessions and of offers being answered
        self._per_user: dict[str | None, int] = {}  # sessions (and offers being answered) per user
        self._offer_buckets: dict[str, TokenBucket] = {}  # answered offers per user and second
        # Process-wide (aioice has one validation function): the last manager's settings and metrics.
        restrict_remote_addresses(
            settings.ice_allow_loopback,
            settings.ice_allow_private,
            lambda reason: metrics.ice_candidates_refused.labels(reason=reason).inc(),
        )
        self._limits = OfferLimits(
            max_bytes=settings.max_offer_bytes,
            max_sections=settings.max_offer_sections,
            max_tracks=settings.max_offer_tracks,
            max_codecs=settings.max_offer_codecs,
            max_attributes=settings.max_offer_attributes,
        )
        self._forward = settings.echo_mode == "forward"
        relayed = {result: metrics.keyframe_requests.labels(result=result) for result in KEYFRAME_REQUEST_RESULTS}
        self._relay_counters = Counters(
            keyframe_requests=lambda result: relayed[result].inc(),
            packets_dropped=lambda reason: metrics.forwarded_packets_dropped.labels(reason=reason).inc(),
        )
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._certificates = CertificateSource(settings.dtls_certificate_rotation)
        certificates.install()
        self._trimmer = MemoryTrimmer(libc_trim())  # closed sessions' memory back to the system
        self._closing: set[asyncio.Task[Any]] = set()
        self.ice_mux: IceMux | None = None  # the shared ICE port, once the server has bound it
        self._shut = asyncio.Event()  # close_all ran: an offer answered after it must not become a session
        self.empty = asyncio.Event()
        self.empty.set()

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def get(self, session_id: str) -> Session:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise UnknownSession(f"no session {session_id!r}") from None

    async def open(
        self, offer_sdp: Any, on_closed: OnClosed | None = None, *, user: str | None = None, via: str = "ws"
    ) -> tuple[Session, str]:
        """Answer an offer: returns the new session and the answer SDP. Refusals are counted here,
        whichever way the offer came (WebSocket or WHIP)."""
        try:
            return await self._open(offer_sdp, on_closed, user, via)
        except SessionError as exc:
            self._metrics.sessions_rejected.labels(code=exc.code).inc()
            raise

    async def _open(
        self, offer_sdp: Any, on_closed: OnClosed | None, user: str | None, via: str
    ) -> tuple[Session, str]:
        if self._shut.is_set() or not self._accepting():
            raise Draining("the server is draining; retry on another instance")
        if len(self._sessions) + self._reserved >= self._settings.max_sessions:
            raise SessionLimit(
                f"session limit of {self._settings.max_sessions} reached; retry later", self._next_free_slot()
            )
        held = self._per_user.get(user, 0)
        if user is not None and held >= self._settings.max_sessions_per_user:
            raise SessionLimit(
                f"MEDIA_MAX_SESSIONS_PER_USER ({self._settings.max_sessions_per_user}) sessions held; close one first"
            )
        tracks, bundled = check_offer(offer_sdp, self._limits)
        mux = self.ice_mux
        if mux is not None and not bundled:
            # aiortc gives each unbundled section its own ICE transport under one ufrag: they
            # cannot share the port, where the ufrag is what tells sessions apart.
            if self._settings.ice_unbundled == "refuse":
                raise BadRequest(
                    "offer rejected: its media sections must share one transport (a=group:BUNDLE of every mid) "
                    "to use the service's one ICE port (MEDIA_ICE_UDP_PORT)"
                )
            self._metrics.ice_mux_fallbacks.inc()
            log.info("ice_mux_fallback", reason="unbundled offer")
            mux = None
        if user is not None and not self._offer_bucket(user).take():
            # After the shape check (linear, cheap), before aiortc (the cost): a user looping
            # offer and bye, or WHIP POST and DELETE, gets answers at a bounded rate.
            raise OfferRateLimited(
                f"more than MEDIA_OFFER_RATE_PER_USER ({self._settings.offer_rate_per_user:g}) offers a second",
                1 / self._settings.offer_rate_per_user,
            )
        if self._tracks + tracks > self._settings.max_tracks:
            raise SessionLimit(
                f"MEDIA_MAX_TRACKS ({self._settings.max_tracks}) audio/video sections are in use; retry later"
            )
        session_id = secrets.token_urlsafe(12)
        owner = Owner(f"session:{session_id}")
        # An offer being answered is a session for the drain: the client must get its answer
        # (or an error) before the drain can decide that nothing is left.
        self._reserved += 1
        self._tracks += tracks
        self._per_user[user] = held + 1
        self.empty.clear()
        try:
            with owned_by(owner), joining(mux), certificates.sharing(self._certificates.current()):
                pc = RTCPeerConnection(rtc_configuration(self._settings.ice_servers))
                session = Session(session_id, pc, owner, user=user, tracks=tracks, via=via)
                if on_closed is not None:
                    session.listeners.append(on_closed)
                self._wire(session)
                try:
                    answer = await asyncio.wait_for(self._answer(pc, offer_sdp), self._settings.session_connect_timeout)
                except BaseException as exc:
                    await self._close_pc(session)
                    if isinstance(exc, REJECTED_OFFER):
                        raise BadRequest(f"offer rejected: {exc or type(exc).__name__}") from None
                    if isinstance(exc, asyncio.TimeoutError):
                        log.warning(
                            "answer_timeout", session=session_id, timeout=self._settings.session_connect_timeout
                        )
                        raise SessionError("timed out answering the offer") from None
                    if isinstance(exc, Exception):
                        # The offer is the only input here: whatever else aiortc trips over on it
                        # (AttributeError, StopIteration as RuntimeError) is the offer's fault too.
                        # A warning, so that a new kind shows up in the logs without a traceback.
                        log.warning("offer_not_answerable", session=session_id, error=type(exc).__name__)
                        raise BadRequest(f"offer rejected: aiortc cannot answer it ({type(exc).__name__})") from None
                    raise
                if self._shut.is_set():  # shutdown closed every session while this one was being answered
                    await self._close_pc(session)
                    raise Draining("the server is shutting down; retry on another instance")
                session.answer = answer
                self._sessions[session_id] = session
                # Armed in the session's scope: the close it may start belongs to the session.
                self._timers[session_id] = asyncio.get_running_loop().call_later(
                    self._settings.session_connect_timeout, self._connect_deadline, session
                )
        except BaseException:
            owner.close()
            self._tracks -= tracks
            self._release_user(user)
            raise
        finally:
            self._reserved -= 1
            self._settle()
        self._metrics.sessions_created.inc()
        self._metrics.sessions_active.set(len(self._sessions))
        log.debug("session_opened", session=session_id, active=len(self._sessions))
        return session, answer

    @staticmethod
    async def _answer(pc: RTCPeerConnection, offer_sdp: str) -> str:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        answer = await pc.createAnswer()
        # The DTLS server whenever the offer lets us choose: see dtls.py for why.
        await pc.setLocalDescription(RTCSessionDescription(sdp=prefer_server(offer_sdp, answer.sdp), type="answer"))
        return pc.localDescription.sdp

    def _wire(self, session: Session) -> None:
        pc = session.pc

        @pc.on("track")
        def echo_track(track: MediaStreamTrack) -> None:
            if self._forward:
                echo_forwarded(pc, track, self._relay_counters)
            else:
                pc.addTrack(track)

        @pc.on("datachannel")
        def echo_channel(channel: RTCDataChannel) -> None:
            @channel.on("message")
            def echo(message: str | bytes) -> None:
                if channel.readyState == "open":
                    channel.send(message)

        @pc.on("connectionstatechange")
        def state_changed() -> None:
            if pc.connectionState in ("failed", "closed"):
                self.close_soon(session.id, "failed" if pc.connectionState == "failed" else "closed")
            elif pc.connectionState == "connected":
                timer = self._timers.pop(session.id, None)
                if timer is not None:
                    timer.cancel()

    def _connect_deadline(self, session: Session) -> None:
        self._timers.pop(session.id, None)
        if session.pc.connectionState != "connected":
            self.close_soon(session.id, "timeout")

    async def add_candidate(self, session_id: str, candidate: Any) -> None:
        """Add one remote candidate (a dict as in RTCIceCandidateInit), or None/'' to end trickling."""
        await self.add_candidates(session_id, [candidate])

    async def add_candidates(self, session_id: str, candidates: Sequence[Any]) -> None:
        """Add remote candidates in order (None or '' ends trickling), all or none: every one is
        parsed, and the cap checked for all of them, before the first is added, so a refused
        request changes nothing."""
        session = self.get(session_id)
        parsed = [
            None
            if candidate is None or (isinstance(candidate, dict) and not candidate.get("candidate"))
            else parse_candidate(candidate)
            for candidate in candidates
        ]
        mids = MID.findall(session.answer)
        for ice in parsed:  # aiortc silently ignores a candidate of no media section: say so instead
            if ice is None:
                continue
            if ice.sdpMid is not None and ice.sdpMid not in mids:
                raise BadRequest(f"candidate rejected: no media section with mid {ice.sdpMid!r}")
            if ice.sdpMid is None and (ice.sdpMLineIndex or 0) >= len(mids):  # parse_candidate: one is set
                raise BadRequest(f"candidate rejected: no media section at index {ice.sdpMLineIndex}")
        count = sum(item is not None for item in parsed)
        if session.candidates + count > self._settings.max_ice_candidates:
            self._metrics.ice_candidates_rejected.inc(count)
            raise CandidateLimit(
                f"session {session_id} has {session.candidates} remote candidates; {count} more would exceed "
                f"{self._settings.max_ice_candidates}"
            )
        with owned_by(session.owner):
            for item in parsed:  # aiortc ignores candidates after end-of-candidates, as before it
                session.candidates += item is not None
                try:
                    await session.pc.addIceCandidate(item)
                except ValueError as exc:
                    raise BadRequest(f"candidate rejected: {exc}") from None

    def close_soon(self, session_id: str, reason: str) -> None:
        """Close from a callback: the task is tracked so shutdown can wait for it."""
        if session_id not in self._sessions:
            return
        task = asyncio.get_running_loop().create_task(self.close(session_id, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self, session_id: str, reason: str) -> bool:
        """Close and forget a session; False if it was already gone. Never raises for the peer."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        timer = self._timers.pop(session_id, None)
        if timer is not None:
            timer.cancel()
        self._tracks -= session.tracks
        self._release_user(session.user)
        self._metrics.sessions_active.set(len(self._sessions))
        self._metrics.sessions_closed.labels(reason=reason).inc()
        with owned_by(session.owner):
            closing = asyncio.get_running_loop().create_task(self._close_pc(session))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
        try:
            # Shielded: cancelling aiortc's close half way would leave its sockets and tasks behind.
            await asyncio.shield(closing)
        finally:
            # Even if this close is cancelled (a second signal), the session is gone: its owner, its
            # bye and the drain's view must follow; close_all waits for the peer close itself.
            session.owner.close()
            for listener in session.listeners:
                listener(session, reason)
            self._trimmer.session_closed()
            log.debug("session_closed", session=session_id, reason=reason, active=len(self._sessions))
            # Only now: whoever waits for "no sessions" (the drain) must find every bye already queued.
            self._settle()
        return True

    def _offer_bucket(self, user: str) -> TokenBucket:
        bucket = self._offer_buckets.get(user)
        if bucket is None:
            if len(self._offer_buckets) >= OFFER_BUCKETS_PRUNE_AT:  # forget those that are back to full
                self._offer_buckets = {u: b for u, b in self._offer_buckets.items() if not b.full()}
            rate = self._settings.offer_rate_per_user
            bucket = self._offer_buckets[user] = TokenBucket(rate=rate, burst=max(1.0, 2 * rate))
        return bucket

    def _next_free_slot(self) -> float:
        """When a slot frees for sure: the earliest connect deadline of a session that has not
        connected (each may hold its slot that long). With every session connected, none is sure
        to end: the connect timeout, the time a new session may hold a slot unconnected."""
        now = asyncio.get_running_loop().time()
        deadlines = [timer.when() - now for timer in self._timers.values()]
        return max(1.0, min(deadlines, default=self._settings.session_connect_timeout))

    def _release_user(self, user: str | None) -> None:
        left = self._per_user.get(user, 0) - 1
        if left > 0:
            self._per_user[user] = left
        else:
            self._per_user.pop(user, None)

    def _settle(self) -> None:
        if not self._sessions and not self._reserved:
            self.empty.set()

    async def _close_pc(self, session: Session) -> None:
        try:
            await asyncio.wait_for(session.pc.close(), self._settings.session_close_timeout)
        except TimeoutError:
            log.warning("peer_close_timeout", session=session.id, timeout=self._settings.session_close_timeout)
        except Exception:  # the peer's state must never keep a session alive
            log.exception("peer_close_failed", session=session.id)

    async def close_all(self, reason: str) -> int:
        """Close every session, for good: offers still being answered are refused when they finish."""
        self._shut.set()
        ids = list(self._sessions)
        await asyncio.gather(*(self.close(i, reason) for i in ids))
        if self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)
        self._trimmer.cancel()
        return len(ids)


def check_offer(sdp: Any, limits: OfferLimits) -> tuple[int, bool]:
    """The offer's audio/video sections and whether one transport carries all its sections, or
    BadRequest: aiortc accepts nearly any text as an offer and crashes on some, so its shape and
    size are checked first (``media_service.offer``)."""
    if not isinstance(sdp, str) or not sdp.strip():
        raise BadRequest("offer needs a non-empty 'sdp' string")
    try:
        shape = check_offer_shape(sdp, limits)
    except OfferRefused as exc:
        raise BadRequest(f"offer rejected: {exc}") from None
    return shape.tracks, shape.bundled


def parse_candidate(candidate: Any) -> RTCIceCandidate:
    """An aiortc RTCIceCandidate from an RTCIceCandidateInit dict, or BadRequest."""
    if not isinstance(candidate, dict) or not isinstance(candidate.get("candidate"), str):
        raise BadRequest("candidate must be an object with a 'candidate' string")
    line = candidate["candidate"].strip()
    line = line.removeprefix("a=").removeprefix("candidate:")
    if len(line.split()) < 8 or len(line) > 1024:
        raise BadRequest("candidate is not an ICE candidate line")
    try:
        ice = candidate_from_sdp(line)
    except (AssertionError, ValueError, IndexError) as exc:
        raise BadRequest(f"candidate is not an ICE candidate line ({exc or type(exc).__name__})") from None
    mid, index = candidate.get("sdpMid"), candidate.get("sdpMLineIndex")
    if mid is not None and not isinstance(mid, str):
        raise BadRequest("sdpMid must be a string")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool) or index < 0):
        raise BadRequest("sdpMLineIndex must be a non-negative integer")
    if mid is None and index is None:
        raise BadRequest("candidate needs sdpMid or sdpMLineIndex")
    ice.sdpMid, ice.sdpMLineIndex = mid, index
    return ice
