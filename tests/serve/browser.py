"""A headless Chromium for the page tests: Debian's `chromium` and `chromium-driver` (make test
installs them when missing), driven through Selenium pointed at those executables, so that
nothing is downloaded. Without them the page tests skip, except under CI, where they fail."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver",)
DEFAULT_TIMEOUT_S = 30.0


def _find(names: tuple[str, ...]) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    return None


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (make test installs chromium and chromium-driver)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium WebDriver (one per test module)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    binary, driver_path = _find(CHROMIUM_NAMES), _find(DRIVER_NAMES)
    if binary is None or driver_path is None:
        _missing("Chromium or its WebDriver (chromedriver) is not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in containers
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(
        service=webdriver.ChromeService(executable_path=driver_path), options=options
    )
    driver.set_page_load_timeout(DEFAULT_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(
    driver: Any, condition: Callable[[Any], Any], timeout_s: float = DEFAULT_TIMEOUT_S
) -> Any:
    """Poll condition(driver) until it returns something truthy (that value), or fail with the
    page's console log."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(condition)
    except TimeoutException:
        raise AssertionError(
            f"the page did not reach the condition in {timeout_s} s; console: {console_log(driver)}"
        ) from None


def console_log(driver: Any) -> list[str]:
    try:
        return [entry["message"] for entry in driver.get_log("browser")]
    except Exception:  # not every driver keeps a console log
        return []


def save_screenshot(driver: Any, name: str) -> Path:
    """Save a PNG of the page as a test artefact under $CORRAL_TEST_ARTIFACTS (default
    test-artifacts/ in the working directory); returns its path."""
    directory = Path(os.environ.get("CORRAL_TEST_ARTIFACTS", "test-artifacts"))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
