"""The console in a real browser (`make test-console`, not `make test`): Playwright (PyPI; `make
setup-browser`) driving Debian's Chromium, headless, against `streamrec console` served over the real
broker and a real worker of tests/integration's fixtures."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.integration.conftest import baseline_registry, broker  # noqa: F401 (fixtures for these tests)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As this machine needs: root has no user namespace for Chromium's sandbox; the new headless mode is the
# full browser without a window.
CHROMIUM_ARGS = ["--no-sandbox", "--headless=new"]


@pytest.fixture(scope="session")
def chromium():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: run `make setup-browser`")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: run `make setup-browser`")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    """Where each page's screenshot goes: $CONSOLE_SCREENSHOTS (`make test-console`), else a temp dir."""
    found = Path(os.environ["CONSOLE_SCREENSHOTS"]) if os.environ.get("CONSOLE_SCREENSHOTS") else None
    directory = found or tmp_path_factory.mktemp("screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory
