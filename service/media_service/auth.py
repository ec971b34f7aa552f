"""Access tokens: who a client is and what it may do, from a signed JWT (PyJWT).

Pure logic, no web framework: the endpoints hand over the ``Authorization`` header or the
``access_token`` query value and get an ``Identity`` or an ``AuthError`` whose ``reason`` is the
label of ``media_auth_failures_total``. The token is never part of an error message, so a refusal
can be logged and answered as it is.

Which algorithm verifies a token is decided by the key, never by the token's header: the HMAC
secret verifies HS256 only, a JWKS key its one algorithm (EC P-256: ES256, Ed25519: EdDSA, RSA:
RS256). A header asking for ``none``, or for HS256 under an RSA key's ``kid``, is refused. The key
is chosen by the header's ``kid``; a token without one is checked against the secret, or against
the JWKS's only key when there is no secret. Key files are read again when they change on disk, so
a JWKS mounted from a ConfigMap rotates without a restart.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt.exceptions import InvalidSubjectError

from media_common import logs

log = logs.get("media_service.auth")

#: User and device names: what a ``sub`` and a ``?device=`` may be.
NAME = re.compile(r"[A-Za-z0-9._@:+-]{1,128}")
#: A longer token is refused before it is parsed.
MAX_TOKEN_BYTES = 4096
#: Clock difference tolerated on exp, nbf and iat.
LEEWAY_SECONDS = 10
#: The HMAC secret must be at least this long (RFC 7518 §3.2: a key as long as the hash).
MIN_SECRET_BYTES = 32
#: Every value of media_auth_failures_total{reason}, created up front.
REASONS = (
    "missing",
    "malformed",
    "oversized",
    "wrong_algorithm",
    "unknown_kid",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "wrong_audience",
    "wrong_issuer",
    "missing_claim",
    "invalid_claim",
    "user_mismatch",
)
#: The algorithm each kind of public key verifies, and nothing else.
JWK_ALGORITHMS: dict[tuple[Any, Any], str] = {
    ("EC", "P-256"): "ES256",
    ("OKP", "Ed25519"): "EdDSA",
    ("RSA", None): "RS256",
}
#: A grant naming this user allows messages to anyone.
ANYONE = "*"


class AuthError(Exception):
    """A refused token; ``reason`` is a value of REASONS, the message says why without the token."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason


class KeyConfigError(ValueError):
    """Keys that cannot be used; the message is one line naming the file."""


@dataclass(frozen=True)
class Grants:
    """What a token allows. A token without a ``grants`` claim allows everything (``ALL``)."""

    publish: bool = True
    message: frozenset[str] = frozenset({ANYONE})

    def may_message(self, user: str) -> bool:
        return ANYONE in self.message or user in self.message

    def claim(self) -> dict[str, Any]:
        return {"publish": self.publish, "message": sorted(self.message)}


ALL = Grants()


@dataclass(frozen=True)
class Identity:
    user: str
    grants: Grants = ALL


@dataclass(frozen=True)
class Key:
    algorithm: str
    key: Any  # bytes for HS256, a cryptography public key otherwise


@dataclass(frozen=True)
class KeySet:
    secret: Key | None = None
    by_kid: Mapping[str, Key] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.secret is not None or bool(self.by_kid)

    def pick(self, kid: Any) -> Key:
        if kid is not None:
            if not isinstance(kid, str) or kid not in self.by_kid:
                raise AuthError("unknown_kid", "the token's key id is not among the configured keys")
            return self.by_kid[kid]
        if self.secret is not None:
            return self.secret
        if len(self.by_kid) == 1:
            return next(iter(self.by_kid.values()))
        raise AuthError("unknown_kid", "the token has no key id and several keys are configured")


def read_secret(path: str) -> Key:
    try:
        with open(path, "rb") as f:
            secret = f.read().strip()
    except OSError as exc:
        raise KeyConfigError(f"cannot read MEDIA_AUTH_SECRET_FILE={path}: {exc.strerror}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise KeyConfigError(f"MEDIA_AUTH_SECRET_FILE={path} holds {len(secret)} bytes; at least {MIN_SECRET_BYTES}")
    return Key("HS256", secret)


def parse_jwks(text: str, source: str = "MEDIA_AUTH_JWKS_FILE") -> dict[str, Key]:
    """The public keys of a JWKS document, by kid; KeyConfigError on anything doubtful."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise KeyConfigError(f"{source} is not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list) or not document["keys"]:
        raise KeyConfigError(f'{source} is not a JWKS: expected {{"keys": [...]}} with at least one key')
    keys: dict[str, Key] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict):
            raise KeyConfigError(f"{source}: every key is a JSON object")
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            raise KeyConfigError(f"{source}: every key needs a 'kid'")
        if kid in keys:
            raise KeyConfigError(f"{source}: kid {kid!r} appears twice")
        if "d" in jwk or jwk.get("kty") == "oct":
            raise KeyConfigError(f"{source}: key {kid!r} is private or symmetric; a JWKS here holds public keys only")
        kind = (jwk.get("kty"), None if jwk.get("kty") == "RSA" else jwk.get("crv"))
        algorithm = JWK_ALGORITHMS.get(kind)
        if algorithm is None:
            raise KeyConfigError(f"{source}: key {kid!r} is {kind}; expected EC P-256, OKP Ed25519 or RSA")
        if jwk.get("alg", algorithm) != algorithm:
            raise KeyConfigError(f"{source}: key {kid!r} says alg {jwk['alg']!r}, its type verifies {algorithm}")
        try:
            public = jwt.PyJWK(jwk, algorithm).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
            raise KeyConfigError(f"{source}: key {kid!r} is unusable: {exc}") from None
        if algorithm == "RS256" and public.key_size < 2048:
            raise KeyConfigError(f"{source}: key {kid!r} has {public.key_size} bits; RSA keys need 2048")
        keys[kid] = Key(algorithm, public)
    return keys


def read_jwks(path: str) -> dict[str, Key]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyConfigError(f"cannot read MEDIA_AUTH_JWKS_FILE={path}: {exc}") from None
    return parse_jwks(text, f"MEDIA_AUTH_JWKS_FILE={path}")


class KeyFiles:
    """The keys in the secret and JWKS files, read again when a file changes (checked at most once
    per ``check_interval``). A change that cannot be read keeps the keys in use, with an error log:
    a half-written file must not lock every client out."""

    def __init__(
        self,
        secret_file: str = "",
        jwks_file: str = "",
        *,
        extra_secret: bytes | None = None,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._secret_file, self._jwks_file = secret_file, jwks_file
        self._extra = Key("HS256", extra_secret) if extra_secret is not None else None
        self._interval, self._clock = check_interval, clock
        self._stamp = self._stat()
        self._keys = self._read()  # raises KeyConfigError: start-up stops
        self._checked = clock()

    def _stat(self) -> tuple[tuple[int, int] | None, ...]:
        stamps: list[tuple[int, int] | None] = []
        for path in (self._secret_file, self._jwks_file):
            try:
                st = os.stat(path) if path else None
            except OSError:
                st = None
            stamps.append((st.st_mtime_ns, st.st_size) if st else None)
        return tuple(stamps)

    def _read(self) -> KeySet:
        secret = read_secret(self._secret_file) if self._secret_file else self._extra
        return KeySet(secret, read_jwks(self._jwks_file) if self._jwks_file else {})

    def current(self) -> KeySet:
        now = self._clock()
        if now - self._checked >= self._interval:
            self._checked = now
            stamp = self._stat()
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._keys = self._read()
                    log.info("auth_keys_reloaded", kids=sorted(self._keys.by_kid), secret=self._keys.secret is not None)
                except KeyConfigError as exc:
                    log.error("auth_keys_reload_failed", error=str(exc))
        return self._keys


class Verifier:
    def __init__(
        self,
        keys: Callable[[], KeySet],
        *,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = LEEWAY_SECONDS,
    ) -> None:
        self._keys, self._audience, self._issuer, self._leeway = keys, audience, issuer, leeway

    def verify(self, token: str | None) -> Identity:
        """The identity a token proves; AuthError with the reason otherwise."""
        if not token:
            raise AuthError("missing", "an access token is required")
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError("oversized", f"the access token is over {MAX_TOKEN_BYTES} bytes")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthError("malformed", "the access token is not a JWT") from None
        key = self._keys().pick(header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.InvalidTokenError as exc:
            raise _refusal(exc) from None
        return identity_of(claims)


def _refusal(exc: jwt.InvalidTokenError) -> AuthError:
    """PyJWT's exception as a reason; its messages never contain the token."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        reason = {"aud": "wrong_audience", "iss": "wrong_issuer"}.get(exc.claim, "missing_claim")
        return AuthError(reason, f"the access token has no {exc.claim!r} claim")
    table: tuple[tuple[type[Exception], str, str], ...] = (
        (jwt.InvalidSignatureError, "bad_signature", "the access token's signature does not verify"),
        (jwt.InvalidAlgorithmError, "wrong_algorithm", "the access token's algorithm is not the key's"),
        (jwt.ExpiredSignatureError, "expired", "the access token has expired"),
        (jwt.ImmatureSignatureError, "not_yet_valid", "the access token is not valid yet"),
        (jwt.InvalidAudienceError, "wrong_audience", "the access token is for another audience"),
        (jwt.InvalidIssuerError, "wrong_issuer", "the access token is from another issuer"),
        (InvalidSubjectError, "invalid_claim", "the access token's 'sub' is not a string"),
        (jwt.InvalidIssuedAtError, "invalid_claim", "the access token's 'iat' is not a number"),
        (jwt.DecodeError, "malformed", "the access token cannot be decoded"),
    )
    for kind, reason, message in table:
        if isinstance(exc, kind):
            return AuthError(reason, message)
    return AuthError("invalid_claim", "the access token's claims are invalid")


def identity_of(claims: Mapping[str, Any]) -> Identity:
    user = claims.get("sub")
    if not isinstance(user, str) or not NAME.fullmatch(user):
        raise AuthError("invalid_claim", "'sub' must be 1-128 characters of A-Z a-z 0-9 . _ @ : + -")
    if "grants" not in claims:
        return Identity(user)
    return Identity(user, grants_of(claims["grants"]))


def grants_of(claim: Any) -> Grants:
    """The ``grants`` claim: {"publish": bool, "message": [user or "*", ...]}; what it leaves out is
    not granted. Unknown keys are ignored, so newer tokens still work here."""
    if not isinstance(claim, dict):
        raise AuthError("invalid_claim", "'grants' must be an object")
    publish = claim.get("publish", False)
    message = claim.get("message", [])
    if not isinstance(publish, bool):
        raise AuthError("invalid_claim", "'grants.publish' must be true or false")
    if not isinstance(message, list) or not all(
        isinstance(u, str) and (u == ANYONE or NAME.fullmatch(u)) for u in message
    ):
        raise AuthError("invalid_claim", "'grants.message' must be a list of user names or '*'")
    return Grants(publish, frozenset(message))


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header; None without the header."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("malformed", "the Authorization header is not 'Bearer <token>'")
    return token.strip()


# Minting: `media-service token`, the development mode and the tests.

TTL = re.compile(r"(\d+)([smhd]?)")
TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(raw: str) -> int:
    """a duration: 90, 90s, 15m, 1h or 7d"""
    match = TTL.fullmatch(raw.strip())
    seconds = int(match.group(1)) * TTL_UNITS[match.group(2)] if match else 0
    if not 1 <= seconds <= 366 * 86400:
        raise ValueError("expected a duration from 1s to 366d, like 90s, 15m, 1h or 7d")
    return seconds


def parse_grants(items: Iterable[str]) -> Grants:
    """``publish``, ``message:USER`` or ``message:*``, each given once per flag."""
    publish, message = False, set()
    for item in items:
        if item == "publish":
            publish = True
        elif item.startswith("message:") and (item[8:] == ANYONE or NAME.fullmatch(item[8:])):
            message.add(item[8:])
        else:
            raise ValueError(f"unknown grant {item!r}: expected publish, message:USER or message:*")
    return Grants(publish, frozenset(message))


def mint(
    secret: bytes,
    user: str,
    ttl: float,
    *,
    grants: Grants | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    now: float | None = None,
) -> str:
    """An HS256 token for ``user``, valid ``ttl`` seconds; without ``grants`` it allows everything."""
    if not NAME.fullmatch(user):
        raise ValueError("a user is 1-128 characters of A-Z a-z 0-9 . _ @ : + -")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": user, "iat": issued, "exp": issued + int(ttl), "jti": secrets.token_hex(8)}
    if grants is not None:
        claims["grants"] = grants.claim()
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")
