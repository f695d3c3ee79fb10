"""Every console page, for keyboard, screen-reader and low-vision users: labels,
landmarks, alt texts, one heading, text contrast (WCAG AA), and the keyboard
reaching the content first."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from tests.console_support import (
    ConsoleBed,
    accessibility_problems,
    sign_in,
    wait_for,
)

PAGES = {
    ("gateway", "inv.alice"): ["/investigate", "/followups"],
    ("gateway", "aud.ann"): ["/audit", "/audit/entries", "/audit/plots"],
    ("node", "duty.fred"): ["/inbox", "/policy", "/health"],
}


@pytest.mark.parametrize(("side", "subject"), list(PAGES))
def test_every_page_is_accessible(
    console_bed: ConsoleBed, browser: WebDriver, side: str, subject: str
) -> None:
    console = console_bed.gateway_console if side == "gateway" else console_bed.node_console
    sign_in(browser, console, subject)
    found = {}
    for page in PAGES[(side, subject)]:
        browser.get(f"{console}{page}")
        wait_for(browser, "main h1")
        problems = accessibility_problems(browser)
        if problems:
            found[page] = problems
    assert not found, found


def test_the_keyboard_reaches_the_content_first_and_can_submit_a_query(
    console_bed: ConsoleBed, browser: WebDriver
) -> None:
    sign_in(browser, console_bed.gateway_console, "inv.alice")
    browser.get(f"{console_bed.gateway_console}/investigate")
    wait_for(browser, "#compose")

    # Keys go to the page, as a person types them (not to one element).
    def press(key: str) -> None:
        ActionChains(browser).send_keys(key).perform()

    press(Keys.TAB)
    first = browser.switch_to.active_element
    assert first.get_attribute("class") == "skip" and first.text == "Skip to content"
    press(Keys.ENTER)
    # Every control of the form is reachable with Tab, in order, up to "Run query".
    reached = []
    for _ in range(80):
        press(Keys.TAB)
        active = browser.switch_to.active_element
        reached.append(active.get_attribute("id") or active.get_attribute("value") or "")
        if active.get_attribute("value") == "run":
            break
    assert "case_ref" in reached and reached[-1] == "run", reached
