"""``media-operator`` / ``python -m media_operator``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from media_operator.app import run_cli

    return run_cli(argv)


if __name__ == "__main__":
    sys.exit(main())
