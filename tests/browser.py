"""Headless Chromium through Debian's chromium and chromedriver (the Makefile installs both;
a browser download by a test tool fails on machines without general network access)."""

from __future__ import annotations

import shutil
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.remote.webdriver import WebDriver


def headless_chromium(*args: str, mobile: dict[str, Any] | None = None) -> WebDriver:
    """A browser session; `args` are extra Chromium flags, `mobile` device metrics to emulate."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "chromium is not installed: run `make test`, which installs it"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        *args,
    ):
        options.add_argument(arg)
    if mobile is not None:
        options.add_experimental_option("mobileEmulation", {"deviceMetrics": mobile})
    return webdriver.Chrome(service=DriverService(driver), options=options)
