"""Console sessions against the attacks on them: a flood of started sign-ins, a
planted session id, a cross-site link to /signin, a callback nobody started."""

from __future__ import annotations

import time

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from liaison.console.oidc import PendingSignIn, SignedIn
from liaison.console.sessions import (
    COOKIE,
    MAX_PER_PERSON,
    SIGN_IN_COOKIE,
    SessionStore,
    SignInSeal,
)
from tests.console_support import (
    ConsoleBed,
    session_cookie,
    sign_in,
    wait_for,
)


def _user(subject: str = "inv.alice") -> SignedIn:
    return SignedIn(
        subject=subject,
        name="Alice",
        agency="genovia",
        roles=("investigator",),
        issuer="https://idp.example/genovia",
        access_token="t",
        expires_at=time.time() + 3600,
    )


def test_one_person_signing_in_again_and_again_pushes_out_only_their_own_sessions() -> None:
    store = SessionStore(ttl_s=3600)
    bob = store.signed_in(_user("inv.bob"))
    alice = [store.signed_in(_user("inv.alice")) for _ in range(MAX_PER_PERSON + 40)]
    assert store.get(bob.id) is bob
    assert store.get(alice[-1].id) is alice[-1]
    assert store.get(alice[0].id) is None
    assert sum(store.get(s.id) is not None for s in alice) == MAX_PER_PERSON


def test_a_sign_in_under_way_is_sealed_and_a_forged_one_is_refused() -> None:
    seal = SignInSeal()
    pending = PendingSignIn("state", "nonce", "v" * 64, time.time())
    sealed = seal.seal(pending)
    assert seal.open(sealed) == pending
    assert "v" * 16 not in sealed  # the PKCE verifier is not readable in the cookie
    flipped = sealed[:20] + ("A" if sealed[20] != "A" else "B") + sealed[21:]
    for forged in (flipped, "", "x" * 5000, "not-base64!", SignInSeal().seal(pending)):
        assert seal.open(forged) is None, forged


def test_a_session_id_planted_before_sign_in_is_worthless(
    console_bed: ConsoleBed, browser: WebDriver
) -> None:
    console = console_bed.gateway_console
    browser.delete_all_cookies()
    browser.get(f"{console}/")
    planted = "planted-by-someone-else-" + "x" * 20
    browser.add_cookie({"name": COOKIE, "value": planted, "path": "/", "secure": True})
    browser.get(f"{console}/signin")
    wait_for(browser, 'button[name="subject"][value="inv.alice"]').click()
    wait_for(browser, "header .who form")
    assert session_cookie(browser) != planted
    assert browser.get_cookie(SIGN_IN_COOKIE) is None  # spent


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
