"""The external tools the tests drive, found where `make tools` and the venv put them."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS_BIN = REPO / ".tools" / "bin"
VENV_BIN = Path(sys.executable).parent


def find_tool(*names: str) -> str | None:
    """The first of ``names`` on PATH, beside the venv's Python, or in .tools/bin."""
    for name in names:
        for candidate in (shutil.which(name), VENV_BIN / name, TOOLS_BIN / name):
            if candidate is not None and Path(candidate).is_file():
                return str(candidate)
    return None


def require_tool(*names: str, install: str = "make tools") -> str:
    """Path of a tool a test drives. Missing in CI (CI=true) is a failure, since a green run must
    have run every test; on a developer's machine the test is skipped, saying how to install it."""
    found = find_tool(*names)
    if found is not None:
        return found
    unavailable(f"{' or '.join(names)} is not installed; install it with: {install}")


def unavailable(message: str) -> NoReturn:
    """A tool a test needs is missing: a failure in CI (CI=true), a skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
