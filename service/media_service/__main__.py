"""``media-service`` / ``python -m media_service``."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from media_common import logs
from media_common.settings import SettingsError
from media_service import config
from media_service.ice import restrict_host_addresses
from media_service.server import ListenError, Runner


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = config.load(argv)
    except SettingsError as exc:
        print(f"media-service: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_format, settings.log_level, own="media_service")
    restrict_host_addresses(settings.ice_host_addresses)
    try:
        return asyncio.run(Runner(settings).run())
    except ListenError as exc:
        print(f"media-service: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
