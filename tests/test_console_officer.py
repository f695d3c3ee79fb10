"""The duty officer's console beside Freedonia's node, driven in headless Chromium.

A Genovian investigator's query hits Freedonia's file and the investigator
files a follow-up through the gateway (as `liaison followup file` does); the
duty officer, signed in through the development provider, reads it in the
browser, releases one field under H1 and refuses the other; the investigator
then collects the node's signed decision from the gateway. Also: someone of
Freedonia without the duty-officer role, or of another agency, is refused by
the server; "release everything" releases only what this officer may release;
the policy page shows the approve rule, the policy file's digest, and explains
hypothetical requests; and the health page says what it can learn without the
node's secrets (and needs none of them, and writes nothing).
"""

from __future__ import annotations

import hashlib
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select
from starlette.datastructures import FormData

from liaison import client
from liaison.catalog import CATALOG_V1
from liaison.console.config import load_console_config
from liaison.console.officer import (
    NodeSettings,
    NodeSide,
    _health,
    read_policy_file,
)
from liaison.console.officer_views import choices_from_form, field_rows, releasable_fields
from liaison.console.oidc import SignedIn
from liaison.console.sessions import COOKIE
from liaison.console.web import build_console
from liaison.demo.data import probes
from liaison.demo.followup import officer_token
from liaison.demo.run import CASE_REF, investigator_token
from liaison.errors import InvalidQuery
from liaison.followup_wire import decision_from_bytes
from liaison.followups import FieldChoice, FollowUpFiling, FollowUpStatus, InboxItem, Urgency
from liaison.inbox_client import Inbox
from liaison.messages import Requester, SearchInput
from liaison.query import Comparator, Operation, Predicate, Query
from policies import load_policy
from tests.console_support import (
    ConsoleBed,
    screenshot,
    session_cookie,
    sign_in,
    wait_for,
)

HOLDER = "freedonia"


@pytest.fixture
def bed(console_bed: ConsoleBed) -> ConsoleBed:
    return console_bed


@pytest.fixture
def driver(browser: WebDriver) -> WebDriver:
    return browser


TEXT = "The file shows a child not yet identified; your first-seen date dates the series."


def _gateway_ca(bed: ConsoleBed) -> Path | None:
    # The demo gateway serves investigators TLS only when its config says so.
    gateway_toml = (bed.root / "gateway" / "gateway.toml").read_text()
    return bed.root / "pki" / "ca.pem" if "\n[tls]" in gateway_toml else None


def file_followup(bed: ConsoleBed, fields: tuple[str, ...]) -> str:
    """A hit on Freedonia's file, then a follow-up on it, filed as the investigator; its id."""
    token = investigator_token(bed.root)
    ca = _gateway_ca(bed)
    query = Query(
        dataset="media",
        operation=Operation.MATCH,
        predicates=(Predicate("sha256", Comparator.EQ, (probes().shared_sha256,)),),
    )
    hit = client.search(
        bed.gateway, token, SearchInput(query, "csam-investigation", CASE_REF), tls_ca=ca
    )
    answer = next(r.answer for r in hit.results if r.node_id == HOLDER and r.answer is not None)
    assert answer.record_refs, "Freedonia's answer names no record"
    filing = FollowUpFiling(
        query_id=hit.query_id,
        node_id=HOLDER,
        record_refs=answer.record_refs,
        fields=fields,
        purpose="victim-identification",
        case_ref=CASE_REF,
        urgency=Urgency.IMMEDIATE_RISK,
        text=TEXT,
    )
    return client.file_followup(bed.gateway, token, filing, tls_ca=ca).followup_id


def open_item(driver: WebDriver, bed: ConsoleBed, followup_id: str) -> None:
    driver.get(f"{bed.node_console}/inbox")
    wait_for(driver, "main h1")
    driver.find_element(By.LINK_TEXT, followup_id).click()
    wait_for(driver, "#fields")


def _context(bed: ConsoleBed) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(bed.root / "pki" / "ca.pem"))


def _as(
    driver: WebDriver, bed: ConsoleBed, method: str, path: str, form: bytes = b"csrf=x"
) -> urllib.request.Request:
    """A request to the node's console in the browser's session, outside the browser."""
    return urllib.request.Request(  # noqa: S310 (an https URL of the bed)
        f"{bed.node_console}{path}",
        method=method,
        data=form if method == "POST" else None,
        headers={"cookie": f"{COOKIE}={session_cookie(driver)}"},
    )


def decided_page(driver: WebDriver) -> str:
    """The page after a decision is submitted; the error page's text fails the test."""
    wait_for(driver, "#decision, p.error")
    errors = driver.find_elements(By.CSS_SELECTOR, "p.error")
    assert not errors, errors[0].text
    return main_text(driver)


def main_text(driver: WebDriver) -> str:
    text: str = driver.find_element(By.CSS_SELECTOR, "main").text
    return text


def test_officer_approves_in_part_and_the_investigator_collects(
    bed: ConsoleBed, driver: WebDriver
) -> None:
    followup_id = file_followup(bed, ("case_ref", "first_seen"))

    sign_in(driver, bed.node_console, "duty.fred")
    assert driver.current_url == f"{bed.node_console}/inbox"
    inbox = main_text(driver)
    assert "Waiting for a decision" in inbox and followup_id in inbox
    assert "genovia / inv.alice" in inbox and "Recent hit notices" in inbox
    screenshot(driver, "officer-inbox")

    hit = driver.find_element(By.CSS_SELECTOR, "table[aria-labelledby='hits'] a")
    hit.click()
    wait_for(driver, "p.notice")
    assert "Hit notice" in main_text(driver) and "no decision is needed" in main_text(driver)
    screenshot(driver, "officer-hit-notice")

    open_item(driver, bed, followup_id)
    page = main_text(driver)
    for shown in ("inv.alice of genovia", "victim-identification", CASE_REF, "immediate-risk"):
        assert shown in page
    assert "first-seen date dates the series" in page
    assert "decidable" in page and "duty-officer" in page and "H1: not for use in court" in page
    screenshot(driver, "officer-item")

    fields = {f: n for n, f in enumerate(("case_ref", "first_seen"))}
    driver.find_element(By.ID, f"release-{fields['first_seen']}").click()
    Select(driver.find_element(By.ID, f"code-{fields['first_seen']}")).select_by_value("H1")
    driver.find_element(By.ID, f"refuse-{fields['case_ref']}").click()
    driver.find_element(By.ID, f"why-{fields['case_ref']}").send_keys(
        "our case file is under seal; ask through a formal request"
    )
    reason = driver.find_element(By.ID, "reason")
    reason.send_keys("the date now, the case through MLA")
    assert reason.location_once_scrolled_into_view is not None
    screenshot(driver, "officer-item-form")
    driver.find_element(By.CSS_SELECTOR, 'button[name="all"][value=""]').click()
    decided = decided_page(driver)
    assert f"{followup_id} is decided: partial" in decided
    assert "logged it in its receipts ledger" in decided
    assert "released" in decided and "under seal" in decided and "duty.fred" in decided
    assert "/inbox/decided/" in driver.current_url and "first_seen" not in driver.current_url
    screenshot(driver, "officer-decided")

    # The decision is final: the item shows it, and no form.
    open_item(driver, bed, followup_id)
    assert not driver.find_elements(By.CSS_SELECTOR, "form[action$='/decide']")
    assert "Signed decision" in main_text(driver)

    # The investigator collects the node's signed decision through the gateway.
    view = client.get_followup(
        bed.gateway, investigator_token(bed.root), followup_id, tls_ca=_gateway_ca(bed)
    )
    assert view.status is FollowUpStatus.PARTIAL and view.decision is not None
    decision = decision_from_bytes(view.decision.payload)
    assert decision.fields == ("first_seen",) and decision.rows
    assert decision.handling_of("first_seen") == "H1" and decision.officer == "duty.fred"


def test_refuse_everything_and_a_decision_made_elsewhere(
    bed: ConsoleBed, driver: WebDriver
) -> None:
    refused_id = file_followup(bed, ("category", "first_seen"))
    raced_id = file_followup(bed, ("first_seen",))
    sign_in(driver, bed.node_console, "duty.fred")

    open_item(driver, bed, refused_id)
    driver.find_element(By.ID, "reason").send_keys("not on this case")
    driver.find_element(By.CSS_SELECTOR, 'button[name="all"][value="refuse"]').click()
    refused = decided_page(driver)
    assert f"{refused_id} is decided: refused" in refused
    assert refused.count("not on this case") == 3  # the decision's reason, and each field's

    # Another officer decides while this one still has the form open: the node says no.
    open_item(driver, bed, raced_id)
    address = (bed.root / "nodes" / HOLDER / "state" / "inbox.addr").read_text().strip()
    with Inbox(address, officer_token(bed.root), bed.root / "pki" / "ca.pem") as inbox:
        inbox.decide(raced_id, [FieldChoice("first_seen", True, "H2")], "decided at the desk")
    driver.find_element(By.CSS_SELECTOR, 'button[name="all"][value="release"]').click()
    wait_for(driver, "p.error")
    assert "is approved already and a decision is final" in main_text(driver)
    screenshot(driver, "officer-already-decided")


def test_the_node_bounds_a_forged_form(bed: ConsoleBed, driver: WebDriver) -> None:
    followup_id = file_followup(bed, ("first_seen", "victim_identified"))
    sign_in(driver, bed.node_console, "duty.fred")
    open_item(driver, bed, followup_id)
    assert "refused: " in main_text(driver)
    # The page offers no release of the field the policy refuses...
    assert not driver.find_element(By.ID, "release-1").is_enabled()
    csrf = driver.find_element(By.CSS_SELECTOR, "input[name=csrf]").get_attribute("value")
    # ...and a hand-made form that releases it is refused by the node itself.
    form = urllib.parse.urlencode(
        {"csrf": csrf, "choice-0": "refuse", "choice-1": "release", "code-1": "H0"}
    ).encode()
    request = _as(driver, bed, "POST", f"/inbox/item/{followup_id}/decide", form)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=_context(bed), timeout=10)  # noqa: S310 (https)
    page = refused.value.read().decode()
    refused.value.close()
    assert refused.value.code == 403
    assert "&#39;victim_identified&#39; may not be released on this request" in page
    # Nothing was decided: the request still waits, with its form.
    open_item(driver, bed, followup_id)
    assert driver.find_elements(By.CSS_SELECTOR, "form[action$='/decide']")


def test_someone_without_the_role_is_refused_by_the_server(
    bed: ConsoleBed, driver: WebDriver
) -> None:
    sign_in(driver, bed.node_console, "fre.bob")
    driver.get(f"{bed.node_console}/inbox")
    wait_for(driver, "p.error")
    assert "duty-officer" in main_text(driver)
    screenshot(driver, "officer-refused")

    # Not only a hidden link: the server answers 403, for pages and for actions.
    context = _context(bed)
    for method, path in (("GET", "/inbox"), ("GET", "/health"), ("POST", "/policy/explain")):
        request = _as(driver, bed, method, path)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, context=context, timeout=10)  # noqa: S310 (https)
        refused.value.close()
        assert refused.value.code == 403, (method, path)


def test_policy_page_and_explain(bed: ConsoleBed, driver: WebDriver) -> None:
    sign_in(driver, bed.node_console, "duty.fred")
    driver.get(f"{bed.node_console}/policy")
    wait_for(driver, "#rules")
    page = main_text(driver)
    assert "genovian-follow-up · approve" in page
    assert "decided by roles\nduty-officer" in page
    assert "default handling\nH1: not for use in court" in page
    assert "shareable = true" in page and "20000 per day per agency" in page
    assert "no-account-data-abroad · forbid" in page
    screenshot(driver, "officer-policy")

    def explain(dataset: str, operation: str, where: str) -> str:
        driver.get(f"{bed.node_console}/policy")
        wait_for(driver, "#explain")
        driver.find_element(By.ID, "agency").send_keys("genovia")
        driver.find_element(By.ID, "case_ref").send_keys("GEN-2026-1")
        Select(driver.find_element(By.ID, "dataset")).select_by_value(dataset)
        Select(driver.find_element(By.ID, "operation")).select_by_value(operation)
        driver.find_element(By.ID, "where").send_keys(where)
        driver.find_element(By.CSS_SELECTOR, "form[action='/policy/explain'] button").click()
        wait_for(driver, "#explained")
        assert where.split("=")[1] not in driver.current_url
        return main_text(driver)

    permitted = explain("media", "match", f"sha256={'ab' * 32}")
    assert "Decision: PERMIT under hash-hit-no-hit" in permitted
    screenshot(driver, "officer-explain")
    denied = explain("accounts", "match", "email=someone@example.org")
    assert "Decision: DENY by no-account-data-abroad" in denied


def _policy_path(bed: ConsoleBed) -> Path:
    return bed.root / "nodes" / HOLDER / "policy.toml"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_health_page_says_what_it_cannot_check(bed: ConsoleBed, driver: WebDriver) -> None:
    sign_in(driver, bed.node_console, "duty.fred")
    driver.get(f"{bed.node_console}/health")
    wait_for(driver, "#checks")
    page = main_text(driver)
    assert "Everything this console can check is ok." in page
    assert "Reachable ok: SERVING" in page
    assert "Pending requests" in page and "Overdue" in page
    assert "node config ok" in page and "policy file ok" in page
    assert _sha256(_policy_path(bed)) in page
    # Checks that need the node's secrets or write access are not run here...
    for secret in ("signing key", "database", "receipts ledger", "transform key"):
        assert f"{secret} ok" not in page, secret
    # ...and the page says so, and how to run them.
    assert "Not checked from this console" in page
    node_toml = bed.root / "nodes" / HOLDER / "node.toml"
    assert f"liaison node check --config {node_toml.resolve()}" in page
    screenshot(driver, "officer-health")


def _officer(bed: ConsoleBed, token: str | None = None) -> SignedIn:
    return SignedIn(
        subject="duty.fred",
        name="Fred",
        agency=HOLDER,
        roles=("duty-officer",),
        issuer=f"https://dev-idp.invalid/{HOLDER}",
        access_token=token if token is not None else officer_token(bed.root),
        expires_at=time.time() + 300,
    )


def _inbox_address(bed: ConsoleBed) -> str:
    return (bed.root / "nodes" / HOLDER / "state" / "inbox.addr").read_text().strip()


def _secretless_node_config(bed: ConsoleBed, folder: Path) -> Path:
    """The bed's node config with its key, database password and state out of reach.

    The signing and transform keys and the password file do not exist; the state
    folder and receipts ledger are in ``folder``. A console that needed any of
    them fails; one that wrote the ledger leaves a file there.
    """
    node_dir = (bed.root / "nodes" / HOLDER).resolve()
    text = (node_dir / "node.toml").read_text()
    for old, new in (
        ('signing_key = "node.key"', 'signing_key = "/nonexistent/node.key"'),
        ('transform_key = "transform.key"', 'transform_key = "/nonexistent/transform.key"'),
        ('state_dir = "state"', f'state_dir = "{folder / "state"}"'),
        ('location = "state/receipts.sqlite3"', f'location = "{folder / "receipts.sqlite3"}"'),
        ('policy = "policy.toml"', f'policy = "{node_dir / "policy.toml"}"'),
        ('client_ca = "../../pki/ca.pem"', f'client_ca = "{bed.root.resolve() / "pki/ca.pem"}"'),
        (
            "[node]\n",
            '[node]\ndatabase_password_file = "/nonexistent/db-password"\n',
        ),
    ):
        assert old in text, f"the demo's node.toml changed: {old!r} not in it"
        text = text.replace(old, new, 1)
    path = folder / "config" / "node.toml"
    path.parent.mkdir()
    path.write_text(text)
    return path


def test_health_needs_no_secret_and_writes_nothing(bed: ConsoleBed, tmp_path: Path) -> None:
    config = _secretless_node_config(bed, tmp_path)
    node = NodeSide(NodeSettings(config, _inbox_address(bed), None))
    before = sorted(tmp_path.rglob("*"))

    health = _health(node, _officer(bed))

    lines = {line["name"]: line for line in health["lines"]}
    assert set(lines) == {"node config", "policy file"}, lines
    assert all(line["word"] == "ok" for line in lines.values()), lines
    assert health["inbox"]["serving"] and health["counts"] is not None
    # Nothing was written: no state folder, no receipts ledger.
    assert sorted(tmp_path.rglob("*")) == before


def test_health_shows_inbox_failures_as_lines(bed: ConsoleBed, tmp_path: Path) -> None:
    config = _secretless_node_config(bed, tmp_path)
    # Refused: the node's inbox answers, but not to a token it cannot verify.
    node = NodeSide(NodeSettings(config, _inbox_address(bed), None))
    refused = _health(node, _officer(bed, token="not-a-token"))
    assert refused["inbox"]["serving"] and refused["counts"] is None
    (listing,) = [line for line in refused["lines"] if line["name"] == "inbox listing"]
    assert listing["word"] == "problem" and listing["detail"]

    # Unreachable: nothing listens there (a port just closed).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    gone = _health(NodeSide(NodeSettings(config, closed, None)), _officer(bed))
    assert not gone["inbox"]["serving"] and "not answering" in gone["inbox"]["detail"]

    # Not published: a node that never started.
    unpublished = _health(NodeSide(NodeSettings(config, None, None)), _officer(bed))
    assert not unpublished["inbox"]["serving"]
    assert "has not published its inbox address" in unpublished["inbox"]["detail"]


TWO_APPROVE_RULES = """\
version = 1
agency = "freedonia"

[[rule]]
id = "dates-by-duty-officers"
effect = "approve"
agencies = ["genovia"]
roles = ["investigator"]
purposes = ["victim-identification"]
datasets = ["media"]
release = ["first_seen"]
officers = ["duty-officer"]
handling = "H1"

[[rule]]
id = "case-files-by-senior-officers"
effect = "approve"
agencies = ["genovia"]
roles = ["investigator"]
purposes = ["victim-identification"]
datasets = ["media"]
release = ["case_ref"]
officers = ["senior-officer"]
handling = "H2"
"""


def _two_role_item() -> InboxItem:
    return InboxItem(
        id="fu-1",
        kind="follow-up",
        received_at_ms=1,
        answer_by_ms=0,
        status="pending",
        requester=Requester("genovia", "inv.alice", ("investigator",), "https://idp/genovia"),
        purpose="victim-identification",
        case_ref="GEN-2026-1",
        fields=("first_seen", "case_ref"),
        # The node says both are decidable: by *some* officer.
        decidable_fields=("first_seen", "case_ref"),
        dataset="media",
        rules=("case-files-by-senior-officers", "dates-by-duty-officers"),
        officer_roles=("duty-officer", "senior-officer"),
    )


def test_release_everything_releases_only_what_this_officer_may(
    bed: ConsoleBed, tmp_path: Path
) -> None:
    (tmp_path / "policy.toml").write_text(TWO_APPROVE_RULES)
    policy = load_policy(tmp_path / "policy.toml", CATALOG_V1)
    item = _two_role_item()
    assert releasable_fields(item, policy, ("duty-officer",)) == {"first_seen"}

    form = FormData([("all", "release"), ("reason", "the date now")])
    choices, _ = choices_from_form(item, form, releasable_fields(item, policy, ("duty-officer",)))
    assert [(c.field, c.release) for c in choices] == [("first_seen", True), ("case_ref", False)]
    # With nothing of its own to release, "release everything" signs no refusal.
    with pytest.raises(InvalidQuery, match="none of the asked fields is yours"):
        choices_from_form(item, form, releasable_fields(item, policy, ("night-clerk",)))

    # The item page offers no release of the field another role must release.
    console = build_console(
        load_console_config(bed.root / "console" / f"{HOLDER}-console.toml"), sides=["node"]
    )
    html = console.templates.get_template("officer_item.html").render(
        user=_officer(bed, token=""),
        csrf="x",
        sides=[],
        path="/inbox/item/fu-1",
        title="Follow-up request",
        item=item,
        rows=field_rows(item, policy, ("duty-officer",)),
        may_decide=True,
        overdue=False,
        due="-",
        when=lambda ms: str(ms),
        decision=None,
        codes=[("H1", "not for use in court")],
        describe=lambda code: code,
        policy_file=read_policy_file(tmp_path / "policy.toml"),
    )
    assert re.search(r'<input type="radio" id="release-0"[^>]*value="release">', html)
    assert re.search(r'<input type="radio" id="release-1"[^>]*value="release" disabled>', html)
    assert re.search(r'<select id="code-1" name="code-1" disabled>', html)
    assert "only senior-officer may release it" in html


def test_release_everything_in_the_browser(bed: ConsoleBed, driver: WebDriver) -> None:
    # Freedonia's approve rule lets a duty officer release first_seen; nothing
    # lets anyone release victim_identified.
    followup_id = file_followup(bed, ("first_seen", "victim_identified"))
    sign_in(driver, bed.node_console, "duty.fred")
    open_item(driver, bed, followup_id)
    assert driver.find_element(By.ID, "release-0").is_enabled()
    assert not driver.find_element(By.ID, "release-1").is_enabled()
    assert not driver.find_element(By.ID, "code-1").is_enabled()
    driver.find_element(By.CSS_SELECTOR, 'button[name="all"][value="release"]').click()
    decided = decided_page(driver)
    assert f"{followup_id} is decided: partial" in decided
    view = client.get_followup(
        bed.gateway, investigator_token(bed.root), followup_id, tls_ca=_gateway_ca(bed)
    )
    assert view.decision is not None
    decision = decision_from_bytes(view.decision.payload)
    assert decision.fields == ("first_seen",)
    assert [f.field for f in decision.field_decisions if f.released] == ["first_seen"]


def test_pages_show_the_policy_file_they_read(bed: ConsoleBed, driver: WebDriver) -> None:
    policy = _policy_path(bed)
    followup_id = file_followup(bed, ("first_seen",))
    sign_in(driver, bed.node_console, "duty.fred")
    driver.get(f"{bed.node_console}/policy")
    wait_for(driver, "#rules")
    page = main_text(driver)
    assert _sha256(policy) in page and "Modified" in page
    assert "restart the node" in page
    open_item(driver, bed, followup_id)
    page = main_text(driver)
    assert _sha256(policy) in page and "restart the node" in page

    # The file changes on disk (the node does not reload it): the pages show the new
    # digest; and a file that no longer loads is said so on the item page.
    original = policy.read_bytes()
    try:
        policy.write_bytes(original + b"\n# edited, node not restarted\n")
        open_item(driver, bed, followup_id)
        assert _sha256(policy) in main_text(driver)
        policy.write_text("version = [not a policy\n")
        open_item(driver, bed, followup_id)
        page = main_text(driver)
        assert "The policy file does not load" in page and "first_seen" in page
        screenshot(driver, "officer-item-policy-broken")
        driver.get(f"{bed.node_console}/policy")
        wait_for(driver, "p.error")
        assert "The policy file does not load" in main_text(driver)
    finally:
        policy.write_bytes(original)


def test_another_agencys_officer_is_refused(bed: ConsoleBed) -> None:
    console = build_console(
        load_console_config(bed.root / "console" / f"{HOLDER}-console.toml"), sides=["node"]
    )
    (node_side,) = console.sides
    assert node_side.agencies == frozenset({HOLDER})

    def person(agency: str, roles: tuple[str, ...]) -> SignedIn:
        issuer = f"https://dev-idp.invalid/{agency}"
        return SignedIn("someone", "Someone", agency, roles, issuer, "", time.time() + 60)

    assert node_side.admits(person(HOLDER, ("duty-officer",)))
    # A duty officer of another agency opens nothing at Freedonia's console...
    assert not node_side.admits(person("genovia", ("duty-officer",)))
    # ...nor does someone of Freedonia without the role.
    assert not node_side.admits(person(HOLDER, ("investigator",)))
