"""A real headless browser: Debian's chromium driven through Selenium, for the web-page tests and the bench
scripts that look at a page (bench/report_browser_check.py, bench/play_screenshot.py).

`make setup` installs chromium and chromium-driver (apt, as root) and selenium (the test extra). Where any
of them is missing, `headless_chromium` raises BrowserUnavailable with what to install; tests/browser.py
turns that into a skipped test, never a faked one. Nothing in the `rlir` command needs this module."""
from __future__ import annotations

import contextlib
import shutil

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


class BrowserUnavailable(RuntimeError):
    """No selenium, no chromium or no chromedriver on this machine."""


def find_binary(*names: str) -> str | None:
    """The first of `names` on PATH."""
    for n in names:
        if path := shutil.which(n):
            return path
    return None


@contextlib.contextmanager
def headless_chromium(width: int = 1280, height: int = 900, binary: str | None = None, console_log: bool = False):
    """A headless Chromium WebDriver with a width x height window; quit on exit.

    binary: the browser (default: chromium on PATH). console_log: keep the page's console messages,
    uncaught exceptions and failed loads for `driver.get_log("browser")`."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise BrowserUnavailable("selenium is not installed (pip install -e '.[test]')") from None
    chrome, driver = binary or find_binary(*CHROMIUM_NAMES), find_binary("chromedriver")
    if not chrome or not driver:
        raise BrowserUnavailable("chromium / chromium-driver not installed (make setup installs them as root)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                "--disable-extensions", f"--window-size={width},{height}"):
        opts.add_argument(arg)
    if console_log:
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(options=opts, service=Service(driver))
    try:
        yield d
    finally:
        d.quit()
