"""Cedar as the oracle: our allow/deny must be Cedar's on the same policy and request.

Each policy is translated by ``policies.cedar`` and evaluated by ``cedarpy``
(Cedar's own Rust engine). Random policies come from policy *documents*, so
they pass through the loader like a node's own (groups expand there), with
names full of quotes, backslashes, non-ASCII letters and reserved Cedar JSON
keys, and small pools so that scopes, conditions and case-reference patterns
really overlap with the requests; three requests in four are aimed at one of
the policy's rules, so that hits and near misses are common. A second set of
policies is built from ``Rule`` objects directly, with what the loader
refuses (empty lists, "*" datasets on permits, unknown datasets).

Every run compares 16,000 requests under random policies, 4,000 under rules
the loader refuses, and 12,000 under the demo agencies' policies: about 45%
of the random requests are permitted, the rest denied by default, by a
forbid, or by a permit's own checks.

On a disagreement the test fails with the first disagreeing request, reduced
(greedily, in seconds) to a minimal policy and request, shown as our rules and
in Cedar: either our engine or the translation is wrong, and neither is to be
"fixed" by weakening this test.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import cedarpy
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from liaison.catalog import CATALOG_V1
from liaison.demo.data import demo_agencies
from liaison.messages import Requester
from liaison.query import Comparator, Operation, Predicate, Query
from policies import Effect, Policy, decide, load_policy, parse_policy
from policies.cedar import (
    CEDAR_SCHEMA,
    CedarTranslationError,
    cedar_pattern,
    cedar_string,
    policy_to_cedar,
    request_to_cedar,
)
from policies.engine import DEFAULT_DENY
from policies.model import ANY, Rule, case_ref_matches

DEMO_DIR = Path(__file__).resolve().parent.parent / "policies" / "demo"
POLICIES_PER_RUN = 300
RAW_POLICIES_PER_RUN = 100
REQUESTS_PER_POLICY = 40
DEMO_REQUESTS_PER_POLICY = 4000

# Small pools, so that random rules and random requests meet often.
AGENCIES = ("genovia", "freedonia", 'q"uote', "back\\slash", "ünï", "tab\tagency")
REQUESTER_AGENCIES = (*AGENCIES, "outsider", "*")
GROUP_NAMES = ("eu", "nordic", "x")
ROLES = ("investigator", "analyst", "trainee", 'r"ole', "rôle")
ATTRIBUTE_NAMES = ("clearance", "unit", "__entity", "__extn", "sp ace", 'q"n')
ATTRIBUTE_VALUES = ("secret", "restricted", "x\\y", "é", 'q"v')
LEGAL_BASES = ("eu-2016-680-art-8", "budapest", 'b"\\')
PURPOSES = CATALOG_V1.purposes
DATASET_FIELDS = {d.name: d.field_names for d in CATALOG_V1.datasets}
ALL_FIELDS = tuple(sorted({f for names in DATASET_FIELDS.values() for f in names}))
COMPUTED_FIELDS = frozenset(
    f.name for d in CATALOG_V1.datasets for f in d.fields if f.computed_from
)
# Not in the catalog: the engine must still decide, and only "*" rules can apply.
REQUEST_DATASETS = {**DATASET_FIELDS, "elsewhere": ("case_ref", "ip")}
ID_SUFFIXES = ("", "-a", '"', "\\", "é", " x", "*")
# Patterns are printable (the loader insists); case references need not be.
PATTERN_ALPHABET = 'AB-*\\"é☃'
CASE_REF_ALPHABET = PATTERN_ALPHABET + "\n"


@dataclass(frozen=True, slots=True)
class Ask:
    """One decision request, as ``policies.decide`` takes it."""

    requester: Requester
    purpose: str
    query: Query
    case_ref: str = ""
    legal_basis: str = ""


# --- the two deciders -------------------------------------------------------


@cache
def _schema() -> cedarpy.Schema:
    return cedarpy.Schema.from_str(CEDAR_SCHEMA)


def cedar_decisions(text: str, asks: Sequence[Ask]) -> list[cedarpy.AuthzResult]:
    """Cedar's answers to ``asks`` under the Cedar policy ``text``, in one batch."""
    policies = cedarpy.PolicySet.from_str(text)
    entities: dict[str, dict[str, Any]] = {}
    requests = []
    for ask in asks:
        translated = request_to_cedar(
            ask.requester,
            ask.purpose,
            ask.query,
            case_ref=ask.case_ref,
            legal_basis=ask.legal_basis,
        )
        for entity in translated.entities:
            entities[json.dumps(entity["uid"], sort_keys=True)] = entity
        requests.append(translated.request())
    return cedarpy.is_authorized_batch(requests, policies, json.dumps(list(entities.values())))


@dataclass(frozen=True, slots=True)
class Disagreement:
    ask: Ask
    problem: str
    our_reason: str
    our_explanation: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Comparison:
    disagreements: list[Disagreement]
    permitted: int  # requests both deciders allowed


def compare(policy: Policy, asks: Sequence[Ask]) -> Comparison:
    """Decide every request with both engines and collect where they differ.

    Beyond allow/deny, the rules named must fit: Cedar's satisfied forbids are
    exactly those our denial names, and our chosen permit is one Cedar found
    satisfied.
    """
    forbid_ids = {r.id for r in policy.rules if r.effect is Effect.FORBID}
    out = []
    permitted = 0
    for ask, cedar in zip(asks, cedar_decisions(policy_to_cedar(policy), asks), strict=True):
        ours = decide(
            policy,
            ask.requester,
            ask.purpose,
            ask.query,
            case_ref=ask.case_ref,
            legal_basis=ask.legal_basis,
        )
        permitted += ours.permitted and cedar.allowed
        satisfied = set(cedar.diagnostics.id_annotations_by_reason.values())
        problems = []
        if cedar.diagnostics.errors:
            problems.append(f"Cedar evaluation errors: {cedar.diagnostics.errors}")
        if ours.permitted != cedar.allowed:
            problems.append(
                f"ours {'ALLOW' if ours.permitted else 'DENY'} by {list(ours.rules)}, "
                f"Cedar {cedar.decision.value} by {sorted(satisfied)}"
            )
        elif ours.permitted and ours.rules[0] not in satisfied:
            problems.append(f"our chosen permit {ours.rules[0]!r} is not among Cedar's {satisfied}")
        elif not ours.permitted and {r for r in ours.rules if r in forbid_ids} != satisfied:
            problems.append(
                f"ours DENY by {list(ours.rules)}, Cedar's satisfied forbids {sorted(satisfied)}"
            )
        if problems:
            out.append(Disagreement(ask, "; ".join(problems), ours.reason, ours.explanation))
    return Comparison(out, permitted)


def _simpler_asks(ask: Ask) -> list[Ask]:
    """``ask`` with one thing fewer: a role, an attribute, a predicate, a field, a text."""
    r, q = ask.requester, ask.query
    out = []
    for i in range(len(r.roles)):
        roles = r.roles[:i] + r.roles[i + 1 :]
        out.append(replace(ask, requester=replace(r, roles=roles)))
    for name in r.attributes:
        attributes = {k: v for k, v in r.attributes.items() if k != name}
        out.append(replace(ask, requester=replace(r, attributes=attributes)))
    for i in range(len(q.predicates)):
        out.append(
            replace(ask, query=replace(q, predicates=q.predicates[:i] + q.predicates[i + 1 :]))
        )
    for i in range(len(q.fields)):
        out.append(replace(ask, query=replace(q, fields=q.fields[:i] + q.fields[i + 1 :])))
    if ask.case_ref:
        out.append(replace(ask, case_ref=""))
    if ask.legal_basis:
        out.append(replace(ask, legal_basis=""))
    return out


def _simpler_policies(policy: Policy) -> list[Policy]:
    """``policy`` with one rule fewer, or one rule simpler (a limit fewer, or less in scope)."""
    rules = policy.rules
    out = [replace(policy, rules=rules[:i] + rules[i + 1 :]) for i in range(len(rules))]
    for i, rule in enumerate(rules):
        wider = [
            replace(rule, agencies=frozenset({ANY})),
            replace(rule, roles=frozenset({ANY})),
            replace(rule, purposes=frozenset({ANY})),
            replace(rule, attributes={}),
            replace(rule, case_ref_pattern=""),
            replace(rule, legal_bases=frozenset()),
            replace(rule, fields=frozenset()),
            replace(rule, releases_lists=False),
        ]
        if len(rule.operations) > 1:
            wider += [replace(rule, operations=rule.operations - {op}) for op in rule.operations]
        if len(rule.datasets) > 1:
            wider += [replace(rule, datasets=rule.datasets - {d}) for d in rule.datasets]
        out += [replace(policy, rules=(*rules[:i], w, *rules[i + 1 :])) for w in wider if w != rule]
    return out


def minimal(policy: Policy, ask: Ask) -> tuple[Policy, Disagreement]:
    """The smallest policy and request (greedily) on which the two still disagree."""

    def disagreement(p: Policy, a: Ask) -> Disagreement | None:
        found = compare(p, [a]).disagreements
        return found[0] if found else None

    current = disagreement(policy, ask)
    assert current is not None, "a disagreement in a batch must persist on its own"
    changed = True
    while changed:
        changed = False
        for p, a in [(p, ask) for p in _simpler_policies(policy)] + [
            (policy, a) for a in _simpler_asks(ask)
        ]:
            found = disagreement(p, a)
            if found is not None:
                policy, ask, current, changed = p, a, found, True
                break
    return policy, current


def describe(policy: Policy, found: Disagreement) -> str:
    rules = "\n".join(f"    {rule!r}" for rule in policy.rules)
    return (
        f"{found.problem}\n  request: {found.ask!r}\n  our reason: {found.our_reason}"
        f"\n  our explanation: {list(found.our_explanation)}"
        f"\n  our rules:\n{rules}\n  in Cedar:\n{policy_to_cedar(policy)}"
    )


def assert_agree(policy: Policy, asks: Sequence[Ask]) -> Comparison:
    """Fail with the first disagreement, reduced to a minimal policy and request."""
    result = compare(policy, asks)
    if result.disagreements:
        small_policy, small = minimal(policy, result.disagreements[0].ask)
        raise AssertionError(
            f"{len(result.disagreements)} of {len(asks)} requests disagree; the first, "
            f"reduced to a minimal policy and request:\n{describe(small_policy, small)}"
        )
    return result


# --- random policies --------------------------------------------------------


def _fields_of(datasets: Sequence[str]) -> tuple[str, ...]:
    """Fields a rule on ``datasets`` may name (the loader checks every dataset)."""
    if "*" in datasets:
        return ALL_FIELDS
    common = set(DATASET_FIELDS[datasets[0]])
    for name in datasets[1:]:
        common &= set(DATASET_FIELDS[name])
    return tuple(sorted(common))


def _names(pool: Sequence[str], *, wildcard: bool = True) -> st.SearchStrategy[list[str]]:
    some = st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True)
    return st.one_of(st.just(["*"]), some) if wildcard else some


@st.composite
def rule_documents(
    draw: st.DrawFn, rule_id: str, effect: Effect, groups: Sequence[str]
) -> dict[str, Any]:
    agency_pool = (*AGENCIES, *(f"group:{g}" for g in groups))
    rule: dict[str, Any] = {
        "id": rule_id,
        "effect": effect.value,
        "agencies": draw(_names(agency_pool)),
        "roles": draw(_names((*ROLES, "*"))),
        "purposes": draw(_names((*PURPOSES, "*"))),
        "operations": draw(_names([op.value for op in Operation])),
    }
    dataset_pool = tuple(DATASET_FIELDS)
    if effect is Effect.FORBID:
        rule["datasets"] = draw(_names(dataset_pool))
    else:
        rule["datasets"] = draw(_names(dataset_pool, wildcard=False))
    fields = _fields_of(rule["datasets"])
    # Each condition on about one rule in three, so that rules still apply often.
    if draw(st.integers(0, 2)) == 0:
        rule["attributes"] = draw(
            st.dictionaries(
                st.sampled_from(ATTRIBUTE_NAMES),
                st.lists(st.sampled_from(ATTRIBUTE_VALUES), min_size=1, max_size=3, unique=True),
                min_size=1,
                max_size=2,
            )
        )
    if draw(st.integers(0, 2)) == 0:
        rule["case_ref"] = draw(st.text(PATTERN_ALPHABET, min_size=1, max_size=5))
    if draw(st.integers(0, 2)) == 0:
        rule["legal_bases"] = draw(
            st.lists(st.sampled_from(LEGAL_BASES), min_size=1, max_size=2, unique=True)
        )
    some_fields = st.lists(st.sampled_from(fields), max_size=4, unique=True)
    if effect is Effect.FORBID:
        forbidden = draw(some_fields)
        if forbidden:
            rule["fields"] = forbidden
        return rule
    # Computed fields (pdq_distance) are released, never matched on: the loader refuses them.
    matchable = [f for f in fields if f not in COMPUTED_FIELDS]
    rule["match_fields"] = draw(st.lists(st.sampled_from(matchable), max_size=4, unique=True))
    rule["release"] = draw(some_fields)
    rule["max_rows"] = draw(st.integers(1, 200))
    if draw(st.booleans()):
        rule["max_distance"] = draw(st.integers(0, 64))
    operations = set(rule["operations"])
    if "*" not in operations and operations <= {"count", "count_by"}:
        rule["min_count"] = draw(st.integers(0, 30))
    if ("*" in operations or "records" in operations) and draw(st.integers(0, 2)) == 0:
        rule["releases_lists"] = True
    return rule


@st.composite
def policy_documents(draw: st.DrawFn) -> dict[str, Any]:
    groups = draw(
        st.dictionaries(
            st.sampled_from(GROUP_NAMES),
            st.lists(st.sampled_from(AGENCIES), min_size=1, max_size=3, unique=True),
            max_size=2,
        )
    )
    permits = draw(st.integers(1, 6))
    forbids = draw(st.integers(0, 3))
    rules = [
        draw(rule_documents(f"p{i}{draw(st.sampled_from(ID_SUFFIXES))}", Effect.PERMIT, [*groups]))
        for i in range(permits)
    ] + [
        draw(rule_documents(f"f{i}{draw(st.sampled_from(ID_SUFFIXES))}", Effect.FORBID, [*groups]))
        for i in range(forbids)
    ]
    document: dict[str, Any] = {"version": 1, "agency": "testland", "rule": rules}
    if groups:
        document["groups"] = groups
    return document


def _predicate(rng: random.Random, field: str) -> Predicate:
    """Perceptual hashes are asked as near-duplicates, at a distance a permit may cap."""
    if field == "pdq" and rng.random() < 0.7:
        return Predicate(field, Comparator.NEAR, ("x",), rng.choice((0, 8, 24, 31, 32, 48, 64)))
    # Now and then a range: on an identifying field it is no lookup (the gateway
    # refuses ranges on text, but the engine and Cedar must still agree).
    if rng.random() < 0.1:
        return Predicate(field, rng.choice((Comparator.GTE, Comparator.LTE)), ("x",))
    return Predicate(field, rng.choice((Comparator.EQ, Comparator.EQ, Comparator.IN)), ("x",))


def _sample(rng: random.Random, pool: Sequence[str], low: int, high: int) -> list[str]:
    """``low`` to ``high`` values from ``pool``, with repeats."""
    return [rng.choice(pool) for _ in range(rng.randint(low, high))]


def random_ask(rng: random.Random, subject: str) -> Ask:
    """A request from the same small pools the random rules use."""
    requester = Requester(
        agency=rng.choice(REQUESTER_AGENCIES),
        subject=subject,
        roles=tuple(dict.fromkeys(_sample(rng, (*ROLES, "*"), 0, 3))),
        issuer="https://idp.example",
        attributes={
            name: rng.choice(ATTRIBUTE_VALUES) for name in _sample(rng, ATTRIBUTE_NAMES, 0, 3)
        },
    )
    dataset = rng.choice(sorted(REQUEST_DATASETS))
    fields = REQUEST_DATASETS[dataset]
    op = rng.choice(list(Operation))
    predicates = tuple(_predicate(rng, f) for f in _sample(rng, fields, 0, 3))
    selected = tuple(_sample(rng, fields, 1, 4)) if op is Operation.RECORDS else ()
    group_by = rng.choice(fields) if op is Operation.COUNT_BY else None
    return Ask(
        requester=requester,
        purpose=rng.choice(PURPOSES),
        query=Query(dataset, op, predicates, selected, group_by),
        case_ref="".join(_sample(rng, CASE_REF_ALPHABET, 0, 6)),
        legal_basis=rng.choice(("", *LEGAL_BASES)),
    )


def ask_near(rng: random.Random, rule: Rule, subject: str) -> Ask:
    """A request aimed at ``rule``: each part fits it nine times in ten.

    Random requests rarely meet a random rule's every condition; these make
    hits and near misses (all but one part fitting) common.
    """

    def fits() -> bool:
        return rng.random() < 0.9

    def aim(values: frozenset[str], otherwise: str) -> str:
        """One of ``values`` if it fits this time and there is one to take, else ``otherwise``."""
        return rng.choice(sorted(values)) if values and ANY not in values and fits() else otherwise

    base = random_ask(rng, subject)
    r, q = base.requester, base.query
    attributes = dict(r.attributes)
    for name, allowed in rule.attributes.items():
        value = aim(allowed, "")
        if value:
            attributes[name] = value
    role = aim(rule.roles, "")
    roles = tuple(dict.fromkeys((*r.roles, role))) if role else r.roles
    agency = aim(rule.agencies, r.agency)
    purpose = aim(rule.purposes, base.purpose)
    dataset = aim(rule.datasets, q.dataset)
    op = rng.choice(sorted(rule.operations)) if rule.operations and fits() else q.operation
    pool = REQUEST_DATASETS.get(dataset, ALL_FIELDS)
    aimed = rule.fields if rule.effect is Effect.FORBID else rule.match_fields
    predicate_pool = sorted(aimed) if aimed and fits() else pool
    predicates = tuple(_predicate(rng, f) for f in _sample(rng, predicate_pool, 0, 3))
    released = sorted(rule.release | rule.fields)
    selected: tuple[str, ...] = ()
    group_by = None
    if op is Operation.RECORDS:
        selected_pool = released if released and fits() else pool
        selected = tuple(_sample(rng, selected_pool, 1, 3) + _sample(rng, pool, 0, 2))
    elif op is Operation.COUNT_BY:
        group_by = rng.choice(released if released and fits() else pool)
    case_ref = base.case_ref
    if rule.case_ref_pattern and fits():
        # The pattern with each "*" replaced by a short run (perhaps holding "*").
        parts = rule.case_ref_pattern.split("*")
        case_ref = parts[0] + "".join(
            "".join(_sample(rng, CASE_REF_ALPHABET, 0, 3)) + part for part in parts[1:]
        )
    legal_basis = aim(rule.legal_bases, base.legal_basis)
    return Ask(
        Requester(agency, r.subject, roles, r.issuer, attributes),
        purpose,
        Query(dataset, op, predicates, selected, group_by),
        case_ref,
        legal_basis,
    )


def random_asks(rng: random.Random, policy: Policy, n: int) -> list[Ask]:
    """Three in four aimed at one of the policy's rules; each with its own subject.

    One batch shares one entity set in Cedar, hence the distinct subjects.
    """
    return [
        ask_near(rng, rng.choice(policy.rules), f"inv-{i}")
        if policy.rules and rng.random() < 0.75
        else random_ask(rng, f"inv-{i}")
        for i in range(n)
    ]


@settings(
    max_examples=POLICIES_PER_RUN,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    # No shrinking: ``assert_agree`` reduces the disagreeing policy and request
    # itself, in seconds, where shrinking a batch would take minutes.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(document=policy_documents(), rng=st.randoms(use_true_random=False))
def test_random_policies_decide_as_cedar_does(document: dict[str, Any], rng: random.Random) -> None:
    policy = parse_policy(document, CATALOG_V1)
    batch = random_asks(rng, policy, REQUESTS_PER_POLICY)

    validation = cedarpy.validate_policies(policy_to_cedar(policy), _schema())

    assert validation.validation_passed, [str(e) for e in validation.errors]
    assert_agree(policy, batch)


@st.composite
def raw_rules(draw: st.DrawFn, rule_id: str, effect: Effect) -> Rule:
    """A rule built directly, as the loader would refuse it: empty lists, "*" datasets
    on permits, unknown datasets, "" among legal bases, unprintable patterns."""

    def names(pool: Sequence[str]) -> frozenset[str]:
        return frozenset(draw(st.lists(st.sampled_from((*pool, ANY)), max_size=3)))

    def fields() -> frozenset[str]:
        return frozenset(draw(st.lists(st.sampled_from(ALL_FIELDS), max_size=4)))

    return Rule(
        id=rule_id,
        effect=effect,
        agencies=names(AGENCIES),
        roles=names(ROLES),
        purposes=names(PURPOSES),
        datasets=names(sorted(REQUEST_DATASETS)),
        operations=frozenset(draw(st.lists(st.sampled_from(Operation), max_size=4))),
        match_fields=fields() if effect is Effect.PERMIT else frozenset(),
        release=fields() if effect is Effect.PERMIT else frozenset(),
        attributes=draw(
            st.dictionaries(
                st.sampled_from(ATTRIBUTE_NAMES),
                st.frozensets(st.sampled_from(ATTRIBUTE_VALUES), max_size=2),
                max_size=2,
            )
        ),
        case_ref_pattern=draw(st.text(CASE_REF_ALPHABET, max_size=4)),
        legal_bases=frozenset(draw(st.lists(st.sampled_from(("", *LEGAL_BASES)), max_size=2))),
        fields=fields() if effect is Effect.FORBID else frozenset(),
        releases_lists=effect is Effect.PERMIT and draw(st.booleans()),
    )


@st.composite
def raw_policies(draw: st.DrawFn) -> Policy:
    permits = [draw(raw_rules(f"p{i}", Effect.PERMIT)) for i in range(draw(st.integers(0, 5)))]
    forbids = [draw(raw_rules(f"f{i}", Effect.FORBID)) for i in range(draw(st.integers(0, 2)))]
    return Policy(agency="testland", rules=(*permits, *forbids))


@settings(
    max_examples=RAW_POLICIES_PER_RUN,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(policy=raw_policies(), rng=st.randoms(use_true_random=False))
def test_rules_the_loader_refuses_still_decide_as_cedar_does(
    policy: Policy, rng: random.Random
) -> None:
    batch = random_asks(rng, policy, REQUESTS_PER_POLICY)

    assert_agree(policy, batch)


# --- the demo agencies' policies --------------------------------------------


def _demo_policies() -> list[Path]:
    """Each demo agency's policy (as the demo federation loads it), not its policy tests."""
    return [DEMO_DIR / f"{agency.agency_id}.toml" for agency in demo_agencies()]


DEMO_AGENCIES = ("genovia", "freedonia", "ruritania", "sylvania", "elbonia")
DEMO_ROLES = ("investigator", "analyst", "trainee")
DEMO_CASE_REFS = ("GEN-2026-0142", "GEN-", "gen-1", "RUR-77", "XGEN-1", "")
DEMO_BASES = ("", "eu-2016-680-art-8", "budapest-convention-art-29", "other")


def random_demo_asks(rng: random.Random, n: int) -> list[Ask]:
    """Requests in the demo agencies' own terms, each with its own subject."""
    out = []
    for i in range(n):
        attributes = {}
        if rng.random() < 0.6:
            attributes["clearance"] = rng.choice(("restricted", "secret", "public"))
        requester = Requester(
            rng.choice(DEMO_AGENCIES),
            f"inv-{i}",
            tuple(rng.sample(DEMO_ROLES, rng.randint(0, 2))),
            "https://idp.example",
            attributes,
        )
        dataset = rng.choice(sorted(DATASET_FIELDS))
        fields = DATASET_FIELDS[dataset]
        op = rng.choice(list(Operation))
        predicates = tuple(
            Predicate(name, Comparator.EQ, ("x",))
            for name in rng.sample(fields, rng.randint(1 if op is Operation.MATCH else 0, 2))
        )
        selected = tuple(rng.sample(fields, rng.randint(1, 3))) if op is Operation.RECORDS else ()
        group_by = rng.choice(fields) if op is Operation.COUNT_BY else None
        out.append(
            Ask(
                requester,
                rng.choice(PURPOSES),
                Query(dataset, op, predicates, selected, group_by),
                rng.choice(DEMO_CASE_REFS),
                rng.choice(DEMO_BASES),
            )
        )
    return out


@pytest.mark.parametrize("path", _demo_policies(), ids=lambda p: p.stem)
def test_demo_policies_decide_as_cedar_does(path: Path) -> None:
    policy = load_policy(path, CATALOG_V1)
    batch = random_demo_asks(random.Random(f"cedar-oracle-{path.stem}"), DEMO_REQUESTS_PER_POLICY)

    result = assert_agree(policy, batch)

    # Both outcomes are exercised, so agreement is not agreement on "deny".
    assert 0 < result.permitted < len(batch)


def test_the_demo_policies_validate_against_the_cedar_schema() -> None:
    for path in _demo_policies():
        text = policy_to_cedar(load_policy(path, CATALOG_V1))

        result = cedarpy.validate_policies(text, _schema())

        assert result.validation_passed, (path.name, [str(e) for e in result.errors])


# --- the translation's strings and patterns ---------------------------------


def _evaluate(condition_by_id: Sequence[str], contexts: Sequence[dict[str, Any]]) -> list[bool]:
    """Whether each context satisfies condition i (one policy per condition, one batch)."""
    text = "\n".join(
        f"@id({cedar_string(str(i))})\npermit (principal, action, resource) when {{ {c} }};"
        for i, c in enumerate(condition_by_id)
    )
    requests = [
        {
            "principal": {"type": "P", "id": "p"},
            "action": {"type": "Action", "id": "a"},
            "resource": {"type": "R", "id": "r"},
            "context": {**context, "i": str(i)},
        }
        for i, context in enumerate(contexts)
    ]
    results = cedarpy.is_authorized_batch(requests, cedarpy.PolicySet.from_str(text), "[]")
    return [
        str(i) in r.diagnostics.id_annotations_by_reason.values() for i, r in enumerate(results)
    ]


ANY_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)


@given(st.lists(ANY_TEXT, min_size=1, max_size=30))
def test_every_string_reads_back_in_cedar_as_itself(texts: list[str]) -> None:
    conditions = [f"context.s == {cedar_string(t)}" for t in texts]

    holds = _evaluate(conditions, [{"s": t} for t in texts])

    assert all(holds), [t for t, ok in zip(texts, holds, strict=True) if not ok]


@given(
    st.lists(
        st.tuples(
            st.text(PATTERN_ALPHABET + "\t\x00", min_size=1, max_size=6) | ANY_TEXT.filter(bool),
            st.text(CASE_REF_ALPHABET + "\t\x00", max_size=8) | ANY_TEXT,
        ),
        min_size=1,
        max_size=40,
    )
)
def test_case_ref_patterns_match_exactly_as_cedar_like(pairs: list[tuple[str, str]]) -> None:
    conditions = [f"context.s like {cedar_pattern(pattern)}" for pattern, _ in pairs]

    cedar = _evaluate(conditions, [{"s": case_ref} for _, case_ref in pairs])

    ours = [case_ref_matches(pattern, case_ref) for pattern, case_ref in pairs]
    assert ours == cedar, [
        (p, c, o) for (p, c), o, x in zip(pairs, ours, cedar, strict=True) if o != x
    ]


def test_a_lone_surrogate_cannot_be_written_in_cedar() -> None:
    with pytest.raises(CedarTranslationError, match="lone surrogate"):
        cedar_string("ab\ud800")


def test_an_empty_policy_denies_in_both() -> None:
    ask = Ask(
        Requester("genovia", "inv", ("investigator",), "https://idp.example"),
        "csam-investigation",
        Query("media", Operation.MATCH, (Predicate("sha256", Comparator.EQ, ("x",)),)),
    )
    policy = Policy(agency="testland", rules=())

    (cedar,) = cedar_decisions(policy_to_cedar(policy), [ask])

    assert not cedar.allowed
    assert decide(policy, ask.requester, ask.purpose, ask.query).rules == (DEFAULT_DENY,)
