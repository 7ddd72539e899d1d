"""The dashboard in a real headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium; scripts/test.sh installs them).

Against the real broker with real MQTT clients: the page loads without console
errors, the login works from the keyboard, the live charts move while clients publish,
search finds a client and Kick removes it from the table and disconnects it (MQTT 5.0
DISCONNECT 0x98), the topic browser shows a retained message published with the
publish form, and the pages fit a phone's width. Screenshots are written to
``$IOTBROKER_TEST_ARTEFACTS/admin`` (default: the test's temporary directory).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from tests.admin.helpers import ALICE, WAIT, Http, Mqtt, admin_config, admin_url, make_passwords
from tests.helpers.broker_process import BrokerProcess

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
for _path in (CHROMIUM, CHROMEDRIVER):
    assert shutil.which(_path), (f"{_path} is not installed "
                                 "(apt-get install chromium chromium-driver)")

ADMINISTRATIVE_ACTION = 0x98


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerProcess, str]]:
    workdir = tmp_path_factory.mktemp("dashboard")
    make_passwords(workdir)
    proc = BrokerProcess(workdir, admin_config(workdir)).start()
    yield proc, admin_url(proc)
    proc.stop()
    assert "Traceback" not in proc.log_text()


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = os.environ.get("IOTBROKER_TEST_ARTEFACTS")
    path = Path(root) / "admin" if root else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser(env: tuple[BrokerProcess, str]) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(15)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def logged_in(browser: WebDriver, env: tuple[BrokerProcess, str]) -> WebDriver:
    """Log in with the keyboard only: type, Tab, type, Enter."""
    browser.get(env[1] + "/")
    wait_for(lambda: browser.find_element(By.ID, "login").is_displayed())
    assert browser.switch_to.active_element == browser.find_element(By.ID, "username")
    browser.switch_to.active_element.send_keys(ALICE[0], Keys.TAB)
    browser.switch_to.active_element.send_keys(ALICE[1], Keys.ENTER)
    wait_for(lambda: browser.find_element(By.ID, "nav").is_displayed())
    return browser


@pytest.fixture
def clients() -> Iterator[list[Mqtt]]:
    made: list[Mqtt] = []
    yield made
    for client in made:
        client.close()


def wait_for(check: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # element not there yet
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"timed out; last error: {last!r}")


def console_errors(driver: WebDriver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def go(driver: WebDriver, hash_route: str) -> None:
    driver.execute_script("location.hash = arguments[0]", hash_route)


def test_loads_without_console_errors_and_the_charts_move(
        logged_in: WebDriver, env: tuple[BrokerProcess, str], clients: list[Mqtt],
        artefacts: Path) -> None:
    driver = logged_in
    go(driver, "#/overview")
    wait_for(lambda: driver.find_element(By.ID, "chart-messages"))
    sub = Mqtt(env[0], "dash-load-sub")
    clients.append(sub)
    sub.connect()
    sub.subscribe("dash/load/#")
    pub = Mqtt(env[0], "dash-load-pub")
    clients.append(pub)
    pub.connect()
    stop = threading.Event()

    def load() -> None:  # bounded: at most 3000 messages, at most 6 s
        started = time.monotonic()
        for i in range(3000):
            if stop.is_set() or time.monotonic() - started > 6:
                break
            pub.client.publish(f"dash/load/{i % 10}", b"x" * 32)
            time.sleep(0.002)

    before = driver.execute_script(
        "return document.getElementById('chart-messages').toDataURL()")
    thread = threading.Thread(target=load)
    thread.start()
    try:
        # the "messages per second" figure shows traffic in and out
        wait_for(lambda: all(float(v) > 0 for v in driver.find_element(
            By.ID, "stat-messages").text.split(" / ")), timeout=8)
        wait_for(lambda: driver.find_element(By.ID, "stat-connections").text.startswith("2"))
    finally:
        stop.set()
        thread.join()
    after = driver.execute_script("return document.getElementById('chart-messages').toDataURL()")
    assert after != before, "the chart did not change"
    samples = int(driver.find_element(By.ID, "samples").text)
    time.sleep(1.2)
    assert int(driver.find_element(By.ID, "samples").text) > samples  # one a second
    driver.save_screenshot(str(artefacts / "overview.png"))
    assert console_errors(driver) == []


def test_search_finds_a_client_and_kick_disconnects_it(
        logged_in: WebDriver, env: tuple[BrokerProcess, str], clients: list[Mqtt],
        artefacts: Path) -> None:
    driver = logged_in
    made = {}
    for client_id in ("dash-alpha", "dash-beta-1", "dash-beta-2"):
        made[client_id] = Mqtt(env[0], client_id, username=None)
        clients.append(made[client_id])
        made[client_id].connect()
    go(driver, "#/clients")
    search = wait_for(lambda: driver.find_element(By.ID, "clients-search"))
    search.clear()
    search.send_keys("dash-beta", Keys.ENTER)

    def rows() -> list[str]:
        return [r.get_attribute("data-clientid") or "" for r in
                driver.find_elements(By.CSS_SELECTOR, "#clients-table tbody tr")]

    wait_for(lambda: rows() == ["dash-beta-1", "dash-beta-2"])
    driver.save_screenshot(str(artefacts / "clients.png"))
    driver.find_element(By.CSS_SELECTOR, "button[aria-label='Kick dash-beta-1']").click()
    wait_for(lambda: rows() == ["dash-beta-2"])
    assert made["dash-beta-1"].disconnects.get(timeout=WAIT).value == ADMINISTRATIVE_ACTION
    assert Http(env[1]).get("/api/v1/clients/dash-beta-1").status == 404
    assert "dash-beta-1" in driver.find_element(By.ID, "status").text
    # the client's own page, reached from the table
    driver.find_element(By.LINK_TEXT, "dash-beta-2").click()
    wait_for(lambda: "Client dash-beta-2" in driver.find_element(By.CSS_SELECTOR, "#page h2").text)
    assert console_errors(driver) == []


def test_publish_form_and_topic_browser(logged_in: WebDriver, env: tuple[BrokerProcess, str],
                                        clients: list[Mqtt], artefacts: Path) -> None:
    driver = logged_in
    sub = Mqtt(env[0], "dash-pub-sub")
    clients.append(sub)
    sub.connect()
    sub.subscribe("dash/ui/#")
    go(driver, "#/publish")
    wait_for(lambda: driver.find_element(By.ID, "pub-topic")).send_keys("dash/ui/lamp")
    driver.find_element(By.ID, "pub-payload").send_keys("on")
    driver.find_element(By.ID, "pub-retain").click()
    driver.find_element(By.CSS_SELECTOR, "#publish-form button[type=submit]").click()
    wait_for(lambda: "delivered" in driver.find_element(By.ID, "publish-result").text)
    msg = sub.messages.get(timeout=WAIT)
    assert (msg.topic, msg.payload) == ("dash/ui/lamp", b"on")
    driver.save_screenshot(str(artefacts / "publish.png"))
    go(driver, "#/topics")
    field = wait_for(lambda: driver.find_element(By.ID, "topic-filter"))
    field.clear()
    field.send_keys("dash/ui/#", Keys.ENTER)
    wait_for(lambda: "filter=dash" in driver.execute_script("return location.hash"))

    def open_topic() -> bool:  # the table is drawn again after the search: retry
        driver.find_element(By.CSS_SELECTOR, "#topics-table button.topic").click()
        return driver.find_element(By.CSS_SELECTOR, "#topic-detail pre").text == "on"

    wait_for(open_topic)
    driver.save_screenshot(str(artefacts / "topics.png"))
    assert console_errors(driver) == []


def test_usable_on_a_phone(logged_in: WebDriver, env: tuple[BrokerProcess, str],
                           clients: list[Mqtt], artefacts: Path) -> None:
    driver = logged_in
    for client_id in ("phone-sensor-1", "phone-sensor-2"):
        clients.append(Mqtt(env[0], client_id))
        clients[-1].connect()
    driver.set_window_size(390, 844)
    try:
        for route in ("#/overview", "#/clients", "#/bans", "#/publish"):
            go(driver, route)
            time.sleep(0.3)
            width = driver.execute_script(
                "return [document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1], f"{route}: the page is wider than the phone {width}"
        go(driver, "#/clients?q=phone-")
        wait_for(lambda: len(driver.find_elements(
            By.CSS_SELECTOR, "#clients-table tbody tr")) == 2)
        kick = driver.find_element(By.CSS_SELECTOR, "button[aria-label='Kick phone-sensor-1']")
        assert kick.is_displayed() and kick.size["height"] >= 40  # a finger's target
        driver.save_screenshot(str(artefacts / "phone-clients.png"))
    finally:
        driver.set_window_size(1280, 900)
    assert console_errors(driver) == []


def test_every_form_field_has_a_label(logged_in: WebDriver) -> None:
    driver = logged_in
    for route in ("#/clients", "#/topics", "#/subscriptions", "#/bans", "#/publish"):
        go(driver, route)
        time.sleep(0.3)
        unlabelled = driver.execute_script("""
            return [...document.querySelectorAll('main input, main select, main textarea')]
              .filter(e => e.offsetParent !== null)
              .filter(e => !(e.id && document.querySelector(`label[for="${e.id}"]`))
                           && !e.getAttribute('aria-label'))
              .map(e => e.outerHTML)""")
        assert unlabelled == [], route
