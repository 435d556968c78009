"""A real headless browser for the web-page tests: rlir/utils/browser.py's Chromium (Debian's chromium
driven through Selenium). Where selenium, chromium or chromium-driver is missing the tests that need a
browser are skipped, never faked."""
from __future__ import annotations

import contextlib

import pytest

from rlir.utils.browser import BrowserUnavailable, headless_chromium


@contextlib.contextmanager
def browser(width: int = 1280, height: int = 900):
    """A headless Chromium WebDriver; closed on exit. Skips the calling test when no browser is installed."""
    with contextlib.ExitStack() as stack:
        try:
            d = stack.enter_context(headless_chromium(width, height))
        except BrowserUnavailable as e:
            pytest.skip(str(e))
        yield d
