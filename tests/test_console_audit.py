"""The auditor's console beside the gateway, driven in headless Chromium.

An investigator's queries fill the live ledgers (a hit, records, a denial);
the auditor, signed in through the development provider, verifies and
reconciles them in the browser, uploads a copy of the gateway's ledger (true,
then tampered with, then not a ledger at all), filters entries and searches
for a selector with the audit key, downloads proof files that `liaison audit
verify-proof` accepts, and loads the plots. An investigator is refused every
auditor page by the server. Each page is timed.
"""

from __future__ import annotations

import json
import re
import sqlite3
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from liaison import client
from liaison.demo.consoles import GATEWAY_CONSOLE
from liaison.demo.data import probes
from liaison.demo.run import demo_queries, investigator_token
from tests.console_support import (  # noqa: F401 (fixtures)
    ConsoleBed,
    accessibility_problems,
    browser,
    console_bed,
    screenshot,
    session_cookie,
    sign_in,
    wait_for,
)
from tests.support import liaison, tampering

AUDITOR = "aud.ann"
# Lenient here (a shared, busy machine); the notes report the real numbers.
PAGE_BUDGET_S = 1.0


@pytest.fixture(scope="module")
def bed(console_bed: ConsoleBed) -> ConsoleBed:  # noqa: F811 (the imported fixture)
    """The console bed after the demo's queries: hits, released records and denials logged."""
    token = investigator_token(console_bed.root)
    gateway_toml = (console_bed.root / "gateway" / "gateway.toml").read_text()
    ca = console_bed.root / "pki" / "ca.pem" if "\n[tls]" in gateway_toml else None
    for dq in demo_queries(probes())[:5]:
        client.search(console_bed.gateway, token, dq.search, tls_ca=ca)
    return console_bed


@pytest.fixture(scope="module")
def driver(browser: WebDriver) -> WebDriver:  # noqa: F811 (the imported fixture)
    return browser


def as_auditor(driver: WebDriver, bed: ConsoleBed) -> WebDriver:
    header = driver.find_elements(By.CSS_SELECTOR, "header .who")
    if not (header and AUDITOR in header[0].text and bed.gateway_console in driver.current_url):
        sign_in(driver, bed.gateway_console, AUDITOR)
    return driver


def look(driver: WebDriver, name: str) -> None:
    """Screenshot the page for a person, and check it for keyboard and screen-reader users."""
    screenshot(driver, name)
    assert accessibility_problems(driver) == [], name


def click_and_wait(driver: WebDriver, button_id: str) -> None:
    """Click a form's button and wait until the next page has replaced this one."""
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, button_id).click()
    WebDriverWait(driver, 15).until(ec.staleness_of(page))


def fetch(
    bed: ConsoleBed, cookie: str, path: str, data: bytes | None = None
) -> tuple[int, dict[str, str], bytes, float]:
    """GET (or POST ``data``) ``path`` with the session cookie: status, headers, body, seconds."""
    context = ssl.create_default_context(cafile=str(bed.root / "pki" / "ca.pem"))
    # An https:// address of the bed's console, never a file: one.
    request = urllib.request.Request(  # noqa: S310
        f"{bed.gateway_console}{path}",
        data=data,
        headers={"cookie": f"__Host-liaison-console={cookie}"},
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, context=context, timeout=15) as response:  # noqa: S310
            body = response.read()
            status, headers = response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        body, status, headers = exc.read(), exc.code, dict(exc.headers)
        exc.close()
    return status, headers, body, time.perf_counter() - started


def error_of(page: bytes) -> str:
    """The message of an error page."""
    found = re.search(r'class="error">(.*?)</p>', page.decode("utf-8", "replace"), re.S)
    return found.group(1) if found else page[:300].decode("utf-8", "replace")


def copy_ledger(source: Path, target: Path) -> None:
    """A consistent copy of a ledger that is being written (SQLite's backup API)."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def upload(driver: WebDriver, bed: ConsoleBed, files: dict[str, Path]) -> str:
    """Check ``files`` (ledger name -> copy) on the copies page; the verdict's text."""
    driver.get(f"{bed.gateway_console}/audit/copies")
    for name, path in files.items():
        driver.find_element(By.ID, f"copy-{name}").send_keys(str(path))
    click_and_wait(driver, "check-copies")
    verdict = wait_for(driver, ".audit-result .verdict")
    assert "/audit/copies/result/" in driver.current_url
    return str(verdict.text)


def state_of(driver: WebDriver, ledger: str) -> str:
    row = driver.find_element(By.XPATH, f"//section//tr[th[@scope='row' and text()='{ledger}']]")
    return str(row.find_elements(By.TAG_NAME, "td")[-1].text)


# --- verify and reconcile -----------------------------------------------------


def test_auditor_verifies_and_reconciles_the_live_ledgers(
    driver: WebDriver, bed: ConsoleBed
) -> None:
    as_auditor(driver, bed)
    driver.get(f"{bed.gateway_console}/audit")
    look(driver, "audit-home")
    click_and_wait(driver, "verify")
    verdict = wait_for(driver, ".audit-result .verdict").text
    assert re.search(r"/audit/result/[\w-]+#result$", driver.current_url), driver.current_url
    assert "Verified and reconciled" in verdict, verdict
    for ledger in ("gateway", "freedonia", "ruritania", "sylvania"):
        assert state_of(driver, ledger).startswith("verified"), state_of(driver, ledger)
    page = driver.find_element(By.CSS_SELECTOR, ".audit-result").text
    assert "Reconciled: every answered request" in page
    look(driver, "audit-verified")


# --- copies -------------------------------------------------------------------


def test_a_true_copy_verifies_and_a_tampered_one_is_refused(
    driver: WebDriver, bed: ConsoleBed, tmp_path: Path
) -> None:
    as_auditor(driver, bed)
    true_copy = tmp_path / "ledger.sqlite3"
    copy_ledger(bed.root / "gateway" / "ledger.sqlite3", true_copy)
    receipts = tmp_path / "receipts.sqlite3"
    copy_ledger(bed.root / "nodes" / "freedonia" / "state" / "receipts.sqlite3", receipts)

    verdict = upload(driver, bed, {"gateway": true_copy, "freedonia": receipts})
    assert "Verified and reconciled" in verdict, verdict
    assert state_of(driver, "gateway").startswith("verified")
    assert state_of(driver, "freedonia").startswith("verified")
    look(driver, "audit-copy-verified")

    tampered = tmp_path / "tampered.sqlite3"
    copy_ledger(true_copy, tampered)
    with tampering(tampered) as conn:
        index, raw = next(
            (i, bytes(e))
            for i, e in conn.execute("SELECT idx, entry FROM liaison_ledger_entries ORDER BY idx")
            if b"genovia" in bytes(e)
        )
        conn.execute(
            "UPDATE liaison_ledger_entries SET entry = ? WHERE idx = ?",
            (raw.replace(b"genovia", b"genovix", 1), index),
        )
    verdict = upload(driver, bed, {"gateway": tampered})
    assert "FAILED" in verdict and "Verified" not in verdict, verdict
    state = state_of(driver, "gateway")
    assert state.startswith("FAILED"), state
    assert f"entry {index}: its bytes do not hash to its stored leaf: it was edited" in state
    look(driver, "audit-copy-tampered")

    not_a_ledger = tmp_path / "notes.sqlite3"
    not_a_ledger.write_text("these are not the ledger you are looking for\n")
    verdict = upload(driver, bed, {"gateway": not_a_ledger})
    assert "Refused" in verdict, verdict
    refused = driver.find_element(By.CSS_SELECTOR, "ul.refused").text
    assert "REFUSED gateway copy (notes.sqlite3): not a SQLite ledger file" in refused, refused


# --- entries ------------------------------------------------------------------


def test_auditor_filters_entries_and_searches_a_selector(
    driver: WebDriver, bed: ConsoleBed
) -> None:
    as_auditor(driver, bed)
    driver.get(f"{bed.gateway_console}/audit/entries")
    Select(driver.find_element(By.ID, "kind")).select_by_value("request")
    driver.find_element(By.ID, "agency").send_keys("genovia")
    driver.find_element(By.ID, "purpose").send_keys("statistics")
    click_and_wait(driver, "filter")
    wait_for(driver, "table.entries")
    assert "purpose=statistics" in driver.current_url
    rows = driver.find_elements(By.CSS_SELECTOR, "table.entries tbody tr")
    assert len(rows) >= 2  # the demo's two statistics queries
    for row in rows:
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        assert cells[2] == "request" and cells[5] == "statistics", cells
    look(driver, "audit-entries")

    # Denials, by outcome, in Ruritania's receipts.
    driver.get(f"{bed.gateway_console}/audit/entries?ledger=ruritania&outcome=denied")
    rows = driver.find_elements(By.CSS_SELECTOR, "table.entries tbody tr")
    assert rows, "no denial in Ruritania's receipts"
    assert all("denied" in r.text for r in rows)

    # The selector goes in a POST body only: never in the address or the console's log.
    email = probes().shared_email
    driver.get(f"{bed.gateway_console}/audit/entries")
    driver.find_element(By.ID, "selector").send_keys(email)
    Select(driver.find_element(By.ID, "field")).select_by_value("email")
    click_and_wait(driver, "search")
    status = wait_for(driver, "p[role=status]").text
    assert "match the selector you searched for" in status, status
    rows = driver.find_elements(By.CSS_SELECTOR, "table.entries tbody tr")
    assert rows and all("accounts records" in r.text for r in rows)
    assert email not in driver.current_url
    assert email not in driver.page_source
    look(driver, "audit-selector-search")
    log = (bed.root / "run" / f"{GATEWAY_CONSOLE}.log").read_text(errors="replace")
    assert "signed in: aud.ann" in log  # the console's own log, which must not hold it
    assert email not in log


# --- proofs -------------------------------------------------------------------


def test_proof_files_download_and_verify_offline(
    driver: WebDriver, bed: ConsoleBed, tmp_path: Path
) -> None:
    as_auditor(driver, bed)
    driver.get(f"{bed.gateway_console}/audit/proofs")
    sizes = [
        o.get_attribute("value") for o in Select(driver.find_element(By.ID, "old-gateway")).options
    ]
    assert sizes and all(s and s.isdigit() for s in sizes), sizes
    look(driver, "audit-proofs")
    cookie = session_cookie(driver)
    wanted = [
        ("/audit/proofs/inclusion?ledger=gateway&index=0", "gateway", "gateway-inclusion-0"),
        ("/audit/proofs/inclusion?ledger=freedonia&index=0", "freedonia", "freedonia-inclusion-0"),
        (f"/audit/proofs/consistency?ledger=gateway&old={sizes[0]}", "gateway", None),
    ]
    for path, ledger, name in wanted:
        status, headers, body, _ = fetch(bed, cookie, path)
        assert status == 200, (path, error_of(body))
        disposition = headers.get("content-disposition", "")
        assert disposition.startswith("attachment; filename="), disposition
        if name is not None:
            assert f'filename="{name}.json"' in disposition
        proof = tmp_path / disposition.split('"')[1]
        proof.write_bytes(body)
        document = json.loads(body)
        assert document["type"].startswith("liaison.")
        key = (
            bed.root / "gateway" / "gateway.pub"
            if ledger == "gateway"
            else bed.root / "nodes" / ledger / "node.pub"
        )
        run = liaison("audit", "verify-proof", proof, "--key", key)
        assert run.returncode == 0, run
        assert run.stdout.startswith("VERIFIED: "), run.stdout

    # A proof of an entry past the end is refused with a reason, not a trace.
    status, _, body, _ = fetch(bed, cookie, "/audit/proofs/inclusion?ledger=gateway&index=999999")
    assert status == 400 and "there is no entry 999999" in error_of(body)


# --- plots --------------------------------------------------------------------


def test_plots_page_shows_images_and_their_numbers(driver: WebDriver, bed: ConsoleBed) -> None:
    as_auditor(driver, bed)
    driver.get(f"{bed.gateway_console}/audit/plots")
    images = driver.find_elements(By.CSS_SELECTOR, ".plots img")
    assert len(images) == 4
    for image in images:
        assert len(image.get_attribute("alt") or "") > 40
        loaded = driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth;", image
        )
        assert loaded and int(loaded) > 100, image.get_attribute("src")
    tables = driver.find_elements(By.CSS_SELECTOR, ".plots table")
    assert len(tables) == 4, "a data table for each plot"
    assert "genovia" in tables[0].text
    look(driver, "audit-plots")
    cookie = session_cookie(driver)
    for name in ("queries-by-agency", "queries-by-purpose", "denials-by-rule", "latency-by-node"):
        status, headers, body, _ = fetch(bed, cookie, f"/audit/plots/{name}.png")
        assert status == 200 and headers["content-type"] == "image/png"
        assert body.startswith(b"\x89PNG\r\n\x1a\n")


# --- timing -------------------------------------------------------------------

PAGES = (
    "/audit",
    "/audit/copies",
    "/audit/entries",
    "/audit/entries?kind=request&agency=genovia",
    "/audit/proofs",
    "/audit/plots",
    "/audit/plots/queries-by-agency.png",
)


def test_each_page_loads_within_budget(driver: WebDriver, bed: ConsoleBed) -> None:
    as_auditor(driver, bed)
    cookie = session_cookie(driver)
    for path in PAGES:
        fetch(bed, cookie, path)  # first load: plots drawn, caches filled
        best = min(fetch(bed, cookie, path)[3] for _ in range(3))
        print(f"{path}: {best * 1000:.0f} ms")
        assert best < PAGE_BUDGET_S, f"{path} took {best:.2f} s"


# --- who may ------------------------------------------------------------------


def test_an_investigator_is_refused_every_auditor_page(driver: WebDriver, bed: ConsoleBed) -> None:
    sign_in(driver, bed.gateway_console, "inv.alice")
    driver.get(f"{bed.gateway_console}/audit")
    assert "role 'auditor'" in driver.find_element(By.CSS_SELECTOR, "main").text
    assert not driver.find_elements(By.ID, "verify")
    look(driver, "audit-refused-investigator")
    cookie = session_cookie(driver)
    for path in (*PAGES, "/audit/proofs/inclusion?ledger=gateway&index=0"):
        status, _, _, _ = fetch(bed, cookie, path)
        assert status == 403, path
    # An action too, even before its form's token is looked at.
    status, _, _, _ = fetch(bed, cookie, "/audit/verify", data=b"csrf=x")
    assert status == 403


# --- config -------------------------------------------------------------------


def test_explicit_ledgers_in_the_config_are_audited_like_a_federation(bed: ConsoleBed) -> None:
    from liaison.config import _Reader
    from liaison.console.audit_ledgers import Ledgers, audit_live, read_settings

    table = {
        "gateway_ledger": "gateway/ledger.sqlite3",
        "gateway_key": "gateway/gateway.pub",
        "node": [
            {
                "id": "freedonia",
                "receipts": "nodes/freedonia/state/receipts.sqlite3",
                "key": "nodes/freedonia/node.pub",
            }
        ],
    }
    ledgers = Ledgers(read_settings(_Reader(table, "[console.audit]", bed.root)))
    assert ledgers.names() == ["gateway", "freedonia"]
    result = audit_live(ledgers)
    assert result.ok and result.reconciled, result


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({}, r"name the ledgers to audit: `federation = DIR`"),
        ({"federation": "nowhere"}, r"`federation` .*nowhere is not a federation folder"),
        ({"federation": ".", "ledger": "x"}, r"unknown keys ledger; allowed: audit_key, "),
        ({"gateway_ledger": "l.sqlite3"}, r"`gateway_key` is required"),
    ],
)
def test_config_mistakes_are_named(tmp_path: Path, table: dict[str, object], message: str) -> None:
    from liaison.config import _Reader
    from liaison.console.audit_ledgers import read_settings
    from liaison.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        read_settings(_Reader(table, "[console.audit]", tmp_path))
