"""The web consoles' test bed: a demo federation, the development provider, both consoles,
and a headless Debian Chromium driven by Selenium.

Everything is real: node, gateway, provider and console processes on loopback
over TLS, and a real browser that signs in by clicking through the provider.
Screenshots of each page land in ``test-screenshots/`` for a person to look at.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from liaison.demo.consoles import GATEWAY_CONSOLE, NODE_CONSOLE, console_urls, start_consoles
from liaison.demo.processes import stop_service
from liaison.demo.run import build_federation, running_federation

IN_CI = os.environ.get("CI", "").lower() == "true"
CHROMIUM = Path(os.environ.get("LIAISON_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("LIAISON_CHROMEDRIVER", "/usr/bin/chromedriver"))
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-screenshots"
WAIT_S = 15.0


@dataclass(frozen=True, slots=True)
class ConsoleBed:
    root: Path
    gateway: str
    gateway_console: str
    node_console: str
    idp: str


@pytest.fixture(scope="session")
def console_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleBed]:
    """The demo federation over TLS, with the provider and both consoles.

    One per test session (per xdist worker): starting it costs seconds, and
    the console tests only ever add to it (no test may count on it being fresh).
    """
    root = tmp_path_factory.mktemp("console-bed") / "federation"
    root.mkdir()
    quiet = io.StringIO()
    build_federation(root, media=600, accounts=300, tls=True, progress=quiet)
    with running_federation(root, progress=quiet) as gateway:
        services = start_consoles(root, gateway, root / "run")
        try:
            urls = console_urls(services)
            yield ConsoleBed(
                root=root,
                gateway=gateway,
                gateway_console=urls[GATEWAY_CONSOLE],
                node_console=urls[NODE_CONSOLE],
                idp=urls["dev-idp"],
            )
        finally:
            for service in reversed(services):
                stop_service(service)


def _require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        reason = (
            f"{' and '.join(missing)} not installed (Debian packages chromium and "
            "chromium-driver; `make test` installs them where it can)"
        )
        if IN_CI:
            pytest.fail(f"{reason}; under CI=true the browser tests must run")
        pytest.skip(reason)


def _pins(bed: ConsoleBed) -> str:
    """The bed's web certificates' key pins, as Chromium's SPKI list takes them."""
    from liaison.tls import certificate_identity

    pins = []
    for name in ("console", "dev-idp"):
        spki = certificate_identity(bed.root / "pki" / f"{name}.crt").spki_sha256
        pins.append(base64.b64encode(bytes.fromhex(spki)).decode())
    return ",".join(pins)


@pytest.fixture(scope="session")
def browser(
    tmp_path_factory: pytest.TempPathFactory, console_bed: ConsoleBed
) -> Iterator[WebDriver]:
    """Headless Chromium at a laptop's window size.

    It accepts the bed's two web certificates by their keys (pinned), and no
    other: a certificate error anywhere else is still an error.
    """
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1366,900",
        f"--user-data-dir={profile}",
        # The demo's certificates come from a throw-away development CA that no
        # browser knows: trust exactly these keys.
        f"--ignore-certificate-errors-spki-list={_pins(console_bed)}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, css: str, timeout_s: float = WAIT_S) -> WebElement:
    """The first element matching ``css``, once it is there."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    # Mid-navigation, Chromium may answer with an error about a node of the old
    # document: that is "not there yet", as a missing element is.
    return WebDriverWait(driver, timeout_s, ignored_exceptions=[WebDriverException]).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def submit(driver: WebDriver, button: WebElement, timeout_s: float = WAIT_S) -> None:
    """Click ``button`` and wait until the next page has replaced this one and loaded.

    A new document has a new time origin; asking for it needs no element
    handle, which Chromium may refuse mid-navigation.
    """
    before = driver.execute_script("return performance.timeOrigin")
    button.click()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            now, state = driver.execute_script(
                "return [performance.timeOrigin, document.readyState]"
            )
        except WebDriverException:  # mid-navigation: ask again
            now, state = before, ""
        if now != before and state == "complete":
            return
        time.sleep(0.05)
    raise AssertionError(f"no new page within {timeout_s} s of the click")


def sign_in(driver: WebDriver, console: str, subject: str) -> None:
    """Sign ``subject`` in at ``console`` by clicking through the development provider."""
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(f"{console}/")
    driver.delete_all_cookies()
    driver.get(f"{console}/signin")
    button = wait_for(driver, f'button[name="subject"][value="{subject}"]')
    button.click()
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        url: str = driver.current_url
        if url.startswith(console) and "/signin" not in url:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"sign-in of {subject} did not come back to {console}")
    wait_for(driver, "header .who form")
    who = driver.find_element(By.CSS_SELECTOR, "header .who")
    assert "Sign out" in who.text, who.text


def screenshot(driver: WebDriver, name: str) -> Path:
    """A full-window PNG of the current page in ``test-screenshots/<name>.png``."""
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def session_cookie(driver: WebDriver) -> str:
    """The console's session cookie, to time pages outside the browser."""
    from liaison.console.sessions import COOKIE

    cookie = driver.get_cookie(COOKIE)
    assert cookie is not None, "not signed in"
    value: str = cookie["value"]
    return value


def clear_screenshots() -> None:
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)


# What a page must get right for a keyboard and screen-reader user, and for
# eyes that need contrast (WCAG AA: 4.5:1 for body text). Run in the page.
_A11Y_SCRIPT = r"""
const problems = [];
if (!document.documentElement.lang) problems.push("html has no lang");
if (document.querySelectorAll("h1").length !== 1) problems.push("not exactly one h1");
if (!document.querySelector("main")) problems.push("no main landmark");
for (const el of document.querySelectorAll("input:not([type=hidden]), select, textarea")) {
  const named = (el.labels && el.labels.length) || el.getAttribute("aria-label")
    || el.getAttribute("aria-labelledby");
  if (!named) problems.push(`unlabelled ${el.tagName.toLowerCase()} #${el.id || el.name}`);
}
for (const img of document.querySelectorAll("img")) {
  if (!img.getAttribute("alt")) problems.push(`image without alt: ${img.src}`);
}
for (const b of document.querySelectorAll("button, a")) {
  if (!b.textContent.trim() && !b.getAttribute("aria-label")) problems.push("nameless control");
}
function rgb(text) {
  const m = text.match(/rgba?\(([^)]+)\)/);
  if (!m) return null;
  const p = m[1].split(",").map(Number);
  return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
}
function lum(c) {
  const f = (v) => {
    v /= 255;
    return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
  };
  return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
}
function background(el) {
  for (let e = el; e; e = e.parentElement) {
    const c = rgb(getComputedStyle(e).backgroundColor);
    if (c && c.a > 0.5) return c;
  }
  return { r: 255, g: 255, b: 255, a: 1 };
}
const seen = new Set();
for (const el of document.querySelectorAll("main *, header *")) {
  const own = Array.from(el.childNodes).some((n) => n.nodeType === 3 && n.textContent.trim());
  if (!own || el.offsetParent === null) continue;
  const fg = rgb(getComputedStyle(el).color), bg = background(el);
  const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
  const ratio = (hi + 0.05) / (lo + 0.05);
  const key = `${el.tagName}.${el.className}`;
  if (ratio < 4.5 && !seen.has(key)) {
    seen.add(key);
    const text = el.textContent.trim().slice(0, 30);
    problems.push(`contrast ${ratio.toFixed(2)} for ${key}: "${text}"`);
  }
}
return problems;
"""


def accessibility_problems(driver: WebDriver) -> list[str]:
    """What keeps the current page from a keyboard or screen-reader user, or low vision."""
    problems: list[str] = driver.execute_script(_A11Y_SCRIPT)
    return problems
