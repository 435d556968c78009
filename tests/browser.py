"""A real headless browser for the web-page tests: Debian's chromium driven through Selenium.

`make setup` installs chromium and chromium-driver (apt, as root) and selenium (the test extra);
where either is missing the tests that need a browser are skipped, never faked."""
from __future__ import annotations

import contextlib
import shutil

import pytest


def _binary(*names: str) -> str | None:
    for n in names:
        if path := shutil.which(n):
            return path
    return None


@contextlib.contextmanager
def browser(width: int = 1280, height: int = 900):
    """A headless Chromium WebDriver; closed on exit. Skips the calling test when no browser is installed."""
    webdriver = pytest.importorskip("selenium.webdriver")
    chrome, driver = _binary("chromium", "chromium-browser"), _binary("chromedriver")
    if not chrome or not driver:
        pytest.skip("chromium / chromium-driver not installed (make setup installs them as root)")
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}"):
        opts.add_argument(arg)
    d = webdriver.Chrome(options=opts, service=Service(driver))
    try:
        yield d
    finally:
        d.quit()
