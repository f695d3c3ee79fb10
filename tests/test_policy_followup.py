"""Approve rules, the notify flag, and the bounds of a follow-up decision.

An approve rule (``effect = "approve"``) names the fields a duty officer may
release on a follow-up request after a hit, and the roles that may decide.
It never permits a query. ``decide_followup`` computes, from the node's
policy alone, which asked fields an officer may release and why each other
field is refused; a forbid in scope refuses what it covers, whatever the
approve rules say.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liaison.catalog import CATALOG_V1
from liaison.errors import CaseFileError, PolicyError
from liaison.handling import DEFAULT_HANDLING, HandlingCode
from liaison.messages import Requester
from liaison.query import Comparator, Operation, Predicate, Query
from policies import (
    Effect,
    FollowUpBounds,
    Policy,
    Rule,
    decide,
    decide_followup,
    load_policy,
    may_decide,
    may_release,
    parse_policy,
)
from policies.analysis import Kind, Severity, analyse, explain, policy_errors
from policies.cases import PolicyCase, parse_cases, run_case
from policies.cedar import policy_to_cedar, rule_to_cedar
from policies.engine import DEFAULT_DENY
from policies.model import ANY, case_ref_matches

DEMO = Path(__file__).resolve().parents[1] / "policies" / "demo"
SHA = "9688e70d2e30e0377f325563d9a73c2130a628c833aab8a1b9edbde7d3b6c351"
GENOVIAN = Requester("genovia", "inv.alice", ("investigator",), "https://idp.genovia.example")


def approve_rule(**overrides: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "id": "partner-follow-up",
        "effect": "approve",
        "agencies": ["genovia"],
        "roles": ["investigator"],
        "purposes": ["csam-investigation"],
        "datasets": ["media"],
        "release": ["case_ref", "first_seen"],
        "officers": ["duty-officer"],
    }
    rule.update(overrides)
    return {k: v for k, v in rule.items() if v is not None}


def permit_rule(**overrides: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "id": "hit-no-hit",
        "effect": "permit",
        "agencies": ["*"],
        "roles": ["investigator"],
        "purposes": ["csam-investigation"],
        "datasets": ["media"],
        "operations": ["match"],
        "match_fields": ["sha256"],
    }
    rule.update(overrides)
    return rule


def forbid_rule(**overrides: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "id": "no-case-refs",
        "effect": "forbid",
        "agencies": ["*"],
        "roles": ["*"],
        "purposes": ["*"],
        "datasets": ["media"],
        "operations": ["records"],
    }
    rule.update(overrides)
    return rule


def parse(*rules: dict[str, Any]) -> Policy:
    return parse_policy({"version": 1, "agency": "testland", "rule": list(rules)}, CATALOG_V1)


def bounds_for(
    policy: Policy,
    fields: tuple[str, ...] = ("case_ref", "first_seen"),
    *,
    requester: Requester = GENOVIAN,
    purpose: str = "csam-investigation",
    dataset: str = "media",
    case_ref: str = "GEN-2026-0142",
    legal_basis: str = "",
) -> FollowUpBounds:
    return decide_followup(
        policy, requester, purpose, dataset, fields, case_ref=case_ref, legal_basis=legal_basis
    )


# --- loading ------------------------------------------------------------------


def test_an_approve_rule_loads_with_its_release_officers_and_handling() -> None:
    policy = parse(approve_rule(handling="h2", case_ref="GEN-*", legal_bases=["budapest"]))

    (rule,) = policy.rules
    assert rule.effect is Effect.APPROVE
    assert rule.release == {"case_ref", "first_seen"}
    assert rule.officers == {"duty-officer"}
    assert rule.handling is HandlingCode.H2
    assert rule.case_ref_pattern == "GEN-*"
    assert rule.legal_bases == {"budapest"}
    assert rule.operations == frozenset()
    assert policy.approves == (rule,)
    assert policy.permits == () and policy.forbids == ()


def test_an_approve_rule_without_a_handling_code_gets_the_default() -> None:
    (rule,) = parse(approve_rule(officers="duty-officer")).rules

    assert rule.handling is DEFAULT_HANDLING
    assert rule.officers == {"duty-officer"}


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            approve_rule(officers=None),
            "rule 'partner-follow-up': an approve rule needs `officers = [...]`: the roles at "
            "this node that may decide follow-up requests",
        ),
        (approve_rule(officers=[]), "`officers` must be a non-empty list of role names"),
        (approve_rule(officers=[""]), "`officers` must be a non-empty list of role names"),
        (approve_rule(officers=["*"]), '"*" would let anyone with a token at this node'),
        (approve_rule(release=None), "an approve rule needs `release = [...]`"),
        (approve_rule(release=[]), "`release` is empty, so no officer could release anything"),
        (
            approve_rule(release=["case_ref", "colour"]),
            "rule 'partner-follow-up': `release`: dataset 'media' has no field 'colour'",
        ),
        (
            approve_rule(datasets=["media", "cases"], release=["first_seen"]),
            "`release`: dataset 'cases' has no field 'first_seen'",
        ),
        (approve_rule(release=["pdq_distance"]), "pdq_distance is computed for each query"),
        (approve_rule(handling="H7"), "`handling` 'H7' is not one of: H0 ("),
        (approve_rule(handling=1), '`handling` is a code such as "H1"'),
        (approve_rule(datasets=["*"]), 'an approve names its datasets explicitly, not "*"'),
        (approve_rule(datasets=["mediaa"]), "unknown dataset 'mediaa'"),
        (approve_rule(purposes=["curiosity"]), "unknown purpose 'curiosity'"),
        (approve_rule(agencies=None), "`agencies` is required"),
        (approve_rule(effect="aprove"), '`effect` must be "permit" or "forbid" (or "approve"'),
        (approve_rule(legal_basis="budapest"), "accepts as `legal_bases`"),
    ],
)
def test_approve_rule_mistakes_are_named(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(message)):
        parse(rule)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("operations", ["records"]),
        ("match_fields", ["sha256"]),
        ("max_rows", 5),
        ("min_count", 3),
        ("max_distance", 8),
        ("transforms", {"first_seen": "month"}),
        ("row_filters", [{"field": "shareable", "eq": "true"}]),
        ("rate_limit", {"agency": "5/day"}),
        ("releases_lists", True),
        ("near_budget", "5/hour"),
        ("fields", ["case_ref"]),
        ("notify", True),
    ],
)
def test_keys_that_make_no_sense_on_an_approve_rule_are_refused(key: str, value: object) -> None:
    with pytest.raises(
        PolicyError,
        match=re.escape(
            f"rule 'partner-follow-up': unknown keys {key} for an approve rule (an approve rule "
            "bounds what a duty officer may release on a follow-up request and permits no query"
        ),
    ):
        parse(approve_rule(**{key: value}))


def test_notify_loads_on_permits_only() -> None:
    loud, quiet = parse(permit_rule(notify=True), permit_rule(id="quiet")).rules

    assert (loud.notify, quiet.notify) == (True, False)
    with pytest.raises(PolicyError, match=re.escape("unknown keys notify for a forbid rule")):
        parse(forbid_rule(notify=True))
    with pytest.raises(PolicyError, match=re.escape("`notify` is true or false")):
        parse(permit_rule(notify="yes"))
    with pytest.raises(PolicyError, match=re.escape("unknown keys officers for a permit rule")):
        parse(permit_rule(officers=["duty-officer"]))


def test_policy_check_lists_every_broken_approve_rule() -> None:
    document = {
        "version": 1,
        "agency": "testland",
        "rule": [approve_rule(id="a", officers=None), approve_rule(id="b", handling="H9")],
    }

    errors = policy_errors(document, CATALOG_V1)

    assert [(e.rule, e.severity) for e in errors] == [("a", Severity.ERROR), ("b", Severity.ERROR)]
    assert "needs `officers = [...]`" in errors[0].message
    assert "'H9' is not one of" in errors[1].message


def test_the_demo_approve_rule_and_notify_flag() -> None:
    policy = load_policy(DEMO / "freedonia.toml", CATALOG_V1)
    rules = {r.id: r for r in policy.rules}

    follow_up = rules["genovian-follow-up"]
    assert follow_up.effect is Effect.APPROVE
    assert follow_up.release == {"case_ref", "first_seen", "category"}
    assert follow_up.officers == {"duty-officer"}
    assert follow_up.handling is HandlingCode.H1
    assert rules["hash-hit-no-hit"].notify is True
    assert rules["close-partner-metadata"].notify is False


# --- approve rules never decide a query ------------------------------------------


QUERIES = (
    Query("media", Operation.MATCH, (Predicate("sha256", Comparator.EQ, (SHA,)),)),
    Query("media", Operation.RECORDS, (Predicate("sha256", Comparator.EQ, (SHA,)),), ("case_ref",)),
    Query("media", Operation.COUNT),
    Query("media", Operation.COUNT_BY, group_by="category"),
)

CATEGORY = Query(
    "media", Operation.RECORDS, (Predicate("sha256", Comparator.EQ, (SHA,)),), ("category",)
)


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.operation.value)
def test_a_policy_with_only_an_approve_rule_denies_every_query(query: Query) -> None:
    policy = parse(approve_rule(release=["case_ref", "first_seen", "category", "sha256"]))

    decision = decide(
        policy, GENOVIAN, "csam-investigation", query, case_ref="GEN-1", legal_basis=""
    )

    assert not decision.permitted
    assert decision.rules == (DEFAULT_DENY,)
    assert policy.candidates("media", query.operation) == ((), ())


def test_an_approve_rule_built_with_operations_is_still_ignored() -> None:
    # The loader never gives an approve rule operations; a hand-built one must
    # not slip into query decisions either.
    rule = Rule(
        id="odd",
        effect=Effect.APPROVE,
        agencies=frozenset({ANY}),
        roles=frozenset({ANY}),
        purposes=frozenset({ANY}),
        datasets=frozenset({"media"}),
        operations=frozenset(Operation),
        match_fields=frozenset({"sha256"}),
        release=frozenset({"case_ref"}),
        officers=frozenset({"duty-officer"}),
    )
    policy = Policy(agency="testland", rules=(rule,))

    for query in QUERIES:
        assert decide(policy, GENOVIAN, "csam-investigation", query).rules == (DEFAULT_DENY,)
    assert policy_to_cedar(policy) == "\n"
    with pytest.raises(ValueError, match="approve rule"):
        rule_to_cedar(rule)


@settings(max_examples=150, deadline=None)
@given(
    agency=st.sampled_from(("genovia", "sylvania", "elbonia")),
    roles=st.lists(st.sampled_from(("investigator", "analyst", "duty-officer")), max_size=2),
    purpose=st.sampled_from(CATALOG_V1.purposes),
    case_ref=st.sampled_from(("GEN-2026-0142", "INT-9", "")),
    query=st.sampled_from(QUERIES),
)
def test_approve_rules_change_no_query_decision(
    agency: str, roles: list[str], purpose: str, case_ref: str, query: Query
) -> None:
    policy = load_policy(DEMO / "freedonia.toml", CATALOG_V1)
    without = Policy(
        agency=policy.agency,
        rules=tuple(r for r in policy.rules if r.effect is not Effect.APPROVE),
        maps=policy.maps,
    )
    requester = Requester(agency, "inv", tuple(roles), "https://idp.example")

    ours = decide(policy, requester, purpose, query, case_ref=case_ref)

    assert ours == decide(without, requester, purpose, query, case_ref=case_ref)


def test_the_cedar_translation_leaves_approve_rules_out() -> None:
    policy = load_policy(DEMO / "freedonia.toml", CATALOG_V1)

    text = policy_to_cedar(policy)

    assert "genovian-follow-up" not in text
    assert '@id("hash-hit-no-hit")' in text


def test_analysis_notes_each_approve_rule_and_its_officers() -> None:
    policy = load_policy(DEMO / "freedonia.toml", CATALOG_V1)

    findings = [f for f in analyse(policy) if f.rule == "genovian-follow-up"]

    assert [(f.severity, f.kind) for f in findings] == [(Severity.NOTE, Kind.APPROVE)]
    assert findings[0].message == (
        "on a follow-up from genovia (investigator) for csam-investigation, "
        "victim-identification, case GEN-*, an officer with role duty-officer may release "
        "case_ref, category, first_seen of media; default handling H1: not for use in court "
        "without a formal (mutual legal assistance) request"
    )


def test_analysis_warns_of_approve_rules_that_forbids_undo() -> None:
    everything = parse(approve_rule(), forbid_rule(id="nothing-on-media"))
    some_fields = parse(approve_rule(), forbid_rule(fields=["case_ref"]))

    shadowed = [f for f in analyse(everything) if f.rule == "partner-follow-up"]
    forbidden = [f for f in analyse(some_fields) if f.rule == "partner-follow-up"]

    assert [f.kind for f in shadowed] == [Kind.APPROVE, Kind.SHADOWED]
    assert "forbid nothing-on-media refuses every follow-up in its scope" in shadowed[1].message
    assert [f.kind for f in forbidden] == [Kind.APPROVE, Kind.FORBIDDEN_FIELD]
    assert "lets officers release case_ref, but forbid no-case-refs refuses it" in (
        forbidden[1].message
    )


def test_explain_accounts_for_approve_rules_without_deciding_by_them() -> None:
    policy = load_policy(DEMO / "freedonia.toml", CATALOG_V1)

    explanation = explain(policy, GENOVIAN, "csam-investigation", CATEGORY, case_ref="GEN-1")

    out = {r.rule: (r.effect, r.outcome) for r in explanation.out_of_scope}
    assert out["genovian-follow-up"] == (
        "approve",
        "an approve rule: it bounds follow-up releases and decides no query",
    )
    assert explanation.decision.permitted
    assert explanation.decision.rules == ("close-partner-metadata",)


# --- notify ---------------------------------------------------------------------


def test_a_hit_under_a_notify_permit_carries_notify_in_the_grant() -> None:
    policy = load_policy(DEMO / "freedonia.toml", CATALOG_V1)

    match = decide(policy, GENOVIAN, "csam-investigation", QUERIES[0], case_ref="GEN-1")
    records = decide(policy, GENOVIAN, "csam-investigation", CATEGORY, case_ref="GEN-1")

    assert match.grant is not None and match.grant.notify
    assert "a hit is reported to the holding agency (notify)" in match.obligations
    assert records.grant is not None and not records.grant.notify
    assert not any("notify" in o for o in records.obligations)


def test_notify_holds_whichever_applicable_permit_is_chosen() -> None:
    policy = parse(
        permit_rule(id="a-quiet-generous", max_rows=500),
        permit_rule(id="b-loud-narrow", max_rows=5, notify=True),
    )

    decision = decide(policy, GENOVIAN, "csam-investigation", QUERIES[0])

    assert decision.rules == ("a-quiet-generous",)
    assert decision.grant is not None and decision.grant.notify


# --- decide_followup ----------------------------------------------------------


def test_demo_follow_up_a_duty_officer_may_release_case_ref_and_first_seen() -> None:
    policy = load_policy(DEMO / "freedonia.toml", CATALOG_V1)

    bounds = bounds_for(policy, ("first_seen", "case_ref", "victim_identified"))

    assert bounds.rules == ("genovian-follow-up",)
    assert bounds.decidable == ("first_seen", "case_ref")
    assert dict(bounds.refused) == {
        "victim_identified": "no approve rule lets an officer release victim_identified on "
        "this request (they release case_ref, category, first_seen)"
    }
    assert bounds.officer_roles == {"duty-officer"}
    assert dict(bounds.handling) == {"first_seen": "H1", "case_ref": "H1"}
    assert bounds.explanation == (
        "approve genovian-follow-up: applies; officers duty-officer may release "
        "first_seen, case_ref",
    )
    assert may_decide(bounds, ["duty-officer", "analyst"])
    assert not may_decide(bounds, ["investigator"])
    assert may_release(bounds, {"duty-officer"}, "case_ref")
    assert not may_release(bounds, {"duty-officer"}, "victim_identified")


def test_asked_fields_are_taken_once_in_the_order_asked() -> None:
    bounds = bounds_for(parse(approve_rule()), ("first_seen", "category", "first_seen"))

    assert bounds.decidable == ("first_seen",)
    assert list(bounds.refused) == ["category"]


def test_a_forbid_refuses_the_fields_it_covers_with_its_description() -> None:
    policy = parse(
        approve_rule(),
        forbid_rule(fields=["case_ref"], description="Our case references stay here."),
    )

    bounds = bounds_for(policy)

    assert bounds.decidable == ("first_seen",)
    assert dict(bounds.refused) == {"case_ref": "Our case references stay here."}
    assert bounds.forbidden_by == ("no-case-refs",)
    assert "forbid no-case-refs: refuses case_ref" in bounds.explanation


def test_a_forbid_without_fields_refuses_every_field() -> None:
    policy = parse(approve_rule(), forbid_rule(id="nothing-abroad"))

    bounds = bounds_for(policy)

    assert bounds.decidable == ()
    assert dict(bounds.refused) == {
        "case_ref": "forbidden by nothing-abroad",
        "first_seen": "forbidden by nothing-abroad",
    }
    assert not may_release(bounds, {"duty-officer"}, "case_ref")


@pytest.mark.parametrize(
    "forbid",
    [
        forbid_rule(operations=["match"]),  # not on records: a follow-up reads records
        forbid_rule(datasets=["accounts"]),
        forbid_rule(roles=["trainee"]),
        forbid_rule(case_ref="INT-*"),
        forbid_rule(attributes={"clearance": "public"}),
        forbid_rule(fields=["category"]),
    ],
    ids=["other-operation", "other-dataset", "other-role", "case-ref", "attribute", "fields"],
)
def test_a_forbid_out_of_scope_refuses_nothing(forbid: dict[str, Any]) -> None:
    bounds = bounds_for(parse(approve_rule(), forbid))

    assert bounds.decidable == ("case_ref", "first_seen")
    assert bounds.refused == {}


def test_a_case_reference_that_does_not_match_makes_nothing_decidable() -> None:
    policy = load_policy(DEMO / "freedonia.toml", CATALOG_V1)

    bounds = bounds_for(policy, case_ref="INT-2026-9")

    assert bounds.rules == () and bounds.decidable == ()
    assert bounds.officer_roles == frozenset()
    assert not may_decide(bounds, {"duty-officer"})
    assert bounds.refused["case_ref"] == (
        "no approve rule lets an officer release media fields to genovia (investigator) for "
        "csam-investigation (genovian-follow-up: case reference does not match 'GEN-*')"
    )
    assert bounds.explanation == (
        "approve genovian-follow-up: does not apply (case reference does not match 'GEN-*')",
        "default-deny: no applicable approve rule; nothing is decidable",
    )


def test_a_legal_basis_the_rule_requires_must_be_cited() -> None:
    policy = parse(approve_rule(legal_bases=["eu-2016-680-art-8"]))

    uncited = bounds_for(policy)
    cited = bounds_for(policy, legal_basis="eu-2016-680-art-8")
    other = bounds_for(policy, legal_basis="budapest")

    assert uncited.decidable == () and other.decidable == ()
    assert "legal basis none is not one of eu-2016-680-art-8" in uncited.refused["case_ref"]
    assert "legal basis 'budapest' is not one of" in other.refused["case_ref"]
    assert cited.decidable == ("case_ref", "first_seen")


def test_attributes_the_rule_names_must_hold() -> None:
    policy = parse(approve_rule(attributes={"clearance": ["secret"]}))
    cleared = Requester("genovia", "inv", ("investigator",), "", {"clearance": "secret"})

    assert bounds_for(policy).decidable == ()
    assert "requester has no 'clearance' attribute" in bounds_for(policy).refused["case_ref"]
    assert bounds_for(policy, requester=cleared).decidable == ("case_ref", "first_seen")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"requester": Requester("sylvania", "inv", ("investigator",), "")}, "agency sylvania"),
        ({"requester": Requester("genovia", "inv", ("analyst",), "")}, "roles investigator"),
        ({"purpose": "statistics"}, "purpose statistics is not one of csam-investigation"),
        ({"dataset": "accounts", "fields": ("case_ref",)}, "about media, not accounts"),
    ],
    ids=["agency", "role", "purpose", "dataset"],
)
def test_a_requester_out_of_scope_gets_nothing_decidable(change: dict[str, Any], why: str) -> None:
    bounds = bounds_for(parse(approve_rule()), **change)

    assert bounds.decidable == () and bounds.rules == ()
    assert set(bounds.refused) == set(change.get("fields", ("case_ref", "first_seen")))
    assert any(why in line for line in bounds.explanation), bounds.explanation


def test_handling_comes_from_the_first_applying_rule_by_id_that_releases_the_field() -> None:
    policy = parse(
        approve_rule(id="b-seen", release=["first_seen", "category"], handling="H3"),
        approve_rule(id="a-refs", release=["case_ref", "first_seen"], officers=["supervisor"]),
        approve_rule(id="c-other", release=["category"], handling="H0", agencies=["sylvania"]),
    )

    bounds = bounds_for(policy, ("case_ref", "first_seen", "category"))

    assert bounds.rules == ("a-refs", "b-seen")
    assert dict(bounds.handling) == {
        "case_ref": DEFAULT_HANDLING.value,
        "first_seen": DEFAULT_HANDLING.value,
        "category": "H3",
    }
    assert bounds.officer_roles == {"duty-officer", "supervisor"}
    assert dict(bounds.field_officers) == {
        "case_ref": {"supervisor"},
        "first_seen": {"supervisor", "duty-officer"},
        "category": {"duty-officer"},
    }
    assert may_release(bounds, ["supervisor"], "case_ref")
    assert not may_release(bounds, ["duty-officer"], "case_ref")


def test_an_error_while_deciding_refuses_everything() -> None:
    broken = Requester("genovia", "inv", 7, "")  # type: ignore[arg-type]  # roles not a tuple

    bounds = bounds_for(parse(approve_rule()), requester=broken)

    assert bounds.decidable == () and bounds.officer_roles == frozenset()
    assert dict(bounds.refused) == dict.fromkeys(
        ("case_ref", "first_seen"), "policy evaluation failed (TypeError)"
    )
    assert bounds.explanation[0].startswith("evaluation-error: TypeError")


# --- the bounds, for any request -------------------------------------------------

AGENCIES = ("genovia", "sylvania", "freedonia")
ROLES = ("investigator", "analyst", "trainee")
OFFICERS = ("duty-officer", "supervisor")
CASE_REFS = ("GEN-1", "GEN-", "SYL-2", "")
BASES = ("", "eu-2016-680-art-8", "budapest")
DATASETS = {
    d.name: tuple(f for f in d.field_names if f != "pdq_distance") for d in CATALOG_V1.datasets
}


def _some(pool: tuple[str, ...]) -> st.SearchStrategy[list[str]]:
    return st.one_of(st.just(["*"]), st.lists(st.sampled_from(pool), min_size=1, max_size=2))


@st.composite
def rule_documents(
    draw: st.DrawFn, index: int, effect: str, datasets: tuple[str, ...] = tuple(DATASETS)
) -> dict[str, Any]:
    dataset = draw(st.sampled_from(sorted(datasets)))
    rule: dict[str, Any] = {
        "id": f"{effect[0]}{index}",
        "effect": effect,
        "agencies": draw(_some(AGENCIES)),
        "roles": draw(_some(ROLES)),
        "purposes": draw(_some(CATALOG_V1.purposes)),
        "datasets": [dataset],
    }
    if draw(st.booleans()):
        rule["case_ref"] = draw(st.sampled_from(("GEN-*", "SYL-*", "*")))
    if draw(st.integers(0, 3)) == 0:
        rule["legal_bases"] = draw(st.lists(st.sampled_from(BASES[1:]), min_size=1))
    if draw(st.integers(0, 3)) == 0:
        rule["attributes"] = {"clearance": draw(st.sampled_from(("secret", "restricted")))}
    fields = st.lists(st.sampled_from(DATASETS[dataset]), min_size=1, max_size=4, unique=True)
    if effect == "approve":
        rule["release"] = draw(fields)
        rule["officers"] = draw(st.lists(st.sampled_from(OFFICERS), min_size=1, unique=True))
        if draw(st.booleans()):
            rule["handling"] = draw(st.sampled_from(list(HandlingCode)))
    else:
        rule["operations"] = draw(st.sampled_from((["records"], ["*"], ["match"])))
        if draw(st.booleans()):
            rule["fields"] = draw(fields)
    return rule


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    rules = [draw(rule_documents(i, "approve")) for i in range(draw(st.integers(0, 4)))]
    # Forbids mostly about the approve rules' datasets, so that they meet.
    aimed = tuple({d for r in rules for d in r["datasets"]}) or tuple(DATASETS)
    rules += [draw(rule_documents(i, "forbid", aimed)) for i in range(draw(st.integers(0, 2)))]
    return parse(*rules)


def _holds(
    rule: Rule, requester: Requester, purpose: str, dataset: str, case_ref: str, basis: str
) -> bool:
    """Scope and conditions, written out independently of the engine."""
    attributes_hold = all(
        requester.attributes.get(name) in allowed for name, allowed in rule.attributes.items()
    )
    return (
        (ANY in rule.agencies or requester.agency in rule.agencies)
        and (ANY in rule.roles or bool(rule.roles & set(requester.roles)))
        and (ANY in rule.purposes or purpose in rule.purposes)
        and (ANY in rule.datasets or dataset in rule.datasets)
        and attributes_hold
        and (not rule.case_ref_pattern or case_ref_matches(rule.case_ref_pattern, case_ref))
        and (not rule.legal_bases or basis in rule.legal_bases)
    )


@settings(max_examples=200, deadline=None)
@given(
    policy=policies(),
    agency=st.sampled_from(AGENCIES),
    roles=st.lists(st.sampled_from(ROLES), max_size=2),
    clearance=st.sampled_from(("", "secret", "restricted")),
    purpose=st.sampled_from(CATALOG_V1.purposes),
    dataset=st.sampled_from(sorted(DATASETS)),
    case_ref=st.sampled_from(CASE_REFS),
    basis=st.sampled_from(BASES),
    data=st.data(),
)
def test_every_asked_field_is_decidable_or_refused_and_only_within_the_rules(
    policy: Policy,
    agency: str,
    roles: list[str],
    clearance: str,
    purpose: str,
    dataset: str,
    case_ref: str,
    basis: str,
    data: st.DataObject,
) -> None:
    if policy.approves and data.draw(st.integers(0, 3)) > 0:
        # Three requests in four aimed at one approve rule, so that some fit it.
        aim = data.draw(st.sampled_from(policy.approves))
        agency = data.draw(st.sampled_from(sorted(aim.agencies - {ANY}) or AGENCIES))
        roles = [*roles, data.draw(st.sampled_from(sorted(aim.roles - {ANY}) or ROLES))]
        purpose = data.draw(st.sampled_from(sorted(aim.purposes - {ANY}) or CATALOG_V1.purposes))
        (dataset,) = aim.datasets
        case_ref = data.draw(
            st.sampled_from(
                [c for c in CASE_REFS if case_ref_matches(aim.case_ref_pattern, c)] or CASE_REFS
            )
        )
        basis = data.draw(st.sampled_from(sorted(aim.legal_bases) or BASES))
    fields = data.draw(st.lists(st.sampled_from(DATASETS[dataset]), min_size=1, max_size=5))
    attributes = {"clearance": clearance} if clearance else {}
    requester = Requester(agency, "inv", tuple(roles), "https://idp.example", attributes)

    bounds = decide_followup(
        policy, requester, purpose, dataset, fields, case_ref=case_ref, legal_basis=basis
    )

    asked = set(fields)
    decidable = set(bounds.decidable)
    applying = [
        r for r in policy.approves if _holds(r, requester, purpose, dataset, case_ref, basis)
    ]
    forbidden: set[str] = set()
    for forbid in policy.forbids:
        if Operation.RECORDS in forbid.operations and _holds(
            forbid, requester, purpose, dataset, case_ref, basis
        ):
            forbidden |= forbid.fields or asked
    released = set().union(*(r.release for r in applying))
    assert decidable.isdisjoint(bounds.refused)
    assert decidable | set(bounds.refused) == asked
    assert len(bounds.decidable) == len(decidable)
    assert decidable == (released - forbidden) & asked
    assert bounds.rules == tuple(r.id for r in applying)
    assert bounds.officer_roles == set().union(*(r.officers for r in applying))
    assert set(bounds.handling) == decidable
    assert all(code in {c.value for c in HandlingCode} for code in bounds.handling.values())
    assert all(bounds.refused[f] for f in bounds.refused), "every refusal says why"
    for name in decidable:
        assert bounds.field_officers[name] <= bounds.officer_roles
        assert may_release(bounds, bounds.field_officers[name], name)


# --- follow-up cases in a policy's case file -------------------------------------


FOLLOWUP_CASE = """
[defaults]
requester = { agency = "genovia", roles = ["investigator"] }
purpose = "csam-investigation"
case_ref = "GEN-2026-0142"

[[case]]
name = "the case"
followup = { dataset = "media", fields = ["case_ref", "first_seen", "shareable"] }
"""


def _cases(extra: str) -> tuple[PolicyCase, ...]:
    return parse_cases(tomllib.loads(FOLLOWUP_CASE + extra), CATALOG_V1)


def test_a_follow_up_case_passes_and_reads_as_a_decision() -> None:
    policy = load_policy(DEMO / "freedonia.toml", CATALOG_V1)
    (case,) = _cases(
        'expect_decidable = ["case_ref", "first_seen"]\nexpect_refused = ["shareable"]\n'
        'rule = "genovian-follow-up"\nreason_includes = "release shareable"\n'
    )

    result = run_case(policy, case)

    assert result.passed, result.failures
    assert result.bounds is not None and result.bounds.decidable == ("case_ref", "first_seen")
    assert result.decision.permitted and result.decision.rules == ("genovian-follow-up",)
    assert case.query.fields == ("case_ref", "first_seen", "shareable")


def test_a_failing_follow_up_case_says_what_differed() -> None:
    policy = load_policy(DEMO / "freedonia.toml", CATALOG_V1)
    (case,) = _cases(
        'expect_decidable = ["shareable"]\nexpect_refused = []\nrule = "other"\n'
        'reason_includes = "nope"\n'
    )

    result = run_case(policy, case)

    assert result.failures == (
        "decidable: expected [shareable], got [case_ref, first_seen]",
        "refused: expected nothing, got [shareable]",
        "expected rule other, got genovian-follow-up",
        "no refusal includes 'nope' (refusals: 'shareable: no approve rule lets an officer "
        "release shareable on this request (they release case_ref, category, first_seen)')",
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('expect = "permit"\n', "unknown keys expect in a follow-up case"),
        ("", "a follow-up case needs `expect_decidable = [...]` or `expect_refused = [...]`"),
        ('expect_refused = ["md5"]\n', "`expect_refused` names md5, which the follow-up does"),
        ('query = { dataset = "media", operation = "count" }\n', "unknown keys query"),
    ],
)
def test_follow_up_case_mistakes_are_named(extra: str, message: str) -> None:
    with pytest.raises(CaseFileError, match=re.escape(message)):
        _cases(extra)


def test_a_follow_up_case_names_real_fields() -> None:
    text = FOLLOWUP_CASE.replace('"shareable"]', '"colour"]') + 'expect_refused = ["colour"]\n'

    with pytest.raises(CaseFileError, match=re.escape("followup: media has no field colour")):
        parse_cases(tomllib.loads(text), CATALOG_V1)
