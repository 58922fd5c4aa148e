"""Checks for the real servers integration tests need (importable as ``services`` from any test)."""

from __future__ import annotations

import os
import shutil

import pytest


def require_service(available: bool, reason: str) -> None:
    """Skip when a real service is missing locally; under CI=true a missing service is a failure."""
    if available:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"required service missing in CI: {reason}")
    pytest.skip(reason)


def require_prometheus() -> None:
    """Skip (locally) or fail (CI) without the ``prometheus`` and ``promtool`` binaries."""
    require_service(shutil.which("prometheus") is not None and shutil.which("promtool") is not None,
                    "prometheus/promtool not installed: run `make services` (Debian: apt-get install prometheus)")


#: The headless browser the page tests drive (Debian's ``chromium``; never ``playwright install``).
CHROMIUM = os.environ.get("CANARY_CHROMIUM", "/usr/bin/chromium")


def require_browser() -> str:
    """Skip (locally) or fail (CI) without Debian's chromium or Playwright; return the browser's path."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        require_service(False, "playwright is not installed in .venv: run `make setup`")
    require_service(os.access(CHROMIUM, os.X_OK),
                    f"no headless browser at {CHROMIUM}: run `make services` (Debian: apt-get install "
                    "--no-install-recommends chromium fonts-liberation)")
    return CHROMIUM
