"""A real headless Chromium for page tests (Debian's ``chromium`` + ``chromium-driver``, driven
through selenium); ``.ci/run`` installs both when missing.

``browser()`` is a context manager that yields a selenium ``WebDriver``; ``console_errors(driver)``
returns the page's console messages of level SEVERE. Where Chromium or its driver cannot be
found, the tests that need them skip with the reason and the install line."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

CHROMIUM_INSTALL = "apt-get install -y --no-install-recommends chromium chromium-driver"


def chromium_paths() -> tuple[str, str]:
    """(chromium, chromedriver), or skip the test naming what is missing and how to install it."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip(f"headless Chromium or its driver is not installed ({CHROMIUM_INSTALL})")
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
    return chromium, driver


@contextmanager
def browser(width: int = 1280, height: int = 900) -> Iterator:
    """A fresh headless Chromium with an empty profile and the console log captured."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="rankedlist-chromium-")
    # The machine's network is closed: without the background-networking flags Chromium keeps
    # trying Google's hosts. --no-sandbox because tests may run as root.
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver) -> list[str]:
    """The console messages of level SEVERE logged so far (JavaScript errors, failed loads)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
