"""The monitor in a real headless Chromium from Debian (`chromium`, `chromium-driver`; driven
by Selenium, which downloads nothing with SE_OFFLINE and explicit paths).

An operator signs in with the token, filters the list to FAILED, opens the failed message
and finds the chain and the hint; a subject that is a script stays text. Screenshots are
kept as test artifacts: the pytest tmp dir and ``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from tests.monitor.conftest import HINT, XSS_SUBJECT, MonitorProcess, flowrt

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    for binary, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not binary.exists():
            pytest.fail(f"{binary} is missing: install the Debian package {package}")
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: webdriver.Chrome, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path))
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(path, ARTIFACTS / path.name)
    return path


def loaded(driver: webdriver.Chrome) -> bool:
    return bool(driver.execute_script("return document.readyState") == "complete")


def no_alert(driver: webdriver.Chrome) -> bool:
    try:
        alert = driver.switch_to.alert
    except NoAlertPresentException:
        return True
    return alert is None


def test_an_operator_finds_the_failure(
    tenant: Path,
    filled: dict[str, str],
    processes: Callable[..., MonitorProcess],
    browser: webdriver.Chrome,
    tmp_path: Path,
) -> None:
    token = flowrt(tenant, "monitor", "token").stdout.strip()
    monitor = processes("monitor", "--http", "127.0.0.1:0")

    browser.get(monitor.url + "/messages")
    assert "/login" in browser.current_url  # the token is asked for first
    browser.find_element(By.NAME, "token").send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: "/login" not in d.current_url and loaded(d))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Messages"
    rows = browser.find_elements(By.CSS_SELECTOR, "table.list tbody tr")
    assert len(rows) == 2

    Select(browser.find_element(By.NAME, "status")).select_by_visible_text("FAILED")
    browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
    wait.until(lambda d: "status=FAILED" in d.current_url and loaded(d))  # a link to share
    rows = browser.find_elements(By.CSS_SELECTOR, "table.list tbody tr")
    assert [r.find_element(By.CSS_SELECTOR, ".status").text for r in rows] == ["FAILED"]
    screenshot(browser, tmp_path, "monitor-failed-list")
    rows[0].find_element(By.LINK_TEXT, filled["bad"]).click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "pre.chain") and loaded(d))

    chain = browser.find_element(By.CSS_SELECTOR, "pre.chain").text
    assert chain.startswith("MessagingException: Could not connect to SMTP host")
    assert "nested exception is:" in chain and "SSLHandshakeException: PKIX" in chain
    assert browser.find_element(By.CSS_SELECTOR, ".hint").text == f"Hint: {HINT}"
    # times are shown in the viewer's zone, the UTC instant stays in the title
    when = browser.find_elements(By.CSS_SELECTOR, "time[datetime]")[0]
    assert "UTC" in (when.get_attribute("title") or "")
    assert "UTC" not in when.text
    shot = screenshot(browser, tmp_path, "monitor-failed-message")
    assert shot.stat().st_size > 10_000

    browser.get(f"{monitor.url}/messages/{filled['ok']}")
    assert no_alert(browser)
    cell = browser.find_element(By.CSS_SELECTOR, "table.props td")
    assert cell.text == XSS_SUBJECT  # rendered as text
    assert not browser.find_elements(By.XPATH, "//script[not(@src)]")
    browser.find_element(By.CSS_SELECTOR, "details summary").click()
    assert "onerror" in browser.find_element(By.CSS_SELECTOR, "pre.mail").text
    assert no_alert(browser)
    screenshot(browser, tmp_path, "monitor-script-subject")
