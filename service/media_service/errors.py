"""The protocol's error codes, one place for their names and their HTTP statuses.

The WebSocket protocol sends ``{"type": "error", "code": ...}``; WHIP answers the same code in a
JSON body with the status below. Metrics label refusals by these codes too.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    FORBIDDEN = "forbidden"  # the access token does not grant this
    UNKNOWN_SESSION = "unknown_session"
    ICE_CANDIDATE_LIMIT = "ice_candidate_limit"
    SESSION_LIMIT = "session_limit"
    DRAINING = "draining"
    NOT_ONLINE = "not_online"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"  # a part this request needs (the bus, another replica) is down: retry
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    # WHIP only (RFC 9725): conditional PATCH requests and ICE restarts.
    METHOD_NOT_ALLOWED = "method_not_allowed"
    PRECONDITION_REQUIRED = "precondition_required"  # a PATCH without If-Match
    PRECONDITION_FAILED = "precondition_failed"  # an If-Match that is not the ICE session's entity tag
    ICE_RESTART_UNSUPPORTED = "ice_restart_unsupported"
    INTERNAL = "internal"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.UNKNOWN_SESSION: 404,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.ICE_CANDIDATE_LIMIT: 422,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.PRECONDITION_REQUIRED: 428,
    ErrorCode.PRECONDITION_FAILED: 412,
    ErrorCode.ICE_RESTART_UNSUPPORTED: 422,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.SESSION_LIMIT: 503,
    ErrorCode.DRAINING: 503,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.NOT_ONLINE: 404,
    ErrorCode.INTERNAL: 500,
}
