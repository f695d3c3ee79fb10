"""The auditor's console beside the gateway, driven in headless Chromium.

An investigator's queries fill the live ledgers (a hit, records, a denial);
the auditor, signed in through the development provider, verifies and
reconciles them in the browser, uploads a copy of the gateway's ledger (true,
then tampered with, then not a ledger at all), filters entries and searches
for a selector with the audit key, downloads proof files that `liaison audit
verify-proof` accepts, and loads the plots. An investigator and a duty officer
are refused every auditor page by the server, and the auditor the investigators'.

The copies are where the audited party gets a say, so they are attacked: a
forged copy stripped of its checkpoints, a copy cut short, a file whose
"ledger" is a view that never ends. Timing is `make bench-console`'s, not here.
"""

from __future__ import annotations

import html
import io
import json
import os
import re
import shutil
import sqlite3
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from liaison import client
from liaison.config import TableReader
from liaison.console.audit_copies import CopiesBusy, Upload, check_copies, check_schema
from liaison.console.audit_ledgers import (
    AuditResult,
    Ledgers,
    audit_live,
    read_settings,
)
from liaison.demo.consoles import GATEWAY_CONSOLE
from liaison.demo.data import probes
from liaison.demo.run import demo_queries, investigator_token
from liaison.errors import LedgerError
from liaison.keys import SigningKey
from liaison.ledger.log import Ledger
from liaison.ledger.merkle import leaf_hash
from tests.console_support import (
    ConsoleBed,
    accessibility_problems,
    screenshot,
    session_cookie,
    sign_in,
    submit,
    wait_for,
)
from tests.support import liaison, tampering

AUDITOR = "aud.ann"
# A crafted file is refused by a schema check; a hanging one would never return.
REFUSED_WITHIN_S = 20.0


@pytest.fixture(scope="module")
def bed(console_bed: ConsoleBed) -> ConsoleBed:
    """The console bed after the demo's queries: hits, released records and denials logged."""
    token = investigator_token(console_bed.root)
    gateway_toml = (console_bed.root / "gateway" / "gateway.toml").read_text()
    ca = console_bed.root / "pki" / "ca.pem" if "\n[tls]" in gateway_toml else None
    for dq in demo_queries(probes())[:5]:
        client.search(console_bed.gateway, token, dq.search, tls_ca=ca)
    return console_bed


@pytest.fixture(scope="module")
def driver(browser: WebDriver) -> WebDriver:
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
    submit(driver, driver.find_element(By.ID, button_id))


def fetch(
    bed: ConsoleBed, cookie: str, path: str, data: bytes | None = None, console: str = ""
) -> tuple[int, dict[str, str], bytes, float]:
    """GET (or POST ``data``) ``path`` with the session cookie: status, headers, body, seconds."""
    context = ssl.create_default_context(cafile=str(bed.root / "pki" / "ca.pem"))
    # An https:// address of the bed's console, never a file: one.
    request = urllib.request.Request(  # noqa: S310
        f"{console or bed.gateway_console}{path}",
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


def upload(
    driver: WebDriver, bed: ConsoleBed, files: dict[str, Path], *, tail: bool = False
) -> str:
    """Check ``files`` (ledger name -> copy) on the copies page; the verdict's text.

    ``tail`` ticks "entries after the newest checkpoint are a warning".
    """
    driver.get(f"{bed.gateway_console}/audit/copies")
    box = driver.find_element(By.ID, "unsigned_tail")
    assert not box.is_selected(), "copies must be checked strictly unless the auditor says"
    if tail:
        box.click()
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

    # Copies of live ledgers, taken between checkpoints: their newest entries may be unsigned.
    verdict = upload(driver, bed, {"gateway": true_copy, "freedonia": receipts}, tail=True)
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


# --- copies made to deceive ---------------------------------------------------


def federation_ledgers(bed: ConsoleBed) -> Ledgers:
    """The bed's live ledgers, as the console reads them."""
    return Ledgers(
        read_settings(TableReader({"federation": str(bed.root)}, "[console.audit]", bed.root))
    )


def gateway_only(ledger: Path, key: str | Path, base: Path) -> Ledgers:
    """The console's ledgers when ``[console.audit]`` names only a gateway ledger and key."""
    return Ledgers(
        read_settings(
            TableReader(
                {"gateway_ledger": str(ledger), "gateway_key": str(key)},
                "[console.audit]",
                base,
            )
        )
    )


def signed_copy(bed: ConsoleBed, target: Path) -> Path:
    """A copy of the live gateway ledger once a checkpoint covers every entry in it.

    The writer signs one every 30 s: a copy taken between is partly unsigned.
    """
    deadline = time.monotonic() + 75
    while True:
        copy_ledger(bed.root / "gateway" / "ledger.sqlite3", target)
        with tampering(target) as conn:
            (entries,) = conn.execute("SELECT count(*) FROM liaison_ledger_entries").fetchone()
            (newest,) = conn.execute("SELECT max(size) FROM liaison_ledger_checkpoints").fetchone()
        if newest == entries >= 2:
            return target
        assert time.monotonic() < deadline, f"no checkpoint covers {entries} entries: {newest}"
        time.sleep(0.5)


def checked(ledgers: Ledgers, files: dict[str, Path], *, tail: bool) -> AuditResult:
    """check_copies on real files, opened as the console's upload hands them on."""
    opened = {name: path.open("rb") for name, path in files.items()}
    try:
        return check_copies(
            [Upload(name, path.name, opened[name]) for name, path in files.items()],
            ledgers,
            allow_unsigned_tail=tail,
        )
    finally:
        for f in opened.values():
            f.close()


def forge(true_copy: Path, forged: Path) -> int:
    """The reviewer's forgery: checkpoints deleted, an entry and its leaf hash rewritten.

    No key is needed for it. Returns the index of the rewritten entry.
    """
    copy_ledger(true_copy, forged)
    with tampering(forged) as conn:
        conn.execute("DELETE FROM liaison_ledger_checkpoints")
        index, raw = next(
            (i, bytes(e))
            for i, e in conn.execute("SELECT idx, entry FROM liaison_ledger_entries ORDER BY idx")
            if b"genovia" in bytes(e)
        )
        edited = raw.replace(b"genovia", b"genovix", 1)
        conn.execute(
            "UPDATE liaison_ledger_entries SET entry = ?, leaf_hash = ? WHERE idx = ?",
            (edited, leaf_hash(edited), index),
        )
    return int(index)


def cut_short(true_copy: Path, short: Path) -> int:
    """A genuine copy cut back behind its newest checkpoint: a rollback. Returns its size."""
    copy_ledger(true_copy, short)
    with tampering(short) as conn:
        (newest,) = conn.execute("SELECT max(size) FROM liaison_ledger_checkpoints").fetchone()
        assert newest >= 2, "the bed's gateway has signed too little to cut"
        keep = int(newest) - 1
        conn.execute("DELETE FROM liaison_ledger_entries WHERE idx >= ?", (keep,))
        conn.execute("DELETE FROM liaison_ledger_checkpoints WHERE size > ?", (keep,))
    return keep


def test_a_forged_copy_without_checkpoints_is_never_verified(
    bed: ConsoleBed, tmp_path: Path
) -> None:
    ledgers = federation_ledgers(bed)
    true_copy = tmp_path / "true.sqlite3"
    copy_ledger(bed.root / "gateway" / "ledger.sqlite3", true_copy)
    forged = tmp_path / "forged.sqlite3"
    forge(true_copy, forged)
    for tail in (False, True):
        result = checked(ledgers, {"gateway": forged}, tail=tail)
        assert not result.ok, (tail, result)
        (gateway,) = result.ledgers
        assert not gateway.ok and gateway.checkpoints == 0, gateway
        if not tail:
            assert gateway.problems >= 2, "no checkpoint at all is a problem of its own"
        else:
            # The live ledger's newest checkpoint may cover only the first entries; what
            # it does not cover, nothing signed vouches for: a problem, not a warning.
            assert gateway.problem.startswith("checkpoints: "), gateway.problem
            assert "no checkpoint that verifies" in gateway.problem, gateway.problem

    # Where the live ledger has no checkpoint to lend either, a ledger whose entries nothing
    # signed vouches for is a problem, not a warning, even with the unsigned tail allowed.
    unsigned_live = tmp_path / "live.sqlite3"
    copy_ledger(true_copy, unsigned_live)
    with tampering(unsigned_live) as conn:
        conn.execute("DELETE FROM liaison_ledger_checkpoints")
    bare = gateway_only(unsigned_live, "gateway/gateway.pub", bed.root)
    result = checked(bare, {"gateway": forged}, tail=True)
    (gateway,) = result.ledgers
    assert not result.ok and not gateway.ok, gateway
    assert gateway.problem.startswith("checkpoints: "), gateway.problem
    assert "no checkpoint that verifies" in gateway.problem, gateway.problem
    assert any("not compared with its newest checkpoint" in w for w in gateway.warnings)


def test_a_copy_older_than_the_live_ledger_is_refused(bed: ConsoleBed, tmp_path: Path) -> None:
    ledgers = federation_ledgers(bed)
    true_copy = signed_copy(bed, tmp_path / "true.sqlite3")
    short = tmp_path / "short.sqlite3"
    size = cut_short(true_copy, short)
    for tail in (False, True):
        result = checked(ledgers, {"gateway": short}, tail=tail)
        (gateway,) = result.ledgers
        assert not result.ok and not gateway.ok, (tail, gateway)
        assert gateway.entries == size
        assert "the live gateway ledger's newest checkpoint" in gateway.problem, gateway.problem
        assert "were removed (truncated)" in gateway.problem, gateway.problem


def test_a_live_ledger_rolled_back_since_the_console_saw_it_fails(
    bed: ConsoleBed, tmp_path: Path
) -> None:
    """Whoever can write the ledger's file cannot take back what the console has seen."""
    true_copy = signed_copy(bed, tmp_path / "true.sqlite3")
    live = tmp_path / "live.sqlite3"
    copy_ledger(true_copy, live)
    ledgers = gateway_only(live, "gateway/gateway.pub", bed.root)
    assert audit_live(ledgers).ok
    # A genuine older state of the same ledger, as a restore from backup would leave it.
    size = cut_short(true_copy, live)
    rolled = audit_live(ledgers)
    (gateway,) = rolled.ledgers
    assert not rolled.ok and not gateway.ok
    assert gateway.entries == size
    assert "were removed (truncated)" in gateway.problem, gateway.problem


def test_a_rolled_back_live_ledger_stays_failed_when_it_grows_again(tmp_path: Path) -> None:
    """Restored from an older backup and written on: a different history from then on.

    The console must not take the regrown ledger's own newest checkpoint as the
    new bar: only a live check that passes moves it.
    """
    key = SigningKey.generate()
    key.write(tmp_path / "g.key", tmp_path / "g.pub")
    live, backup = tmp_path / "live.sqlite3", tmp_path / "backup.sqlite3"

    def write(times: int) -> None:
        # Each opening logs an entry and signs a checkpoint over it.
        for _ in range(times):
            Ledger.open(str(live), key, "example.org/gw").close()

    write(2)
    shutil.copy(live, backup)
    write(3)
    ledgers = gateway_only(live, str(tmp_path / "g.pub"), tmp_path)
    assert audit_live(ledgers).ok
    live.unlink()
    shutil.copy(backup, live)
    write(1)
    assert not audit_live(ledgers).ok
    write(4)  # now longer than what the console saw, on another history
    regrown = audit_live(ledgers)
    assert not regrown.ok, regrown
    assert not audit_live(ledgers).ok  # and it stays failed


def test_the_verdict_counts_entries_no_signature_covers(bed: ConsoleBed, tmp_path: Path) -> None:
    """A copy verified with its tail allowed never reads "every entry ... check out"."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    import liaison.console

    # A copy taken between checkpoints, of a live ledger whose newest checkpoint
    # is as old as the copy's: the newer entries are covered by nothing.
    true_copy = signed_copy(bed, tmp_path / "true.sqlite3")
    with tampering(true_copy) as conn:
        (entries,) = conn.execute("SELECT count(*) FROM liaison_ledger_entries").fetchone()
        sizes = sorted({s for (s,) in conn.execute("SELECT size FROM liaison_ledger_checkpoints")})
    signed = [s for s in sizes if 0 < s < sizes[-1]]
    assert signed, f"the bed's gateway signed too few checkpoints: {sizes}"
    covered = signed[-1]
    live, between = tmp_path / "live.sqlite3", tmp_path / "between.sqlite3"
    for path in (live, between):
        copy_ledger(true_copy, path)
        with tampering(path) as conn:
            conn.execute("DELETE FROM liaison_ledger_checkpoints WHERE size > ?", (covered,))
    ledgers = gateway_only(live, "gateway/gateway.pub", bed.root)
    strict = checked(ledgers, {"gateway": between}, tail=False)
    assert not strict.ok, strict
    assert "not covered by any signed checkpoint" in strict.ledgers[0].problem

    result = checked(ledgers, {"gateway": between}, tail=True)
    assert result.ok, result
    (gateway,) = result.ledgers
    uncovered = entries - covered
    assert gateway.unsigned == result.unsigned == uncovered > 0, (gateway, entries, covered)

    templates = Path(liaison.console.__file__).parent / "templates"
    env = Environment(loader=FileSystemLoader(templates), autoescape=select_autoescape())
    shown = re.sub(r"\s+", " ", env.get_template("audit_result.html").render(result=result))
    verdict = re.search(r'class="ok verdict">(.*?)</p>', shown, re.S)
    assert verdict, shown
    assert "every entry" not in verdict.group(1), verdict.group(1)
    assert f"{uncovered} entries are not covered by any signature" in verdict.group(1)


EVIL_SCHEMAS = {
    "a recursive view in the entries' place": (
        "CREATE VIEW liaison_ledger_entries AS WITH RECURSIVE c(x) AS "
        "(SELECT 0 UNION ALL SELECT x+1 FROM c) "
        "SELECT x AS idx, zeroblob(32) AS leaf_hash, x'' AS entry FROM c WHERE x < 0",
        "it holds a view ('liaison_ledger_entries')",
    ),
    "a trigger": (
        "CREATE TABLE liaison_ledger_entries (idx BIGINT PRIMARY KEY, leaf_hash BLOB, entry BLOB);"
        "CREATE TRIGGER liaison_t AFTER INSERT ON liaison_ledger_meta BEGIN SELECT 1; END",
        "it holds a trigger ('liaison_t')",
    ),
    "a generated column": (
        "CREATE TABLE liaison_ledger_entries (idx BIGINT PRIMARY KEY, entry BLOB, "
        "leaf_hash BLOB GENERATED ALWAYS AS (zeroblob(32)) VIRTUAL)",
        "its table liaison_ledger_entries has generated columns",
    ),
    "a table no ledger has": (
        "CREATE TABLE liaison_ledger_entries (idx BIGINT PRIMARY KEY, leaf_hash BLOB, entry BLOB);"
        "CREATE TABLE evil (x)",
        "it holds a table 'evil' that no Liaison ledger has",
    ),
}


def crafted(path: Path, entries_sql: str) -> Path:
    """The reviewer's construction: a ledger file whose schema runs the maker's SQL."""
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE liaison_ledger_checkpoints (id INTEGER PRIMARY KEY, size BIGINT NOT NULL, "
        "time_ms BIGINT NOT NULL, note TEXT NOT NULL);"
        "CREATE TABLE liaison_ledger_meta (name VARCHAR(64) PRIMARY KEY, value TEXT NOT NULL);"
        f"{entries_sql};"
    )
    conn.commit()
    conn.close()
    return path


@pytest.mark.parametrize("what", list(EVIL_SCHEMAS))
def test_a_crafted_schema_is_refused_before_it_is_read(tmp_path: Path, what: str) -> None:
    sql, reason = EVIL_SCHEMAS[what]
    with pytest.raises(LedgerError, match=re.escape(reason)):
        check_schema(crafted(tmp_path / "evil.sqlite3", sql))


def test_a_recursive_view_copy_is_refused_quickly(bed: ConsoleBed, tmp_path: Path) -> None:
    sql, reason = EVIL_SCHEMAS["a recursive view in the entries' place"]
    evil = crafted(tmp_path / "evil.sqlite3", sql)
    done: list[AuditResult] = []
    worker = threading.Thread(
        target=lambda: done.append(checked(federation_ledgers(bed), {"gateway": evil}, tail=True)),
        daemon=True,
    )
    worker.start()
    worker.join(REFUSED_WITHIN_S)
    assert not worker.is_alive(), "the crafted copy is still being read"
    (result,) = done
    assert not result.ok and not result.ledgers
    assert result.refused == (
        (
            "gateway copy (evil.sqlite3)",
            f"{reason}; a ledger holds only "
            "tables and indexes, and a copy with views or triggers is not "
            "read here",
        ),
    )
    # A sound copy passes the same check.
    sound = tmp_path / "sound.sqlite3"
    copy_ledger(bed.root / "gateway" / "ledger.sqlite3", sound)
    check_schema(sound)


def test_one_set_of_copies_is_checked_at_a_time(bed: ConsoleBed, tmp_path: Path) -> None:
    ledgers = federation_ledgers(bed)
    true_copy = tmp_path / "true.sqlite3"
    copy_ledger(bed.root / "gateway" / "ledger.sqlite3", true_copy)
    # The first upload arrives slowly, through a pipe: its check holds the turn meanwhile.
    read_end, write_end = os.pipe()
    slow = os.fdopen(read_end, "rb")
    first: list[AuditResult] = []
    worker = threading.Thread(
        target=lambda: first.append(
            check_copies([Upload("gateway", "slow", slow)], ledgers, allow_unsigned_tail=True)
        ),
        daemon=True,
    )
    worker.start()
    deadline = time.monotonic() + 15
    busy = None
    while busy is None and time.monotonic() < deadline:
        try:
            check_copies([Upload("gateway", "x", io.BytesIO(b"not a ledger"))], ledgers, wait_s=0)
        except CopiesBusy as exc:
            busy = str(exc)
        else:
            time.sleep(0.02)  # the first had not taken its turn yet
    assert busy is not None and "try again in a minute" in busy, busy
    with os.fdopen(write_end, "wb") as pipe:
        pipe.write(true_copy.read_bytes())
    worker.join(30)
    slow.close()
    assert not worker.is_alive() and first and first[0].ok, first
    # The turn was given back.
    again = check_copies([Upload("gateway", "x", io.BytesIO(b"nope"))], ledgers, wait_s=0)
    assert again.refused and "not a SQLite ledger file" in again.refused[0][1]


def test_forged_short_and_crafted_copies_are_refused_in_the_browser(
    driver: WebDriver, bed: ConsoleBed, tmp_path: Path
) -> None:
    as_auditor(driver, bed)
    true_copy = signed_copy(bed, tmp_path / "ledger.sqlite3")
    forged = tmp_path / "forged.sqlite3"
    forge(true_copy, forged)
    for tail in (False, True):
        verdict = upload(driver, bed, {"gateway": forged}, tail=tail)
        assert "FAILED" in verdict and "Verified" not in verdict, (tail, verdict)
        state = state_of(driver, "gateway")
        assert state.startswith("FAILED"), state
    # Every entry is under the live checkpoint: the rewrite is seen against it.
    assert "no longer hash to what you saw" in state, state
    look(driver, "audit-copy-forged")

    short = tmp_path / "short.sqlite3"
    cut_short(true_copy, short)
    verdict = upload(driver, bed, {"gateway": short}, tail=True)
    assert "FAILED" in verdict and "Verified" not in verdict, verdict
    assert "were removed (truncated)" in state_of(driver, "gateway")

    sql, reason = EVIL_SCHEMAS["a recursive view in the entries' place"]
    evil = crafted(tmp_path / "evil.sqlite3", sql)
    started = time.monotonic()
    verdict = upload(driver, bed, {"gateway": evil}, tail=True)
    assert time.monotonic() - started < 15, "the crafted copy was read, not refused"
    assert "Refused" in verdict, verdict
    refused = driver.find_element(By.CSS_SELECTOR, "ul.refused").text
    assert f"REFUSED gateway copy (evil.sqlite3): {reason}" in refused, refused
    look(driver, "audit-copy-crafted")


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
    # Posted and kept in the session: no filter in the address (or the access log).
    assert re.search(r"/audit/entries/[\w-]+#found$", driver.current_url), driver.current_url
    for leaked in ("statistics", "genovia", "purpose", "agency", "?"):
        assert leaked not in driver.current_url, driver.current_url
    rows = driver.find_elements(By.CSS_SELECTOR, "table.entries tbody tr")
    assert len(rows) >= 2  # the demo's two statistics queries
    for row in rows:
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        assert cells[2] == "request" and cells[5] == "statistics", cells
    # The form shows the filters it was sent with.
    assert driver.find_element(By.ID, "purpose").get_attribute("value") == "statistics"
    look(driver, "audit-entries")
    filtered_at = driver.current_url

    # Denials, by outcome, in Ruritania's receipts.
    driver.get(f"{bed.gateway_console}/audit/entries")
    Select(driver.find_element(By.ID, "ledger")).select_by_value("ruritania")
    driver.find_element(By.ID, "outcome").send_keys("denied")
    click_and_wait(driver, "filter")
    assert "denied" not in driver.current_url and "ruritania" not in driver.current_url
    rows = driver.find_elements(By.CSS_SELECTOR, "table.entries tbody tr")
    assert rows, "no denial in Ruritania's receipts"
    assert all("denied" in r.text for r in rows)

    # Filters in a query string are not read (no form makes one); the unfiltered page works.
    cookie = session_cookie(driver)
    status, _, page, _ = fetch(bed, cookie, "/audit/entries?purpose=statistics&kind=request")
    assert status == 200
    assert b'id="purpose" name="purpose" value=""' in page
    # A kept filter is this session's: another session's key is not found.
    key = filtered_at.split("/audit/entries/")[1].split("#")[0]
    status, _, _, _ = fetch(bed, cookie, f"/audit/entries/{key}")
    assert status == 200
    # A kept filter is not a kept result: the result pages do not take it.
    for path in (f"/audit/result/{key}", f"/audit/copies/result/{key}"):
        status, _, page, _ = fetch(bed, cookie, path)
        assert status == 404, (path, status, error_of(page))

    # The selector goes in a POST body only: never in the address or the console's log.
    email = probes().shared_email
    driver.get(f"{bed.gateway_console}/audit/entries")
    driver.find_element(By.ID, "selector").send_keys(email)
    Select(driver.find_element(By.ID, "field")).select_by_value("email")
    click_and_wait(driver, "search")
    shown = wait_for(driver, "p[role=status]").text
    assert "match the selector you searched for" in shown, shown
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


# --- every page ---------------------------------------------------------------

PAGES = (
    "/audit",
    "/audit/copies",
    "/audit/entries",
    "/audit/proofs",
    "/audit/plots",
    "/audit/plots/queries-by-agency.png",
)


def test_each_page_loads(driver: WebDriver, bed: ConsoleBed) -> None:
    # How fast is `make bench-console`'s to measure, on a quiet machine.
    as_auditor(driver, bed)
    cookie = session_cookie(driver)
    for path in PAGES:
        status, _, body, _ = fetch(bed, cookie, path)
        assert status == 200, (path, error_of(body))


# --- who may ------------------------------------------------------------------


def refused_every_auditor_page(driver: WebDriver, bed: ConsoleBed, subject: str) -> None:
    sign_in(driver, bed.gateway_console, subject)
    driver.get(f"{bed.gateway_console}/audit")
    assert "role 'auditor'" in driver.find_element(By.CSS_SELECTOR, "main").text
    assert not driver.find_elements(By.ID, "verify")
    cookie = session_cookie(driver)
    for path in (
        *PAGES,
        "/audit/entries/x",
        "/audit/result/x",
        "/audit/copies/result/x",
        "/audit/proofs/inclusion?ledger=gateway&index=0",
        "/audit/proofs/consistency?ledger=gateway&old=1",
        "/audit/plots/denials-by-rule.png",
    ):
        status, _, _, _ = fetch(bed, cookie, path)
        assert status == 403, (subject, path, status)
    # Actions too, even before their form's token is looked at.
    for path in ("/audit/verify", "/audit/copies", "/audit/entries", "/audit/entries/selector"):
        status, _, _, _ = fetch(bed, cookie, path, data=b"csrf=x")
        assert status == 403, (subject, path, status)


def test_an_investigator_is_refused_every_auditor_page(driver: WebDriver, bed: ConsoleBed) -> None:
    refused_every_auditor_page(driver, bed, "inv.alice")
    look(driver, "audit-refused-investigator")


def test_a_duty_officer_is_refused_every_auditor_page(driver: WebDriver, bed: ConsoleBed) -> None:
    # The gateway's console does not offer the node's duty officers a sign-in at all...
    driver.delete_all_cookies()
    driver.get(f"{bed.gateway_console}/signin")
    wait_for(driver, f'button[name="subject"][value="{AUDITOR}"]')
    assert not driver.find_elements(By.CSS_SELECTOR, 'button[name="subject"][value="duty.fred"]')
    # ...and the console beside their node serves no auditor page, nor takes an audit action.
    sign_in(driver, bed.node_console, "duty.fred")
    cookie = session_cookie(driver)
    for path in (*PAGES, "/audit/proofs/inclusion?ledger=gateway&index=0"):
        status, _, _, _ = fetch(bed, cookie, path, console=bed.node_console)
        assert status in (403, 404), (path, status)
    for path in ("/audit/verify", "/audit/copies", "/audit/entries"):
        status, _, _, _ = fetch(bed, cookie, path, data=b"csrf=x", console=bed.node_console)
        assert status in (403, 404, 405), (path, status)


def test_an_auditor_is_refused_the_investigators_pages(driver: WebDriver, bed: ConsoleBed) -> None:
    sign_in(driver, bed.gateway_console, AUDITOR)
    cookie = session_cookie(driver)
    for path in ("/investigate", "/followups"):
        status, _, body, _ = fetch(bed, cookie, path)
        assert status == 403, (path, status)
        assert "role 'investigator'" in html.unescape(error_of(body)), error_of(body)
    status, _, _, _ = fetch(bed, cookie, "/investigate", data=b"csrf=x")
    assert status == 403


# --- config -------------------------------------------------------------------


def test_explicit_ledgers_in_the_config_are_audited_like_a_federation(bed: ConsoleBed) -> None:
    from liaison.console.audit_ledgers import audit_live

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
    ledgers = Ledgers(read_settings(TableReader(table, "[console.audit]", bed.root)))
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
    from liaison.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        read_settings(TableReader(table, "[console.audit]", tmp_path))
