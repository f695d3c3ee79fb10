"""Attack: a low-cardinality match field turns a lookup rule into a list.

Ruritania's account rule lets `platform` be matched on, so that a lookup by
handle or e-mail can be narrowed to one service. On its own, though,
``--fields platform,handle,case_ref --where platform=chatapp`` asked for every
account on a service: 20 a query (the rule's row cap), 100 handle/case pairs
in five queries, one per platform, contrary to "never a list".

Here the attack runs against the demo federation's real Ruritania node,
through the real gateway, with a legal basis the rule accepts. Every query is
refused with a reason that says what to ask instead, and no row leaves the
node; a lookup by handle (narrowed by platform or not) still answers.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from liaison import client
from liaison.demo.data import PLATFORMS, demo_agencies
from liaison.messages import AnswerStatus, NodeStatus, SearchInput
from liaison.query import Comparator, Operation, Predicate, Query
from tests.conftest import Federation
from tests.support import investigator_token

FIELDS = ("platform", "handle", "case_ref")
LEGAL_BASIS = "eu-2016-680-art-8"
LIST_REFUSAL = (
    "records are released about what was asked, never as a list: it matches only on "
    "platform, which does not identify a record, so the answer would be a list; look up "
    "what you ask about by email or handle (eq or in)"
)


def eq(field: str, value: str) -> Predicate:
    return Predicate(field, Comparator.EQ, (value,))


def account_search(*predicates: Predicate) -> SearchInput:
    return SearchInput(
        Query("accounts", Operation.RECORDS, predicates, FIELDS, limit=100),
        "offender-identification",
        "GEN-LIST-1",
        nodes=("ruritania",),
        legal_basis=LEGAL_BASIS,
    )


def shareable_accounts(root: Path) -> list[tuple[str, str, str]]:
    """Ruritania's shareable accounts (platform, handle, case), read from its own table."""
    (agency,) = [a for a in demo_agencies() if a.agency_id == "ruritania"]
    table, columns = agency.mapping["accounts"]
    db = root / "nodes" / "ruritania" / "ruritania.sqlite3"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [
            (str(p), str(h), str(c))
            for p, h, c in conn.execute(
                f"SELECT {columns['platform']}, {columns['handle']}, {columns['case_ref']} "
                f"FROM {table} WHERE {columns['shareable']} = 1 ORDER BY 2"
            )
        ]
    finally:
        conn.close()


def test_listing_accounts_by_platform_is_refused(federation: Federation) -> None:
    # prepare: the node does hold shareable accounts on every platform
    token = investigator_token(federation.root)
    held = shareable_accounts(federation.root)
    assert {p for p, _, _ in held} == set(PLATFORMS)
    assert len(held) > 100

    # execute: one query per platform, as the attacker did
    results = [
        client.search(federation.gateway.address, token, account_search(eq("platform", p)))
        for p in PLATFORMS
    ]

    # assert: refused by the rule that was stretched, saying what to ask instead
    for result in results:
        (ruritania,) = result.results
        assert ruritania.status is NodeStatus.DENIED
        assert ruritania.detail == LIST_REFUSAL
        answer = ruritania.answer
        assert answer is not None and answer.status is AnswerStatus.DENIED
        assert answer.decision.rules == ("partner-account-lookup",)
        assert answer.rows == ()


def test_a_lookup_by_handle_still_answers(federation: Federation) -> None:
    # prepare
    token = investigator_token(federation.root)
    platform, handle, case_ref = shareable_accounts(federation.root)[7]

    # execute
    by_handle = client.search(
        federation.gateway.address, token, account_search(eq("handle", handle))
    )
    narrowed = client.search(
        federation.gateway.address,
        token,
        account_search(eq("platform", platform), eq("handle", handle)),
    )

    # assert
    for result in (by_handle, narrowed):
        (ruritania,) = result.results
        assert ruritania.status is NodeStatus.ANSWERED, ruritania.detail
        assert ruritania.answer is not None
        assert ruritania.answer.decision.rules == ("partner-account-lookup",)
        assert (platform, handle, case_ref) in ruritania.answer.rows
        assert {row[1] for row in ruritania.answer.rows} == {handle}
