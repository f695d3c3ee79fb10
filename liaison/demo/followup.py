"""The demo's last act: from a hit to a released value, decided by a person at the holder.

Genovia's investigator asks Freedonia for the case reference and first-seen
date of the file Freedonia said it holds; a Freedonian duty officer releases
the date and refuses the case reference; the date arrives with its handling
code, signed by Freedonia, and the time from the hit to the release is shown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from liaison import client
from liaison.config import node_inbox_audience
from liaison.envelope import open_envelope
from liaison.errors import LiaisonError
from liaison.followup_wire import decision_from_bytes
from liaison.followups import (
    FOLLOWUP_DECISION_TYPE,
    FieldChoice,
    FollowUpDecision,
    FollowUpFiling,
    FollowUpStatus,
    FollowUpView,
    Urgency,
)
from liaison.handling import describe
from liaison.inbox_client import Inbox
from liaison.keys import SigningKey, VerifyingKey
from liaison.messages import SearchResult
from liaison.tokens import dev_issuer, issue_dev_token

HOLDER = "freedonia"
OFFICER = "duty.fred"
ASKED = ("case_ref", "first_seen")
TEXT = (
    "Victim-identification: the file shows a child not yet identified. Your case reference "
    "would let us coordinate with your investigators; the first-seen date dates the series."
)
# How long the demo's investigator waits for the decision to be collected.
WAIT_S = 20.0


@dataclass(frozen=True, slots=True)
class FollowUpRun:
    view: FollowUpView
    decision: FollowUpDecision
    hit_to_release_s: float
    filed_to_release_s: float
    officer_s: float


def officer_token(root: Path, node_id: str = HOLDER, subject: str = OFFICER) -> str:
    """A duty officer's token from the holder's development identity provider."""
    key = SigningKey.from_pem_file(root / "idp" / f"{node_id}.key")
    return issue_dev_token(
        key,
        issuer=dev_issuer(node_id),
        audience=node_inbox_audience(node_id),
        agency=node_id,
        subject=subject,
        roles=("duty-officer",),
        ttl_s=8 * 3600,
    )


def run_follow_up(
    root: Path,
    gateway: str,
    token: str,
    hit: SearchResult,
    hit_at: float,
    *,
    purpose: str,
    case_ref: str,
    inbox_ca: Path | None,
    progress: TextIO,
) -> FollowUpRun:
    """File, decide and collect one follow-up on Freedonia's hit in ``hit``.

    ``inbox_ca`` verifies the holder's inbox, which serves TLS with the node's
    certificate when the node does.
    """
    answer = next(
        (r.answer for r in hit.results if r.node_id == HOLDER and r.answer is not None), None
    )
    if answer is None or not answer.record_refs:
        raise LiaisonError(
            f"{HOLDER} named no record in query {hit.query_id}; nothing to follow up"
        )
    filing = FollowUpFiling(
        query_id=hit.query_id,
        node_id=HOLDER,
        record_refs=answer.record_refs,
        fields=ASKED,
        purpose=purpose,
        case_ref=case_ref,
        urgency=Urgency.IMMEDIATE_RISK,
        text=TEXT,
    )
    filed = time.perf_counter()
    view = client.file_followup(gateway, token, filing)
    print(
        f"  filed {view.followup_id} with {HOLDER} ({filing.urgency.value}): {view.status}",
        file=progress,
    )
    # The duty officer, at Freedonia, on the node's own inbox port.
    officer_started = time.perf_counter()
    inbox_address = (root / "nodes" / HOLDER / "state" / "inbox.addr").read_text().strip()
    with Inbox(inbox_address, officer_token(root), inbox_ca) as inbox:
        item = inbox.item(view.followup_id)
        print(
            f"  {HOLDER}'s duty officer sees it: {', '.join(item.fields)} asked; the policy "
            f"lets a person release {', '.join(item.decidable_fields)}",
            file=progress,
        )
        inbox.decide(
            view.followup_id,
            [
                FieldChoice("first_seen", True, "H1"),
                FieldChoice(
                    "case_ref",
                    False,
                    reason="our case file is under seal; ask through a formal request",
                ),
            ],
            "child at risk: the date now, the case through mutual legal assistance",
        )
    officer_s = time.perf_counter() - officer_started
    deadline = time.monotonic() + WAIT_S
    while True:
        view = client.get_followup(gateway, token, view.followup_id)
        if view.status is not FollowUpStatus.PENDING or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    released_at = time.perf_counter()
    if view.decision is None:
        raise LiaisonError(f"follow-up {view.followup_id} was not decided within {WAIT_S:g} s")
    # Checked here against Freedonia's own key: the gateway only carries it.
    key = VerifyingKey.from_pem_file(root / "nodes" / HOLDER / "node.pub")
    decision = decision_from_bytes(
        open_envelope(view.decision, FOLLOWUP_DECISION_TYPE, {key.key_id: key})
    )
    return FollowUpRun(view, decision, released_at - hit_at, released_at - filed, officer_s)


def render_follow_up(run: FollowUpRun) -> str:
    d = run.decision
    lines = [
        f"8. Follow-up {d.followup_id} to {d.node_id}: {', '.join(ASKED)} of the matched file "
        "(urgency: immediate risk)",
        f"  {d.outcome.value} by {d.officer}, {d.node_id}'s duty officer; decision signed by "
        f"{d.node_id} and verified here",
    ]
    for f in d.field_decisions:
        if f.released:
            values = sorted({row[d.fields.index(f.field)] or "" for row in d.rows})
            lines.append(f"  {f.field} = {', '.join(values)}   [{describe(f.handling)}]")
        else:
            lines.append(f"  {f.field}: refused ({f.reason})")
    lines.append(
        f"  time from hit to approved release: {run.hit_to_release_s:.2f} s (the demo asked six "
        f"more questions in between); from filing the request {run.filed_to_release_s:.2f} s, "
        f"of which the officer's review and decision {run.officer_s:.2f} s"
    )
    return "\n".join(lines)


def follow_up_to_dict(run: FollowUpRun) -> dict[str, Any]:
    d = run.decision
    return {
        "followup_id": d.followup_id,
        "node_id": d.node_id,
        "status": run.view.status.value,
        "outcome": d.outcome.value,
        "officer": d.officer,
        "fields": [
            {
                "field": f.field,
                "released": f.released,
                "handling": f.handling or None,
                "reason": f.reason,
                "values": [row[d.fields.index(f.field)] for row in d.rows] if f.released else None,
            }
            for f in d.field_decisions
        ],
        "hit_to_release_s": round(run.hit_to_release_s, 3),
        "filed_to_release_s": round(run.filed_to_release_s, 3),
    }
