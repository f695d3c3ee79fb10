"""The policy engine, pure: (policy, requester, purpose, query) in, decision out.

Each semantic in ``policies/engine.py``'s docstring is pinned by an example
test here, and the algebraic ones (order independence, forbid never widens,
permit never narrows) by Hypothesis properties over random policies built
directly from ``Rule`` objects over the v1 catalog.
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liaison.catalog import CATALOG_V1
from liaison.messages import Requester
from liaison.query import Comparator, Operation, Predicate, Query
from policies import Effect, Policy, PolicyDecision, Rule, decide, parse_policy
from policies.engine import DEFAULT_DENY, EVALUATION_ERROR
from policies.model import ANY
from tests.support import (
    COIN,
    DATASET_FIELDS,
    EFFECT,
    MAX_ROWS,
    MIN_COUNT,
    OPERATIONS,
    POLICY_DATASETS,
    POLICY_ROLES,
    RULE_COUNT,
    RULE_IDS,
    pick,
    policy_query,
    scope_near,
    some,
    subset_near,
    unique_ids,
)

ALICE = Requester("genovia", "inv.alice", ("investigator",), "https://idp.genovia.example")
PURPOSE = "csam-investigation"
SHA = "ab" * 32
ALL_OPERATIONS = frozenset(Operation)


def permit(
    rule_id: str,
    *,
    agencies: frozenset[str] = frozenset({ANY}),
    roles: frozenset[str] = frozenset({ANY}),
    purposes: frozenset[str] = frozenset({ANY}),
    datasets: frozenset[str] = frozenset({"media"}),
    operations: frozenset[Operation] = ALL_OPERATIONS,
    match_fields: frozenset[str] = frozenset({"sha256", "md5"}),
    release: frozenset[str] = frozenset(),
    min_count: int = 0,
    max_rows: int = 100,
    description: str = "",
) -> Rule:
    return Rule(
        id=rule_id,
        effect=Effect.PERMIT,
        agencies=agencies,
        roles=roles,
        purposes=purposes,
        datasets=datasets,
        operations=operations,
        match_fields=match_fields,
        release=release,
        min_count=min_count,
        max_rows=max_rows,
        description=description,
    )


def forbid(
    rule_id: str,
    *,
    agencies: frozenset[str] = frozenset({ANY}),
    roles: frozenset[str] = frozenset({ANY}),
    purposes: frozenset[str] = frozenset({ANY}),
    datasets: frozenset[str] = frozenset({ANY}),
    operations: frozenset[Operation] = ALL_OPERATIONS,
    description: str = "",
) -> Rule:
    return Rule(
        id=rule_id,
        effect=Effect.FORBID,
        agencies=agencies,
        roles=roles,
        purposes=purposes,
        datasets=datasets,
        operations=operations,
        description=description,
    )


def policy(*rules: Rule) -> Policy:
    return Policy(agency="testland", rules=rules)


def eq(field: str, value: str = "x") -> Predicate:
    return Predicate(field, Comparator.EQ, (value,))


def records(*fields: str, on: tuple[Predicate, ...] = (eq("sha256", SHA),)) -> Query:
    return Query("media", Operation.RECORDS, predicates=on, fields=fields)


def count(*, on: tuple[Predicate, ...] = ()) -> Query:
    return Query("media", Operation.COUNT, predicates=on)


def count_by(group_by: str, *, on: tuple[Predicate, ...] = ()) -> Query:
    return Query("media", Operation.COUNT_BY, predicates=on, group_by=group_by)


def match(*, on: tuple[Predicate, ...] = (eq("sha256", SHA),)) -> Query:
    return Query("media", Operation.MATCH, predicates=on)


# --- default deny -----------------------------------------------------------


def test_an_empty_policy_denies_by_default_deny() -> None:
    decision = decide(policy(), ALICE, PURPOSE, match())

    assert not decision.permitted
    assert decision.rules == (DEFAULT_DENY,)
    assert decision.grant is None
    assert decision.obligations == ()
    assert "genovia" in decision.reason and "investigator" in decision.reason


_RELEASES_CATEGORY = frozenset({"category"})


@pytest.mark.parametrize(
    "rule",
    [
        permit("p", release=_RELEASES_CATEGORY, agencies=frozenset({"ruritania"})),
        permit("p", release=_RELEASES_CATEGORY, roles=frozenset({"analyst"})),
        permit("p", release=_RELEASES_CATEGORY, purposes=frozenset({"statistics"})),
        permit("p", release=_RELEASES_CATEGORY, datasets=frozenset({"accounts"})),
        permit("p", release=_RELEASES_CATEGORY, operations=frozenset({Operation.COUNT})),
    ],
    ids=["agency", "role", "purpose", "dataset", "operation"],
)
def test_a_permit_out_of_scope_leaves_the_default_deny(rule: Rule) -> None:
    decision = decide(policy(rule), ALICE, PURPOSE, records("category"))

    assert not decision.permitted
    assert decision.rules == (DEFAULT_DENY,)
    assert decision.grant is None


def test_a_requester_without_roles_matches_only_wildcard_roles() -> None:
    nobody = replace(ALICE, roles=())
    named = permit("named", roles=frozenset({"investigator"}))
    anyone = permit("anyone", roles=frozenset({ANY}))

    assert decide(policy(named), nobody, PURPOSE, match()).rules == (DEFAULT_DENY,)
    assert decide(policy(named, anyone), nobody, PURPOSE, match()).rules == ("anyone",)
    assert "no role" in decide(policy(named), nobody, PURPOSE, match()).reason


def test_any_one_shared_role_is_enough() -> None:
    rule = permit("analysts", roles=frozenset({"analyst", "supervisor"}))
    bob = replace(ALICE, roles=("trainee", "analyst"))

    assert decide(policy(rule), bob, PURPOSE, match()).permitted


# --- forbid overrides permit --------------------------------------------------


def test_forbid_overrides_permit_and_names_every_applicable_forbid() -> None:
    rules = (
        permit("p-records", release=frozenset({"category"})),
        forbid("f-zeta", description="Zeta law."),
        forbid("f-alpha", roles=frozenset({"investigator"}), description="Alpha law."),
        forbid("f-other-agency", agencies=frozenset({"ruritania"}), description="Not you."),
        forbid("f-other-op", operations=frozenset({Operation.COUNT}), description="Not this."),
    )

    decision = decide(policy(*rules), ALICE, PURPOSE, records("category"))

    assert not decision.permitted
    assert decision.rules == ("f-alpha", "f-zeta")
    assert decision.reason == "Alpha law.; Zeta law."
    assert decision.grant is None


def test_a_forbid_without_description_is_named_in_the_reason() -> None:
    decision = decide(policy(permit("p"), forbid("no-media")), ALICE, PURPOSE, match())

    assert decision.rules == ("no-media",)
    assert decision.reason == "forbidden by no-media"


def test_a_forbid_denies_even_when_no_permit_exists() -> None:
    decision = decide(policy(forbid("f")), ALICE, PURPOSE, match())

    assert decision.rules == ("f",)


# --- choosing the grant -------------------------------------------------------


def test_the_permit_releasing_most_requested_fields_wins_over_more_rows() -> None:
    narrow = permit("a-narrow", release=frozenset({"category"}), max_rows=1000)
    wide = permit("z-wide", release=frozenset({"category", "first_seen"}), max_rows=5)

    decision = decide(policy(narrow, wide), ALICE, PURPOSE, records("category", "first_seen"))

    assert decision.permitted and decision.grant is not None
    assert decision.rules == ("z-wide",)
    assert decision.grant.fields == ("category", "first_seen")
    assert decision.grant.max_rows == 5


def test_only_requested_fields_count_towards_generosity() -> None:
    # "many" releases more fields in total, but fewer of those asked for.
    many = permit("many", release=frozenset({"md5", "pdq", "case_ref", "first_seen"}))
    asked = permit("asked", release=frozenset({"category", "victim_identified"}))

    decision = decide(
        policy(many, asked), ALICE, PURPOSE, records("category", "victim_identified", "md5")
    )

    assert decision.grant is not None
    assert decision.rules == ("asked",)
    assert decision.grant.fields == ("category", "victim_identified")
    assert decision.grant.withheld == ("md5",)


def test_with_equal_fields_the_permit_with_most_rows_wins() -> None:
    few = permit("a-few", release=frozenset({"category"}), max_rows=10, min_count=0)
    more = permit("z-more", release=frozenset({"category"}), max_rows=50, min_count=3)

    decision = decide(policy(few, more), ALICE, PURPOSE, records("category"))

    assert decision.rules == ("z-more",)
    assert decision.grant is not None and decision.grant.max_rows == 50


def test_with_equal_fields_and_rows_the_lowest_min_count_wins() -> None:
    strict = permit("a-strict", release=frozenset({"category"}), min_count=10)
    lenient = permit("z-lenient", release=frozenset({"category"}), min_count=2)

    decision = decide(policy(strict, lenient), ALICE, PURPOSE, count_by("category"))

    assert decision.rules == ("z-lenient",)
    assert decision.grant is not None and decision.grant.min_count == 2


def test_with_everything_equal_the_smallest_rule_id_wins() -> None:
    rules = [permit(i, release=frozenset({"category"})) for i in ("m", "b", "x")]

    for ordering in (rules, rules[::-1]):
        decision = decide(policy(*ordering), ALICE, PURPOSE, records("category"))
        assert decision.rules == ("b",)


def test_a_match_needs_no_released_field() -> None:
    decision = decide(policy(permit("hit-no-hit")), ALICE, PURPOSE, match())

    assert decision.permitted and decision.grant is not None
    assert decision.grant.fields == ()
    assert decision.reason == ""
    assert decision.obligations == ("at most 100 rows",)


def test_withheld_fields_are_listed_in_the_order_asked() -> None:
    rule = permit("p", release=frozenset({"category", "first_seen"}), max_rows=7, min_count=3)

    decision = decide(
        policy(rule), ALICE, PURPOSE, records("case_ref", "first_seen", "md5", "category")
    )

    assert decision.permitted and decision.grant is not None
    assert decision.grant.fields == ("first_seen", "category")
    assert decision.grant.withheld == ("case_ref", "md5")
    assert decision.reason == "withheld: case_ref, md5"
    assert decision.obligations == (
        "release only: first_seen, category",
        "withhold: case_ref, md5",
        "at most 7 rows",
        "counts below 3 shown as 'fewer than 3'",
    )


def test_a_records_query_with_nothing_released_is_denied_naming_the_candidates() -> None:
    rules = (
        permit("b-dates", release=frozenset({"first_seen"})),
        permit("a-cats", release=frozenset({"category"})),
        permit("c-blind", match_fields=frozenset({"md5"}), release=frozenset({"case_ref"})),
    )

    decision = decide(policy(*rules), ALICE, PURPOSE, records("case_ref", "pdq"))

    # c-blind would release case_ref, but cannot match on sha256.
    assert not decision.permitted
    assert decision.rules == ("a-cats", "b-dates")
    assert decision.reason == "none of the requested fields (case_ref, pdq) is released"
    assert decision.grant is None


# --- predicates and grouping ------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [match(on=(eq("pdq"),)), count(on=(eq("pdq"),)), records("category", on=(eq("pdq"),))],
    ids=["match", "count", "records"],
)
def test_a_predicate_on_a_hidden_field_is_refused_and_named(query: Query) -> None:
    # pdq is released, so its values are not secret, but it is not matchable.
    rule = permit("p", match_fields=frozenset({"sha256"}), release=frozenset({"category", "pdq"}))

    decision = decide(policy(rule), ALICE, PURPOSE, query)

    assert not decision.permitted
    assert decision.rules == ("p",)
    assert decision.reason == "matching on pdq is not permitted"
    assert decision.grant is None


def test_every_hidden_predicate_field_is_named() -> None:
    rule = permit("p", match_fields=frozenset({"sha256"}))
    query = count(on=(eq("sha256"), eq("pdq"), eq("case_ref")))

    decision = decide(policy(rule), ALICE, PURPOSE, query)

    assert decision.reason == "matching on case_ref, pdq is not permitted"


def test_predicates_must_all_be_allowed_by_one_single_rule() -> None:
    by_sha = permit("by-sha", match_fields=frozenset({"sha256"}))
    by_md5 = permit("by-md5", match_fields=frozenset({"md5"}))
    query = match(on=(eq("sha256"), eq("md5")))

    decision = decide(policy(by_sha, by_md5), ALICE, PURPOSE, query)

    assert not decision.permitted
    assert decision.rules == ("by-md5", "by-sha")
    assert decision.reason == "no single rule permits matching on all of md5, sha256"


def test_a_permit_that_cannot_match_the_predicates_is_skipped_for_one_that_can() -> None:
    generous = permit(
        "generous", match_fields=frozenset({"md5"}), release=frozenset({"category", "case_ref"})
    )
    modest = permit("modest", match_fields=frozenset({"sha256"}), release=frozenset({"category"}))

    decision = decide(policy(generous, modest), ALICE, PURPOSE, records("category", "case_ref"))

    assert decision.rules == ("modest",)
    assert decision.grant is not None and decision.grant.fields == ("category",)


def test_count_by_on_a_field_that_is_not_released_is_refused() -> None:
    rule = permit("stats", match_fields=frozenset({"category"}), release=frozenset({"category"}))

    decision = decide(policy(rule), ALICE, "statistics", count_by("case_ref"))

    assert not decision.permitted
    assert decision.rules == ("stats",)
    assert decision.reason == "grouping by 'case_ref' is not permitted"


def test_count_by_picks_a_permit_that_releases_the_group() -> None:
    tight = permit("a-tight", release=frozenset({"category"}), min_count=25, max_rows=10)
    loose = permit("b-loose", release=frozenset({"first_seen"}), min_count=0, max_rows=1000)

    decision = decide(policy(tight, loose), ALICE, "statistics", count_by("category"))

    assert decision.permitted and decision.grant is not None
    assert decision.rules == ("a-tight",)
    assert decision.grant.min_count == 25


def test_a_matchable_field_need_not_be_released() -> None:
    rule = permit("p", match_fields=frozenset({"sha256"}), release=frozenset({"category"}))

    decision = decide(policy(rule), ALICE, PURPOSE, records("category", "sha256"))

    assert decision.grant is not None
    assert decision.grant.fields == ("category",)
    assert decision.grant.withheld == ("sha256",)


# --- groups and wildcards ----------------------------------------------------


def test_groups_expand_to_their_member_agencies() -> None:
    loaded = parse_policy(
        {
            "version": 1,
            "agency": "testland",
            "groups": {"partners": ["genovia", "ruritania"]},
            "rule": [
                {
                    "id": "partners-match",
                    "effect": "permit",
                    "agencies": ["group:partners", "sylvania"],
                    "roles": ["investigator"],
                    "purposes": [PURPOSE],
                    "datasets": ["media"],
                    "operations": ["match"],
                    "match_fields": ["sha256"],
                }
            ],
        },
        CATALOG_V1,
    )

    for agency in ("genovia", "ruritania", "sylvania"):
        assert decide(loaded, replace(ALICE, agency=agency), PURPOSE, match()).permitted
    for agency in ("freedonia", "partners", "group:partners"):
        outsider = replace(ALICE, agency=agency)
        assert decide(loaded, outsider, PURPOSE, match()).rules == (DEFAULT_DENY,)


def test_wildcards_match_every_agency_role_and_purpose() -> None:
    rule = permit("open", agencies=frozenset({ANY}), roles=frozenset({ANY}))
    for agency, roles, purpose in [
        ("genovia", ("investigator",), PURPOSE),
        ("elbonia", ("trainee",), "statistics"),
        ("x", (), "victim-identification"),
    ]:
        requester = Requester(agency, "someone", roles, "issuer")
        assert decide(policy(rule), requester, purpose, match()).permitted


def test_a_wildcard_forbid_covers_every_dataset_and_operation() -> None:
    rules = (
        permit("media", datasets=frozenset({"media"}), release=frozenset({"category"})),
        permit("accounts", datasets=frozenset({"accounts"}), match_fields=frozenset({"email"})),
        forbid("nothing-for-trainees", roles=frozenset({"trainee"})),
    )
    trainee = replace(ALICE, roles=("investigator", "trainee"))
    queries = [
        match(),
        count(),
        count_by("category"),
        records("category"),
        Query("accounts", Operation.MATCH, predicates=(eq("email", "a@b.example"),)),
    ]

    for query in queries:
        assert decide(policy(*rules), trainee, PURPOSE, query).rules == ("nothing-for-trainees",)
    assert decide(policy(*rules), ALICE, PURPOSE, queries[0]).permitted


# --- errors are denials -------------------------------------------------------


class ExplodingRule(Rule):
    """A rule whose scope check fails, as a corrupt policy object might."""

    __slots__ = ()

    def in_scope(
        self, agency: str, roles: frozenset[str], purpose: str, dataset: str, operation: Operation
    ) -> bool:
        raise RuntimeError("corrupt rule")


class ExplodingPolicy(Policy):
    __slots__ = ()

    def candidates(
        self, dataset: str, operation: Operation
    ) -> tuple[tuple[Rule, ...], tuple[Rule, ...]]:
        raise KeyError("lost the rules")


def _broken_policies() -> list[Policy]:
    good = permit("good", release=frozenset({"category"}))
    exploding = ExplodingRule(**{f.name: getattr(good, f.name) for f in dataclasses.fields(good)})
    return [
        # A scope set that is not a set at all.
        policy(good, replace(good, id="bad", agencies=cast("frozenset[str]", None))),
        # A min_count that cannot be compared with the others'.
        policy(good, replace(good, id="odd", min_count=cast("int", "3"))),
        policy(exploding),
        ExplodingPolicy(agency="testland", rules=(good,)),
    ]


@pytest.mark.parametrize("broken", _broken_policies(), ids=["none", "type", "rule", "policy"])
def test_an_error_while_deciding_is_a_denial(broken: Policy) -> None:
    decision = decide(broken, ALICE, PURPOSE, records("category"))

    assert not decision.permitted
    assert decision.rules == (EVALUATION_ERROR,)
    assert decision.reason.startswith("policy evaluation failed (")
    assert decision.grant is None


# --- properties over random policies -----------------------------------------
#
# Rules are drawn near a drawn request (its agency, role, purpose, dataset,
# operation and fields are often, not always, in scope), so that permits apply
# and the interesting branches run, not only the default deny.

AGENCIES = ("genovia", "ruritania", "freedonia", "sylvania")
PROPERTY = settings(max_examples=200, deadline=None)
Request = tuple[Requester, str, Query]


@st.composite
def requests(draw: st.DrawFn) -> Request:
    requester = Requester(
        draw(pick(AGENCIES)), "someone", tuple(sorted(draw(some(POLICY_ROLES, 1, 2)))), "issuer"
    )
    purpose = draw(pick(CATALOG_V1.purposes))
    return requester, purpose, policy_query(draw, needs_a_predicate=(Operation.MATCH,))


def _rule_near(draw: st.DrawFn, request: Request, effect: Effect | None) -> Rule:
    """A rule near ``request``, with a placeholder id; ids are given out per policy."""
    requester, purpose, query = request
    chosen = draw(EFFECT) if effect is None else effect
    datasets = scope_near(draw, POLICY_DATASETS, frozenset({query.dataset}))
    if chosen is Effect.PERMIT and ANY in datasets:
        datasets = frozenset({query.dataset})
    operations = draw(OPERATIONS)
    if not operations or draw(COIN):
        operations |= {query.operation}
    body = Rule(
        id="?",
        effect=chosen,
        agencies=scope_near(draw, AGENCIES, frozenset({requester.agency})),
        roles=scope_near(draw, POLICY_ROLES, frozenset(requester.roles)),
        purposes=scope_near(draw, CATALOG_V1.purposes, frozenset({purpose})),
        datasets=datasets,
        operations=operations,
    )
    if chosen is Effect.FORBID:
        return body
    common = frozenset.intersection(*(frozenset(DATASET_FIELDS[d]) for d in datasets))
    asked = frozenset(query.fields) | ({query.group_by} if query.group_by else set())
    return replace(
        body,
        match_fields=subset_near(draw, common, query.predicate_fields),
        release=subset_near(draw, common, asked),
        min_count=draw(MIN_COUNT),
        max_rows=draw(MAX_ROWS),
        releases_lists=draw(COIN),
    )


@st.composite
def rules_near(draw: st.DrawFn, request: Request, effect: Effect | None = None) -> list[Rule]:
    """Up to six rules with unique random ids, drawn near ``request``."""
    bodies = [_rule_near(draw, request, effect) for _ in range(draw(RULE_COUNT))]
    ids = draw(unique_ids(len(bodies)))
    return [replace(body, id=i) for body, i in zip(bodies, ids, strict=True)]


@st.composite
def one_rule_near(draw: st.DrawFn, request: Request, effect: Effect) -> Rule:
    return _rule_near(draw, request, effect)


def _fresh_id(taken: set[str], base: str) -> str:
    candidate = base
    while candidate in taken:
        candidate += "'"
    taken.add(candidate)
    return candidate


def _outcome(decision: PolicyDecision) -> tuple[object, ...]:
    """What a decision lets out, without the name of the rule that let it out."""
    g = decision.grant
    if g is None:
        return (decision.permitted,)
    return (decision.permitted, g.fields, g.withheld, g.min_count, g.max_rows)


@PROPERTY
@given(request=requests(), data=st.data())
def test_the_decision_does_not_depend_on_rule_order(request: Request, data: st.DataObject) -> None:
    rules = data.draw(rules_near(request))
    shuffled = data.draw(st.permutations(rules))

    before = decide(policy(*rules), *request)
    after = decide(policy(*shuffled), *request)

    assert after == before


@PROPERTY
@given(request=requests(), data=st.data())
def test_duplicating_rules_under_new_ids_changes_no_outcome(
    request: Request, data: st.DataObject
) -> None:
    rules = data.draw(rules_near(request))
    copied = data.draw(st.lists(st.sampled_from(rules), max_size=4)) if rules else []
    taken = {r.id for r in rules}
    copies = [replace(r, id=_fresh_id(taken, r.id + "-copy")) for r in copied]
    ordering = data.draw(st.permutations([*rules, *copies]))

    before = decide(policy(*rules), *request)
    after = decide(policy(*ordering), *request)

    assert _outcome(after) == _outcome(before)


@PROPERTY
@given(request=requests(), data=st.data())
def test_adding_a_forbid_never_widens(request: Request, data: st.DataObject) -> None:
    rules = data.draw(rules_near(request))
    extra = data.draw(one_rule_near(request, Effect.FORBID))
    added = replace(extra, id=_fresh_id({r.id for r in rules}, data.draw(RULE_IDS)))

    before = decide(policy(*rules), *request)
    after = decide(policy(*rules, added), *request)

    if not before.permitted:
        assert not after.permitted
    if after.permitted:
        assert after == before
    else:
        assert after.grant is None


@PROPERTY
@given(request=requests(), data=st.data())
def test_adding_a_permit_never_narrows(request: Request, data: st.DataObject) -> None:
    rules = data.draw(rules_near(request))
    extra = data.draw(one_rule_near(request, Effect.PERMIT))
    added = replace(extra, id=_fresh_id({r.id for r in rules}, data.draw(RULE_IDS)))

    before = decide(policy(*rules), *request)
    after = decide(policy(*rules, added), *request)

    if before.permitted:
        assert before.grant is not None
        assert after.permitted and after.grant is not None
        if request[2].operation is Operation.RECORDS:
            assert len(after.grant.fields) >= len(before.grant.fields)
            if len(after.grant.fields) == len(before.grant.fields):
                assert after.grant.max_rows >= before.grant.max_rows
        else:
            assert after.grant.min_count <= before.grant.min_count
            if after.grant.min_count == before.grant.min_count:
                assert after.grant.max_rows >= before.grant.max_rows
        if after.rules != before.rules:
            assert after.rules == (added.id,)


@PROPERTY
@given(request=requests(), data=st.data())
def test_a_policy_of_only_forbids_never_permits(request: Request, data: st.DataObject) -> None:
    rules = data.draw(rules_near(request, Effect.FORBID))

    decision = decide(policy(*rules), *request)

    assert not decision.permitted
    assert decision.grant is None
    assert decision.rules == (DEFAULT_DENY,) or set(decision.rules) <= {r.id for r in rules}


@PROPERTY
@given(request=requests(), data=st.data())
def test_a_grant_releases_only_what_was_asked_and_what_its_rule_releases(
    request: Request, data: st.DataObject
) -> None:
    rules = data.draw(rules_near(request))
    requester, purpose, query = request
    roles = frozenset(requester.roles)

    decision = decide(policy(*rules), requester, purpose, query)

    if not decision.permitted:
        assert decision.grant is None
        assert decision.rules
        return
    grant = decision.grant
    assert grant is not None
    assert decision.rules == (grant.rule_id,)
    (chosen,) = [r for r in rules if r.id == grant.rule_id]
    assert chosen.effect is Effect.PERMIT
    assert chosen.applies_to(requester.agency, roles, purpose, query.dataset, query.operation)
    assert not any(
        r.applies_to(requester.agency, roles, purpose, query.dataset, query.operation)
        for r in rules
        if r.effect is Effect.FORBID
    )
    assert query.predicate_fields <= chosen.match_fields
    assert set(grant.fields) <= set(query.fields)
    assert set(grant.fields) <= chosen.release
    assert grant.fields == tuple(f for f in query.fields if f in chosen.release)
    assert grant.withheld == tuple(f for f in query.fields if f not in chosen.release)
    assert (grant.min_count, grant.max_rows) == (chosen.min_count, chosen.max_rows)
    if query.operation is Operation.RECORDS:
        assert grant.fields
    if query.operation is Operation.COUNT_BY:
        assert query.group_by in chosen.release


def _read_the_docstring(rules: list[Rule], request: Request) -> tuple[bool, tuple[str, ...]]:
    """The engine's documented semantics, read plainly: (permitted, rules named)."""
    requester, purpose, query = request
    op = query.operation

    def applies(r: Rule) -> bool:
        return (
            (ANY in r.agencies or requester.agency in r.agencies)
            and (ANY in r.roles or any(role in r.roles for role in requester.roles))
            and (ANY in r.purposes or purpose in r.purposes)
            and (ANY in r.datasets or query.dataset in r.datasets)
            and op in r.operations
        )

    forbids = sorted(r.id for r in rules if r.effect is Effect.FORBID and applies(r))
    if forbids:
        return False, tuple(forbids)
    permits = sorted(
        (r for r in rules if r.effect is Effect.PERMIT and applies(r)), key=lambda r: r.id
    )
    if not permits:
        return False, (DEFAULT_DENY,)
    names = tuple(r.id for r in permits)
    # Records answer a lookup: an eq, in or near predicate on a field that identifies a record.
    looked_up = [
        p
        for p in query.predicates
        if p.comparator in (Comparator.EQ, Comparator.IN, Comparator.NEAR)
        and CATALOG_V1.dataset(query.dataset).field(p.field).identifies
    ]
    fits = [
        r
        for r in permits
        if all(p.field in r.match_fields for p in query.predicates)
        and not (op is Operation.RECORDS and not r.releases_lists and not looked_up)
    ]
    if not fits:
        return False, names
    if op is Operation.COUNT_BY:
        fits = [r for r in fits if query.group_by in r.release]
        if not fits:
            return False, names

    def generosity(r: Rule) -> tuple[int, int, int, str]:
        if op is Operation.RECORDS:
            released = [f for f in query.fields if f in r.release]
            return (-len(released), -r.max_rows, r.min_count, r.id)
        return (r.min_count, -r.max_rows, 0, r.id)

    best = min(fits, key=generosity)
    if op is Operation.RECORDS and not any(f in best.release for f in query.fields):
        return False, tuple(r.id for r in fits)
    return True, (best.id,)


@PROPERTY
@given(request=requests(), data=st.data())
def test_decide_agrees_with_a_plain_reading_of_its_documented_semantics(
    request: Request, data: st.DataObject
) -> None:
    rules = data.draw(rules_near(request))

    decision = decide(policy(*rules), *request)

    assert (decision.permitted, decision.rules) == _read_the_docstring(rules, request)


# --- adding a permit never makes a count less exact -----------------------------


def test_adding_a_permit_never_makes_a_count_less_exact() -> None:
    exact = permit("exact", operations=frozenset({Operation.COUNT}), min_count=0, max_rows=10)
    coarse = permit("coarse", operations=frozenset({Operation.COUNT}), min_count=50, max_rows=20)

    before = decide(policy(exact), ALICE, "statistics", count())
    after = decide(policy(exact, coarse), ALICE, "statistics", count())

    assert before.grant is not None and after.grant is not None
    assert after.grant.min_count <= before.grant.min_count
