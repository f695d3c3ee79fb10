"""Console sessions against the attacks on them: a flood of started sign-ins, a
planted session id, a cross-site link to /signin, a callback nobody started."""

from __future__ import annotations

import time

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from liaison.console.oidc import PendingSignIn, SignedIn
from liaison.console.sessions import COOKIE, MAX_STARTING, SessionStore
from tests.console_support import (
    ConsoleBed,
    session_cookie,
    sign_in,
    wait_for,
)


def _user() -> SignedIn:
    return SignedIn(
        subject="inv.alice",
        name="Alice",
        agency="genovia",
        roles=("investigator",),
        issuer="https://idp.example/genovia",
        access_token="t",
        expires_at=time.time() + 3600,
    )


def test_a_flood_of_started_sign_ins_never_pushes_out_a_signed_in_session() -> None:
    store = SessionStore(ttl_s=3600)
    alice = store.signed_in(_user())
    first = store.starting(PendingSignIn("s", "n", "v", time.time()))
    for i in range(MAX_STARTING + 50):
        store.starting(PendingSignIn(f"s{i}", "n", "v", time.time()))
    assert store.get(alice.id) is alice
    # The oldest started sign-ins went instead.
    assert store.get(first.id) is None


def test_signing_in_gives_a_new_session_id(console_bed: ConsoleBed, browser: WebDriver) -> None:
    console = console_bed.gateway_console
    browser.delete_all_cookies()
    browser.get(f"{console}/signin")
    wait_for(browser, 'button[name="subject"]')
    browser.get(f"{console}/")  # back at the console, mid sign-in
    started = browser.get_cookie(COOKIE)
    assert started is not None
    sign_in(browser, console, "inv.alice")
    assert session_cookie(browser) != started["value"]


def test_a_link_to_sign_in_does_not_sign_a_person_out(
    console_bed: ConsoleBed, browser: WebDriver
) -> None:
    console = console_bed.gateway_console
    sign_in(browser, console, "inv.alice")
    before = session_cookie(browser)
    browser.get(f"{console}/signin")
    assert session_cookie(browser) == before
    browser.get(f"{console}/investigate")
    assert "Sign out" in browser.find_element(By.CSS_SELECTOR, "header .who").text


def test_a_callback_nobody_started_here_is_refused(
    console_bed: ConsoleBed, browser: WebDriver
) -> None:
    console = console_bed.gateway_console
    browser.delete_all_cookies()
    browser.get(f"{console}/signin/callback?code=stolen&state=guessed")
    text = wait_for(browser, "main").text
    assert "was not started here" in text
    assert browser.get_cookie(COOKIE) is None
