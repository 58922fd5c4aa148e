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


#: Debian's chromium, driven by Playwright (PyPI) with its own driver; never ``playwright install``.
CHROMIUM = "/usr/bin/chromium"


def require_browser() -> None:
    """Skip (locally) or fail (CI) without Debian's ``chromium`` or the ``playwright`` package.

    Launch it with ``p.chromium.launch(executable_path=services.CHROMIUM, args=["--no-sandbox"])``.
    """
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        require_service(False, "playwright is not installed: run `make setup`")
    require_service(os.path.exists(CHROMIUM),
                    f"{CHROMIUM} missing: apt-get install --no-install-recommends chromium fonts-liberation")
