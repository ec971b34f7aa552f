"""``media-service`` / ``python -m media_service``; ``media-service token`` mints an access token."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
from collections.abc import Sequence

from media_common import logs
from media_common.settings import SettingsError
from media_service import config
from media_service.auth import MIN_SECRET_BYTES, KeyConfigError, mint, parse_grants, parse_ttl, read_secret
from media_service.core import build_verifier
from media_service.ice import restrict_host_addresses
from media_service.server import ListenError, Runner

#: Development mode's token: long enough for a day at the desk.
DEV_USER = "dev"
DEV_TTL = 12 * 3600
#: What the token command reads from the environment; other settings cannot stop it.
TOKEN_VARIABLES = ("MEDIA_AUTH_SECRET_FILE", "MEDIA_AUTH_AUDIENCE", "MEDIA_AUTH_ISSUER")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["token"]:
        return token(args[1:])
    try:
        settings = config.load(args)
        dev_secret = secrets.token_bytes(MIN_SECRET_BYTES) if settings.dev and not settings.auth_secret_file else None
        verifier = build_verifier(settings, dev_secret)
    except (SettingsError, KeyConfigError) as exc:
        print(f"media-service: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_format, settings.log_level, own="media_service")
    restrict_host_addresses(settings.ice_host_addresses)
    banner = None
    if settings.dev:
        secret = dev_secret if dev_secret is not None else read_secret(settings.auth_secret_file).key
        banner = dev_banner(settings, secret)
    try:
        return asyncio.run(Runner(settings, verifier, banner=banner).run())
    except ListenError as exc:
        print(f"media-service: {exc}", file=sys.stderr)
        return 1


def dev_banner(settings: config.Settings, secret: bytes) -> str:
    """What development mode prints once listening, as Jupyter prints its URL: the demo page's
    address with a token. Printed, never logged: log lines do not carry tokens."""
    host = "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
    host = f"[{host}]" if ":" in host else host
    access = mint(
        secret, DEV_USER, DEV_TTL, audience=settings.auth_audience or None, issuer=settings.auth_issuer or None
    )
    return (
        f"media-service: development mode; open http://{host}:{settings.port}/?access_token={access}\n"
        f"media-service: (a token for user {DEV_USER!r}, valid {DEV_TTL // 3600} h; the secret lives as long as "
        "the process unless MEDIA_AUTH_SECRET_FILE is set)"
    )


def token(argv: Sequence[str]) -> int:
    """``media-service token --user U [--ttl 1h] [--grant G ...]``: an HS256 token signed with
    MEDIA_AUTH_SECRET_FILE, carrying the configured audience and issuer."""
    parser = argparse.ArgumentParser(
        prog="media-service token",
        description="Print an access token signed with the secret in MEDIA_AUTH_SECRET_FILE, with "
        "MEDIA_AUTH_AUDIENCE and MEDIA_AUTH_ISSUER when set. Without --grant the token allows everything.",
    )
    parser.add_argument("--user", required=True, help="the token's subject: who the client is")
    parser.add_argument("--ttl", default="1h", help="how long the token is valid: 90s, 15m, 1h, 7d [default: 1h]")
    parser.add_argument(
        "--grant",
        action="append",
        metavar="GRANT",
        help="publish, message:USER or message:* (repeat it); with any, the token allows only what is given",
    )
    parser.add_argument("--auth-secret-file", help="instead of MEDIA_AUTH_SECRET_FILE")
    parser.add_argument("--auth-audience", help="instead of MEDIA_AUTH_AUDIENCE")
    parser.add_argument("--auth-issuer", help="instead of MEDIA_AUTH_ISSUER")
    args = parser.parse_args(argv)
    environ = {name: value for name, value in os.environ.items() if name in TOKEN_VARIABLES}
    secret_file = args.auth_secret_file or environ.get("MEDIA_AUTH_SECRET_FILE", "").strip()
    audience = args.auth_audience or environ.get("MEDIA_AUTH_AUDIENCE", "").strip() or None
    issuer = args.auth_issuer or environ.get("MEDIA_AUTH_ISSUER", "").strip() or None
    try:
        ttl = parse_ttl(args.ttl)
        grants = parse_grants(args.grant) if args.grant else None
        if not secret_file:
            raise ValueError("MEDIA_AUTH_SECRET_FILE is not set (a JWKS holds public keys, which cannot sign)")
        print(mint(read_secret(secret_file).key, args.user, ttl, grants=grants, audience=audience, issuer=issuer))
    except (ValueError, KeyConfigError) as exc:
        print(f"media-service token: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
