"""Headless Chromium for the console's browser tests: Debian's ``chromium`` and
``chromium-driver`` (``scripts/install-browser``) driven by Selenium, never a browser download.

Without them the tests skip, except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
AXE = Path(__file__).resolve().parents[1] / "console" / "node_modules" / "axe-core" / "axe.min.js"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1000")


def unavailable(reason: str) -> None:
    """Skip, or fail in CI, where the browser tests must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI runs the browser tests: `bash scripts/install-browser`)")
    pytest.skip(reason)


@contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """A headless Chromium with a fresh profile directory."""
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        unavailable("chromium/chromedriver are not installed")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed (dev extra)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(what: Callable[[], Any], timeout: float = 20.0, poll: float = 0.02, message: str = "") -> Any:
    """Poll ``what`` until it returns something truthy (its value), else fail."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = what()
            if value:
                return value
        except Exception as e:  # the page is changing under us (stale element, mid-navigation)
            last_error = e
        time.sleep(poll)
    raise AssertionError(f"timed out: {message} (last error: {last_error!r})")


def axe_violations(driver: Any) -> list[dict[str, Any]]:
    """Serious and critical axe-core violations of the current page (axe injected from
    tests/console/node_modules, no CDN)."""
    if not AXE.exists():
        unavailable("axe-core is missing: run `bash scripts/install-browser` (npm ci in tests/console)")
    driver.execute_script(AXE.read_text())
    driver.set_script_timeout(30)
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations)).catch(e => done([{id: 'axe-error', impact: 'critical', help: String(e), nodes: []}]));")
    return [{"id": v["id"], "impact": v["impact"], "help": v["help"],
             "nodes": [n.get("target") for n in v.get("nodes", [])][:5]}
            for v in result if v.get("impact") in ("serious", "critical")]
