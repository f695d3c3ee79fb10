"""Every semantic rule of the policy engine, as a property over random policies.

``policies/engine.py`` documents the semantics; this module restates each rule
independently and checks it with Hypothesis on random policies built from
``Rule`` objects that carry the whole model: scope, requester attributes,
case-reference patterns, legal bases, forbid fields and permit obligations
(transforms, row filters, minimum counts, row caps, rate limits).

* default deny; forbid overrides permit; an error while deciding denies;
* the decision, explanation included, depends on neither rule order nor
  duplicates; adding a forbid never widens, adding a permit never narrows;
  a policy of forbids alone releases nothing;
* conditions: a missing or wrong attribute makes a rule not applicable (for
  forbids too); ``case_ref`` is Cedar's ``like`` (checked against a regular
  expression written here); a legal basis must be one of the rule's; a forbid
  with fields applies only when the query touches one of them;
* every decision explains itself, one line per rule in scope, and a grant's
  obligations text lists each obligation applied.

A plain reading of the documented semantics (``plain_reading``) is compared
with ``decide`` on every example as well.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from liaison.catalog import CATALOG_V1, FieldType
from liaison.messages import Requester
from liaison.query import Comparator, Operation, Predicate, Query
from policies import Effect, Grant, Policy, PolicyDecision, Rule, decide
from policies.engine import DEFAULT_DENY, EVALUATION_ERROR
from policies.model import (
    ANY,
    RateLimit,
    RateScope,
    RowFilter,
    Transform,
    TransformKind,
    case_ref_matches,
)
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

PROPERTY = settings(max_examples=100, deadline=None)
AGENCIES = ("genovia", "ruritania", "freedonia")
DATES = {
    d.name: frozenset(f.name for f in d.fields if f.type is FieldType.DATE)
    for d in CATALOG_V1.datasets
}
ATTRIBUTES = {"clearance": ("secret", "restricted", "none"), "unit": ("vid", "cyber")}
# Case references and patterns with characters a regular expression would treat specially.
CASE_REFS = ("GEN-2026-0142", "GEN-1", "RUR-7", "gen-1", "X*Y", "a.b+c", "GEN-", "(1)")
PATTERNS = (
    "GEN-*",
    "*-1",
    "*",
    "GEN-1",
    "*2*4*",
    "gen-*",
    "X*Y",
    "a.b+c",
    "*.*",
    "G*N-*",
    "**",
    "(*)",
)
LEGAL_BASES = ("eu-2016-680-art-8", "budapest-convention-art-29", "national-law")
CHOSEN = "chosen"


@dataclass(frozen=True)
class Ask:
    """One request as the engine sees it."""

    requester: Requester
    purpose: str
    query: Query
    case_ref: str = "GEN-1"
    legal_basis: str = ""

    def under(self, *rules: Rule) -> PolicyDecision:
        return decide(
            Policy(agency="testland", rules=rules),
            self.requester,
            self.purpose,
            self.query,
            case_ref=self.case_ref,
            legal_basis=self.legal_basis,
        )


# --- the semantics, read plainly -------------------------------------------------


def like(pattern: str, text: str) -> bool:
    """Cedar's ``like``, independently: ``*`` is any run of characters, the rest is literal."""
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, text, flags=re.DOTALL) is not None


def in_scope(rule: Rule, ask: Ask) -> bool:
    r, q = ask.requester, ask.query
    return (
        (ANY in rule.agencies or r.agency in rule.agencies)
        and (ANY in rule.roles or any(role in rule.roles for role in r.roles))
        and (ANY in rule.purposes or ask.purpose in rule.purposes)
        and (ANY in rule.datasets or q.dataset in rule.datasets)
        and q.operation in rule.operations
    )


def conditions_hold(rule: Rule, ask: Ask) -> bool:
    attributes = ask.requester.attributes
    for name, allowed in rule.attributes.items():
        if name not in attributes or attributes[name] not in allowed:
            return False
    if rule.case_ref_pattern and not like(rule.case_ref_pattern, ask.case_ref):
        return False
    return not rule.legal_bases or ask.legal_basis in rule.legal_bases


def touched(query: Query) -> set[str]:
    names = {p.field for p in query.predicates} | set(query.fields)
    return names | {query.group_by} if query.group_by else names


def applies(rule: Rule, ask: Ask) -> bool:
    if not (in_scope(rule, ask) and conditions_hold(rule, ask)):
        return False
    if rule.effect is Effect.FORBID and rule.fields:
        return bool(rule.fields & touched(ask.query))
    return True


def released(rule: Rule, query: Query) -> list[str]:
    return [f for f in query.fields if f in rule.release]


def plain_reading(rules: tuple[Rule, ...], ask: Ask) -> tuple[bool, tuple[str, ...]]:
    """(permitted, rules named), from the documented semantics alone.

    When permitted, the rules are those that may answer: the one documented
    choice, or, where permits tie on fields, rows and minimum count but differ
    in their other obligations, any of them (the documented tie-break by rule
    id is exactly what lets a stricter permit narrow an answer; see
    ``test_adding_a_permit_never_narrows``).
    """
    q = ask.query
    forbids = sorted({r.id for r in rules if r.effect is Effect.FORBID and applies(r, ask)})
    if forbids:
        return False, tuple(forbids)
    unique = {r.id: r for r in rules if r.effect is Effect.PERMIT and applies(r, ask)}
    permits = [unique[i] for i in sorted(unique)]
    if not permits:
        return False, (DEFAULT_DENY,)
    # Records answer lookups: an eq, in or near predicate on a field that identifies a record.
    looked_up = [
        p
        for p in q.predicates
        if p.comparator in (Comparator.EQ, Comparator.IN, Comparator.NEAR)
        and q.dataset in POLICY_DATASETS
        and CATALOG_V1.dataset(q.dataset).field(p.field).identifies
    ]
    fits = [
        r
        for r in permits
        if q.predicate_fields <= r.match_fields
        and (q.operation is not Operation.COUNT_BY or q.group_by in r.release)
        and not (q.operation is Operation.RECORDS and not r.releases_lists and not looked_up)
    ]
    if not fits:
        return False, tuple(r.id for r in permits)

    def generosity(r: Rule) -> tuple[int, int, int]:
        if q.operation is Operation.RECORDS:
            # A minimum count means nothing to a records answer: it cannot rank permits.
            return (-len(released(r, q)), -r.max_rows, 0)
        return (r.min_count, -r.max_rows, 0)

    top = min(generosity(r) for r in fits)
    tied = [r for r in fits if generosity(r) == top]
    if q.operation is Operation.RECORDS and not released(tied[0], q):
        return False, tuple(r.id for r in fits)
    if len({_other_obligations(r, q) for r in tied}) > 1:
        return True, tuple(r.id for r in tied)
    return True, (tied[0].id,)


def _other_obligations(rule: Rule, query: Query) -> tuple[object, ...]:
    """A permit's obligations beyond fields, rows and minimum count, as they bear on ``query``."""
    out = [f for f in query.fields if f in rule.release]
    if query.operation is Operation.COUNT_BY and query.group_by:
        out.append(query.group_by)
    transforms = tuple((f, rule.transforms.get(f)) for f in out)
    return (transforms, frozenset(rule.row_filters), frozenset(rule.rate_limits))


# --- requests and rules near them ---------------------------------------------------

_CONDITION_MODE = st.sampled_from(("none", "none", "near", "near", "other"))
_PATTERN = st.sampled_from(("", *PATTERNS))
_DATED_KIND = st.sampled_from(tuple(TransformKind))
_UNDATED_KIND = st.sampled_from(
    tuple(k for k in TransformKind if k not in (TransformKind.MONTH, TransformKind.YEAR))
)
_SHAREABLE = RowFilter("shareable", Comparator.EQ, ("true",))
_CATEGORY_A = RowFilter("category", Comparator.IN, ("A", "B"))
_CASE_R1 = RowFilter("case_ref", Comparator.EQ, ("R-1",))
_ROW_FILTERS = st.sampled_from(
    ((), (), (_SHAREABLE,), (_CATEGORY_A,), (_CASE_R1,), (_SHAREABLE, _CATEGORY_A))
)
_RATE_LIMITS = st.sampled_from(
    (
        (),
        (),
        (RateLimit(RateScope.INVESTIGATOR, 60, 3600),),
        (RateLimit(RateScope.AGENCY, 1000, 86400),),
        (RateLimit(RateScope.AGENCY, 10, 60), RateLimit(RateScope.INVESTIGATOR, 1, 60)),
    )
)


@st.composite
def asks(draw: st.DrawFn) -> Ask:
    attributes = {name: draw(pick(values)) for name, values in ATTRIBUTES.items() if draw(COIN)}
    requester = Requester(
        draw(pick(AGENCIES)),
        "someone",
        tuple(sorted(draw(some(POLICY_ROLES, 0, 2)))),
        "issuer",
        attributes,
    )
    query = policy_query(draw, needs_a_predicate=(Operation.MATCH, Operation.RECORDS))
    return Ask(
        requester,
        draw(pick(CATALOG_V1.purposes)),
        query,
        draw(pick(CASE_REFS)),
        draw(pick(("", *LEGAL_BASES))),
    )


def _attributes(draw: st.DrawFn, ask: Ask, near: bool) -> dict[str, frozenset[str]]:
    out = {}
    for name in sorted(draw(some(tuple(ATTRIBUTES), 0, 2))):
        allowed = set(draw(some(ATTRIBUTES[name], 1, 2)))
        held = ask.requester.attributes.get(name)
        if near and held is not None:
            allowed.add(held)
        out[name] = frozenset(allowed)
    return out


def _legal_bases(draw: st.DrawFn, ask: Ask, near: bool) -> frozenset[str]:
    bases = draw(some(LEGAL_BASES, 0, 2))
    if bases and near and ask.legal_basis:
        bases |= {ask.legal_basis}
    return bases


Conditions = tuple[dict[str, frozenset[str]], str, frozenset[str]]


def _conditions(draw: st.DrawFn, ask: Ask) -> Conditions:
    """No conditions (two times in five), or conditions mostly near ``ask``."""
    mode = draw(_CONDITION_MODE)
    if mode == "none":
        return {}, "", frozenset()
    near = mode == "near"
    return _attributes(draw, ask, near), draw(_PATTERN), _legal_bases(draw, ask, near)


def _transforms(
    draw: st.DrawFn, release: frozenset[str], datasets: frozenset[str]
) -> dict[str, Transform]:
    out = {}
    names = tuple(sorted(release))
    for name in sorted(draw(some(names, 0, min(2, len(names))))) if names else ():
        dated = all(name in DATES[d] for d in datasets)
        kind = draw(_DATED_KIND if dated else _UNDATED_KIND)
        out[name] = Transform(kind, "severity" if kind is TransformKind.MAP else "")
    return out


def _row_filters(draw: st.DrawFn, common: frozenset[str]) -> tuple[RowFilter, ...]:
    filters = draw(_ROW_FILTERS)
    return tuple(f for f in filters if f.field in common)


def _rule_near(draw: st.DrawFn, ask: Ask, effect: Effect | None) -> Rule:
    """A rule near ``ask`` with a placeholder id; ids are given out per policy."""
    q = ask.query
    chosen = draw(EFFECT) if effect is None else effect
    datasets = scope_near(draw, POLICY_DATASETS, frozenset({q.dataset}))
    if chosen is Effect.PERMIT and ANY in datasets:
        datasets = frozenset({q.dataset})
    operations = draw(OPERATIONS)
    if not operations or draw(COIN):
        operations |= {q.operation}
    attributes, pattern, bases = _conditions(draw, ask)
    body = Rule(
        id="?",
        effect=chosen,
        agencies=scope_near(draw, AGENCIES, frozenset({ask.requester.agency})),
        roles=scope_near(draw, POLICY_ROLES, frozenset(ask.requester.roles)),
        purposes=scope_near(draw, CATALOG_V1.purposes, frozenset({ask.purpose})),
        datasets=datasets,
        operations=operations,
        attributes=attributes,
        case_ref_pattern=pattern,
        legal_bases=bases,
    )
    known = POLICY_DATASETS if ANY in datasets else tuple(sorted(datasets))
    if chosen is Effect.FORBID:
        if draw(COIN):
            return body
        everywhere = frozenset(f for d in known for f in DATASET_FIELDS[d])
        fields = subset_near(draw, everywhere, frozenset(touched(q)))
        return replace(body, fields=fields or frozenset({draw(pick(tuple(sorted(everywhere))))}))
    common = frozenset.intersection(*(frozenset(DATASET_FIELDS[d]) for d in known))
    asked = frozenset(q.fields) | ({q.group_by} if q.group_by else set())
    release = subset_near(draw, common, asked)
    return replace(
        body,
        match_fields=subset_near(draw, common, q.predicate_fields),
        release=release,
        min_count=draw(MIN_COUNT),
        max_rows=draw(MAX_ROWS),
        transforms=_transforms(draw, release, datasets),
        row_filters=_row_filters(draw, common),
        rate_limits=draw(_RATE_LIMITS),
    )


@st.composite
def rules_near(
    draw: st.DrawFn, ask: Ask, effect: Effect | None = None, *, covering: bool = False
) -> tuple[Rule, ...]:
    """Up to six rules with unique random ids, drawn near ``ask``.

    With ``covering``, the first is a permit that applies to ``ask`` and allows
    its predicates and grouping, so that the checks past applicability run.
    """
    bodies = [_rule_near(draw, ask, effect) for _ in range(draw(RULE_COUNT))]
    if covering:
        bodies.insert(0, _covering_permit(draw, ask))
    ids = draw(unique_ids(len(bodies)))
    return tuple(replace(body, id=i) for body, i in zip(bodies, ids, strict=True))


def _covering_permit(draw: st.DrawFn, ask: Ask) -> Rule:
    q = ask.query
    names = frozenset(DATASET_FIELDS[q.dataset])
    asked = frozenset(q.fields) | ({q.group_by} if q.group_by else set())
    release = subset_near(draw, names, asked) | asked & {q.group_by}
    if q.fields and not release & asked:
        release |= {draw(pick(q.fields))}
    aggregate = q.operation in (Operation.COUNT, Operation.COUNT_BY)
    return Rule(
        id="?",
        effect=Effect.PERMIT,
        agencies=frozenset({ANY}),
        roles=frozenset({ANY}),
        purposes=frozenset({ask.purpose}),
        datasets=frozenset({q.dataset}),
        operations=frozenset({q.operation}),
        match_fields=q.predicate_fields | subset_near(draw, names, frozenset()),
        release=release,
        min_count=draw(MIN_COUNT) if aggregate else 0,
        max_rows=draw(MAX_ROWS),
        transforms=_transforms(draw, release, frozenset({q.dataset})),
        row_filters=_row_filters(draw, names),
        rate_limits=draw(_RATE_LIMITS),
        releases_lists=draw(COIN),
    )


@st.composite
def one_rule_near(draw: st.DrawFn, ask: Ask, effect: Effect) -> Rule:
    return _rule_near(draw, ask, effect)


def _fresh_id(taken: set[str], base: str) -> str:
    candidate = base
    while candidate in taken:
        candidate += "'"
    taken.add(candidate)
    return candidate


def _lines_about(decision: PolicyDecision, rule: Rule) -> list[str]:
    prefix = f"{rule.effect.value} {rule.id}: "
    return [line for line in decision.explanation if line.startswith(prefix)]


# --- default deny ---------------------------------------------------------------


@PROPERTY
@given(ask=asks(), data=st.data())
def test_with_no_applicable_permit_the_answer_is_default_deny(
    ask: Ask, data: st.DataObject
) -> None:
    rules = data.draw(rules_near(ask))

    decision = ask.under(*rules)

    forbidden = any(applies(r, ask) for r in rules if r.effect is Effect.FORBID)
    permitted_by_some = any(applies(r, ask) for r in rules if r.effect is Effect.PERMIT)
    assert (decision.rules == (DEFAULT_DENY,)) == (not forbidden and not permitted_by_some)
    if decision.rules == (DEFAULT_DENY,):
        assert not decision.permitted and decision.grant is None
        assert decision.obligations == ()
        assert decision.explanation[-1] == f"{DEFAULT_DENY}: no applicable permit"
        # The reason names each permit in scope whose conditions failed.
        for rule in rules:
            if rule.effect is Effect.PERMIT and in_scope(rule, ask):
                assert re.search(rf"[(;] ?{re.escape(rule.id)}: ", decision.reason), rule.id


def test_an_empty_policy_denies_everything() -> None:
    ask = Ask(
        Requester("genovia", "a", ("investigator",), "i"),
        "statistics",
        Query("media", Operation.COUNT),
    )

    decision = ask.under()

    assert (decision.permitted, decision.rules, decision.grant) == (False, (DEFAULT_DENY,), None)


# --- forbid overrides permit ----------------------------------------------------


def _open_permit(ask: Ask, rule_id: str = "open") -> Rule:
    """A permit that applies to ``ask`` and allows it whole."""
    names = frozenset(DATASET_FIELDS[ask.query.dataset])
    return Rule(
        id=rule_id,
        effect=Effect.PERMIT,
        agencies=frozenset({ANY}),
        roles=frozenset({ANY}),
        purposes=frozenset({ANY}),
        datasets=frozenset({ask.query.dataset}),
        operations=frozenset(Operation),
        match_fields=names,
        release=names,
        # Whole: records without a lookup too.
        releases_lists=True,
    )


def _open_forbid(
    rule_id: str = "closed",
    *,
    attributes: Mapping[str, frozenset[str]] | None = None,
    case_ref_pattern: str = "",
    legal_bases: frozenset[str] = frozenset(),
    fields: frozenset[str] = frozenset(),
) -> Rule:
    """A forbid of everything, but for its conditions."""
    return Rule(
        id=rule_id,
        effect=Effect.FORBID,
        agencies=frozenset({ANY}),
        roles=frozenset({ANY}),
        purposes=frozenset({ANY}),
        datasets=frozenset({ANY}),
        operations=frozenset(Operation),
        attributes=attributes or {},
        case_ref_pattern=case_ref_pattern,
        legal_bases=legal_bases,
        fields=fields,
    )


@PROPERTY
@given(ask=asks(), data=st.data())
def test_an_applicable_forbid_overrides_every_permit(ask: Ask, data: st.DataObject) -> None:
    rules = (*data.draw(rules_near(ask)), _open_permit(ask, "~open"))

    decision = ask.under(*rules)

    forbids = sorted(r.id for r in rules if r.effect is Effect.FORBID and applies(r, ask))
    if forbids:
        assert not decision.permitted
        assert decision.grant is None
        assert decision.rules == tuple(forbids)
    else:
        assert decision.rules != () and not set(decision.rules) & {
            r.id for r in rules if r.effect is Effect.FORBID
        }


# --- errors deny ------------------------------------------------------------------


class ExplodingAttributes(Mapping[str, frozenset[str]]):
    """Attribute conditions that fail when read, as a corrupt policy object might."""

    def __getitem__(self, key: str) -> frozenset[str]:
        raise RuntimeError("corrupt attributes")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("corrupt attributes")

    def __len__(self) -> int:
        return 1


@PROPERTY
@given(ask=asks(), data=st.data())
def test_an_error_while_deciding_is_a_denial(ask: Ask, data: st.DataObject) -> None:
    rules = data.draw(rules_near(ask))
    corrupt_body = data.draw(one_rule_near(ask, data.draw(EFFECT)))
    corrupt = replace(
        corrupt_body,
        id=_fresh_id({r.id for r in rules}, data.draw(RULE_IDS)),
        attributes=ExplodingAttributes(),
    )
    position = data.draw(st.integers(0, len(rules)))
    with_corrupt = (*rules[:position], corrupt, *rules[position:])

    decision = ask.under(*with_corrupt)

    # The corrupt rule is read when it is in scope, unless it is a permit and a forbid applies.
    forbidden = any(applies(r, ask) for r in rules if r.effect is Effect.FORBID)
    read = in_scope(corrupt, ask) and (corrupt.effect is Effect.FORBID or not forbidden)
    if read:
        assert not decision.permitted
        assert decision.rules == (EVALUATION_ERROR,)
        assert decision.grant is None
        assert decision.reason == "policy evaluation failed (RuntimeError)"
    else:
        assert decision == ask.under(*rules)


def test_an_evaluation_error_still_explains_itself() -> None:
    """Every decision carries an explanation; an evaluation error is a decision too."""
    ask = Ask(
        Requester("genovia", "a", ("investigator",), "i"),
        "statistics",
        Query("media", Operation.COUNT),
    )
    corrupt = replace(_open_permit(ask), attributes=ExplodingAttributes())

    decision = ask.under(corrupt)

    assert decision.rules == (EVALUATION_ERROR,)
    assert decision.explanation, "an evaluation-error denial carries no explanation at all"


# --- order and duplicates ----------------------------------------------------------


@PROPERTY
@given(ask=asks(), data=st.data())
def test_the_decision_and_its_explanation_do_not_depend_on_rule_order(
    ask: Ask, data: st.DataObject
) -> None:
    rules = data.draw(rules_near(ask, covering=data.draw(COIN)))
    shuffled = data.draw(st.permutations(rules))

    assert ask.under(*shuffled) == ask.under(*rules)


@PROPERTY
@given(ask=asks(), data=st.data())
def test_listing_a_rule_twice_changes_neither_decision_nor_explanation(
    ask: Ask, data: st.DataObject
) -> None:
    rules = data.draw(rules_near(ask))
    again = data.draw(st.lists(st.sampled_from(rules), min_size=1, max_size=3)) if rules else []
    ordering = data.draw(st.permutations([*rules, *again]))

    assert ask.under(*ordering) == ask.under(*rules)


@PROPERTY
@given(ask=asks(), data=st.data())
def test_copies_under_new_ids_change_no_outcome_and_no_line_about_the_originals(
    ask: Ask, data: st.DataObject
) -> None:
    rules = data.draw(rules_near(ask, covering=data.draw(COIN)))
    copied = data.draw(st.lists(st.sampled_from(rules), max_size=4)) if rules else []
    taken = {r.id for r in rules}
    copies = [replace(r, id=_fresh_id(taken, r.id + "-copy")) for r in copied]
    ordering = data.draw(st.permutations([*rules, *copies]))

    before = ask.under(*rules)
    after = ask.under(*ordering)

    assert after.permitted == before.permitted
    assert after.grant == before.grant
    if before.permitted or before.rules == (DEFAULT_DENY,):
        assert after.rules == before.rules
    else:
        assert set(before.rules) <= set(after.rules)
    copy_prefixes = tuple(f"{r.effect.value} {r.id}: " for r in copies)
    about_originals = tuple(
        line for line in after.explanation if not line.startswith(copy_prefixes)
    )
    assert about_originals == before.explanation


# --- adding rules ----------------------------------------------------------------


@PROPERTY
@given(ask=asks(), data=st.data())
def test_adding_a_forbid_never_widens(ask: Ask, data: st.DataObject) -> None:
    rules = data.draw(rules_near(ask, covering=data.draw(COIN)))
    extra = data.draw(one_rule_near(ask, Effect.FORBID))
    added = replace(extra, id=_fresh_id({r.id for r in rules}, data.draw(RULE_IDS)))

    before = ask.under(*rules)
    after = ask.under(*rules, added)

    if not before.permitted:
        assert not after.permitted
    if after.permitted:
        assert (after.rules, after.grant) == (before.rules, before.grant)
    else:
        assert after.grant is None
    assert after.permitted == (before.permitted and not applies(added, ask))


def _shown(grant: Grant, query: Query) -> tuple[str, ...]:
    """The fields whose values leave the node under ``grant``: released, or grouped by."""
    if query.operation is Operation.COUNT_BY and query.group_by:
        return (*grant.fields, query.group_by)
    return grant.fields


def _at_least_as_coarse(new: Transform | None, old: Transform | None) -> bool:
    return old is None or new == old or (new is not None and new.kind is TransformKind.REDACT)


def strictly_narrower(new: Grant, old: Grant, query: Query) -> bool:
    """``new`` lets out no more than ``old`` in any respect, and less in some."""
    shown = _shown(new, query)
    no_more = (
        set(new.fields) <= set(old.fields)
        and new.max_rows <= old.max_rows
        and new.min_count >= old.min_count
        and all(_at_least_as_coarse(new.transforms.get(f), old.transforms.get(f)) for f in shown)
        and set(old.row_filters) <= set(new.row_filters)
        and set(old.rate_limits) <= set(new.rate_limits)
    )
    same = (
        set(new.fields) == set(old.fields)
        and (new.max_rows, new.min_count) == (old.max_rows, old.min_count)
        and all(new.transforms.get(f) == old.transforms.get(f) for f in shown)
        and set(new.row_filters) == set(old.row_filters)
        and set(new.rate_limits) == set(old.rate_limits)
    )
    return no_more and not same


@st.composite
def restricted_copy(draw: st.DrawFn, rule: Rule, shown: tuple[str, ...]) -> Rule:
    """``rule`` with one more obligation: a coarser transform, a row filter or a rate limit."""
    choice = draw(st.sampled_from(("transform", "filter", "limit")))
    coarsened = [f for f in shown if f in rule.release]
    if choice == "transform" and coarsened:
        name = draw(pick(tuple(coarsened)))
        return replace(rule, transforms={**rule.transforms, name: Transform(TransformKind.REDACT)})
    limit = RateLimit(RateScope.INVESTIGATOR, 1, 3600)
    if choice == "limit" and limit not in rule.rate_limits:
        return replace(rule, rate_limits=(*rule.rate_limits, limit))
    extra = RowFilter("case_ref", Comparator.EQ, (draw(pick(("R-1", "R-2", "R-3"))),))
    return replace(rule, row_filters=tuple(dict.fromkeys((*rule.row_filters, extra))))


@PROPERTY
@given(ask=asks(), data=st.data())
def test_adding_a_permit_never_narrows(ask: Ask, data: st.DataObject) -> None:
    rules = data.draw(rules_near(ask, covering=data.draw(COIN)))
    before = ask.under(*rules)
    twin = data.draw(COIN)
    if before.grant is not None and twin:
        # A stricter twin of the permit that answers: it must never be preferred to it.
        (answering,) = [r for r in rules if r.id == before.grant.rule_id]
        extra = data.draw(restricted_copy(answering, _shown(before.grant, ask.query)))
    else:
        extra = data.draw(one_rule_near(ask, Effect.PERMIT))
    added = replace(extra, id=_fresh_id({r.id for r in rules}, data.draw(RULE_IDS)))

    after = ask.under(*rules, added)

    if not before.permitted:
        return
    assert before.grant is not None
    assert after.permitted and after.grant is not None
    q = ask.query
    if q.operation is Operation.RECORDS:
        assert len(after.grant.fields) >= len(before.grant.fields)
    else:
        assert after.grant.min_count <= before.grant.min_count
    assert not strictly_narrower(after.grant, before.grant, q), (
        f"adding {added.id} narrowed the answer: {before.grant} became {after.grant}"
    )
    if after.rules != before.rules:
        assert after.rules == (added.id,)


def test_a_stricter_twin_of_the_answering_permit_is_not_preferred_to_it() -> None:
    """The example the property above finds: same fields and rows, one more obligation."""
    ask = Ask(
        Requester("genovia", "a", ("investigator",), "i"),
        "csam-investigation",
        Query(
            "media", Operation.RECORDS, (Predicate("sha256", Comparator.EQ, ("x",)),), ("category",)
        ),
    )
    plain = replace(_open_permit(ask, "partner-records"), release=frozenset({"category"}))
    stricter = replace(
        plain,
        id="partner-records-2",
        transforms={"category": Transform(TransformKind.REDACT)},
        row_filters=(_SHAREABLE,),
    )
    earlier = replace(stricter, id="a-partner-records")

    for twin in (stricter, earlier):
        decision = ask.under(plain, twin)
        assert decision.rules == ("partner-records",), f"{twin.id} was preferred to partner-records"


@PROPERTY
@given(ask=asks(), data=st.data())
def test_a_policy_of_only_forbids_releases_nothing(ask: Ask, data: st.DataObject) -> None:
    rules = data.draw(rules_near(ask, Effect.FORBID))

    decision = ask.under(*rules)

    assert not decision.permitted
    assert decision.grant is None and decision.obligations == ()
    assert decision.rules == (DEFAULT_DENY,) or set(decision.rules) <= {r.id for r in rules}


# --- conditions: attributes ------------------------------------------------------------


_ATTRIBUTE_CONDITION = st.dictionaries(
    st.sampled_from(tuple(ATTRIBUTES)),
    st.frozensets(st.sampled_from(("secret", "restricted", "none", "vid", "cyber")), min_size=1),
    min_size=1,
    max_size=2,
)


@PROPERTY
@given(ask=asks(), condition=_ATTRIBUTE_CONDITION)
def test_a_permit_with_attributes_applies_only_when_each_one_has_an_allowed_value(
    ask: Ask, condition: dict[str, frozenset[str]]
) -> None:
    rule = replace(_open_permit(ask), attributes=condition)

    decision = ask.under(rule)

    held = ask.requester.attributes
    missing = sorted(name for name in condition if name not in held)
    wrong = sorted(name for name in condition if name in held and held[name] not in condition[name])
    if not missing and not wrong:
        assert decision.permitted
        return
    assert decision.rules == (DEFAULT_DENY,)
    (line,) = _lines_about(decision, rule)
    # The first failing attribute (in the rule's order) is named, and how it fails.
    first = next(name for name in condition if name in missing or name in wrong)
    if first in missing:
        assert line == f"permit open: does not apply (requester has no {first!r} attribute)"
    else:
        assert line.startswith(
            f"permit open: does not apply ({first} {held[first]!r} is not one of"
        )


@PROPERTY
@given(ask=asks(), condition=_ATTRIBUTE_CONDITION)
def test_a_forbid_with_attributes_applies_only_to_requesters_that_match(
    ask: Ask, condition: dict[str, frozenset[str]]
) -> None:
    held = ask.requester.attributes
    matches = all(name in held and held[name] in allowed for name, allowed in condition.items())

    decision = ask.under(_open_permit(ask), _open_forbid(attributes=condition))

    assert decision.permitted != matches
    if matches:
        assert decision.rules == ("closed",)
    else:
        assert decision.rules == ("open",)


def test_an_attribute_that_is_missing_or_wrong_makes_a_rule_not_applicable() -> None:
    query = Query("media", Operation.COUNT)
    cleared = Ask(
        Requester("genovia", "a", ("analyst",), "i", {"clearance": "secret"}), "statistics", query
    )
    uncleared = replace(cleared, requester=replace(cleared.requester, attributes={}))
    lower = replace(cleared, requester=replace(cleared.requester, attributes={"clearance": "none"}))
    secret_only = replace(_open_permit(cleared), attributes={"clearance": frozenset({"secret"})})

    assert cleared.under(secret_only).permitted
    for ask, why in (
        (uncleared, "requester has no 'clearance' attribute"),
        (lower, "clearance 'none' is not one of secret"),
    ):
        decision = ask.under(secret_only)
        assert decision.rules == (DEFAULT_DENY,)
        assert decision.explanation == (
            f"permit open: does not apply ({why})",
            f"{DEFAULT_DENY}: no applicable permit",
        )
        assert f"open: {why}" in decision.reason


# --- conditions: case references -------------------------------------------------------

_GLOB_ALPHABET = st.sampled_from("aA-*.+?()[]\\^$|{}1 é\n")
_TEXT = st.text(alphabet=st.sampled_from("aA-.+?()[]\\^$|{}1 é\n*"), max_size=8)


@settings(max_examples=1000, deadline=None)
@given(pattern=st.text(alphabet=_GLOB_ALPHABET, max_size=8), text=_TEXT)
def test_case_ref_patterns_are_cedar_like_on_random_strings(pattern: str, text: str) -> None:
    expected = like(pattern, text) if pattern else True

    assert case_ref_matches(pattern, text) == expected


@st.composite
def text_and_a_pattern_it_matches(draw: st.DrawFn) -> tuple[str, str]:
    """A text, and a pattern made from it by replacing some of its runs with ``*``."""
    text = draw(st.text(alphabet=st.sampled_from("ab-.*(1"), max_size=10))
    cuts = sorted(set(draw(st.lists(st.integers(0, len(text)), max_size=6))))
    bounds = [0, *cuts, len(text)]
    # A star left in the text is wild in the pattern, which only widens it.
    pieces = ["*" if draw(COIN) else text[a:b] for a, b in pairwise(bounds)]
    return text, "".join(pieces)


@settings(max_examples=500, deadline=None)
@given(pair=text_and_a_pattern_it_matches())
def test_a_pattern_made_from_a_text_by_starring_runs_matches_it(pair: tuple[str, str]) -> None:
    text, pattern = pair

    assert like(pattern, text)
    assert case_ref_matches(pattern, text)


@PROPERTY
@given(ask=asks(), pattern=st.sampled_from(PATTERNS), effect=st.sampled_from(Effect))
def test_a_rule_with_a_case_ref_pattern_applies_only_to_matching_case_references(
    ask: Ask, pattern: str, effect: Effect
) -> None:
    open_permit = _open_permit(ask)
    if effect is Effect.PERMIT:
        rules: tuple[Rule, ...] = (replace(open_permit, case_ref_pattern=pattern),)
    else:
        rules = (open_permit, _open_forbid(case_ref_pattern=pattern))

    decision = ask.under(*rules)

    matches = like(pattern, ask.case_ref)
    assert decision.permitted == (matches if effect is Effect.PERMIT else not matches)
    if effect is Effect.PERMIT and not matches:
        assert f"case reference does not match {pattern!r}" in decision.reason


def test_case_ref_patterns_by_example() -> None:
    cases = [
        ("GEN-*", "GEN-2026-0142", True),
        ("GEN-*", "GEN-", True),
        ("GEN-*", "gen-1", False),
        ("GEN-*", "XGEN-1", False),
        ("*-1", "GEN-1", True),
        ("*-1", "GEN-12", False),
        ("a.b", "axb", False),
        ("a*a", "a", False),
        ("a*a", "aa", True),
        ("*a*a*", "banana", True),
        ("X*Y", "X*Y", True),
        ("**", "", True),
        ("", "anything", True),
    ]
    for pattern, case_ref, expected in cases:
        assert case_ref_matches(pattern, case_ref) is expected, (pattern, case_ref)
        assert like(pattern, case_ref) is expected or not pattern


# --- conditions: legal bases ------------------------------------------------------------


@PROPERTY
@given(
    ask=asks(),
    bases=st.frozensets(st.sampled_from(LEGAL_BASES), min_size=1),
    effect=st.sampled_from(Effect),
)
def test_a_rule_with_legal_bases_applies_only_when_the_request_cites_one(
    ask: Ask, bases: frozenset[str], effect: Effect
) -> None:
    open_permit = _open_permit(ask)
    if effect is Effect.PERMIT:
        rules: tuple[Rule, ...] = (replace(open_permit, legal_bases=bases),)
    else:
        rules = (open_permit, _open_forbid(legal_bases=bases))

    decision = ask.under(*rules)

    cited = ask.legal_basis in bases
    assert decision.permitted == (cited if effect is Effect.PERMIT else not cited)
    if effect is Effect.PERMIT and not cited:
        shown = repr(ask.legal_basis) if ask.legal_basis else "none"
        assert f"legal basis {shown} is not one of" in decision.reason


# --- forbid fields ------------------------------------------------------------------------


@PROPERTY
@given(ask=asks(), data=st.data())
def test_a_forbid_with_fields_applies_only_when_the_query_touches_one(
    ask: Ask, data: st.DataObject
) -> None:
    names = DATASET_FIELDS[ask.query.dataset]
    fields = data.draw(some(names, 1, 3))
    forbid = _open_forbid(fields=fields)

    decision = ask.under(_open_permit(ask), forbid)

    touches = bool(fields & touched(ask.query))
    assert decision.permitted != touches
    (line,) = _lines_about(decision, forbid)
    if touches:
        assert decision.rules == ("closed",)
        assert line == "forbid closed: applies"
    else:
        assert (
            line
            == f"forbid closed: does not apply (query does not touch {', '.join(sorted(fields))})"
        )


def test_a_forbid_on_a_field_applies_to_predicates_selection_and_grouping() -> None:
    who = Requester("genovia", "a", ("analyst",), "i")
    no_ip = _open_forbid("no-ip", fields=frozenset({"ip"}))
    ip = Predicate("ip", Comparator.EQ, ("198.51.100.1",))
    email = Predicate("email", Comparator.EQ, ("a@b.example",))
    queries = {
        Query("accounts", Operation.MATCH, (ip,)): True,
        Query("accounts", Operation.RECORDS, (email,), ("platform", "ip")): True,
        Query("accounts", Operation.COUNT_BY, group_by="ip"): True,
        Query("accounts", Operation.RECORDS, (email,), ("platform",)): False,
        Query("accounts", Operation.COUNT_BY, group_by="platform"): False,
    }
    for query, forbidden in queries.items():
        ask = Ask(who, "statistics", query)
        decision = ask.under(_open_permit(ask), no_ip)
        assert decision.permitted != forbidden, query
        assert decision.rules == (("no-ip",) if forbidden else ("open",))


# --- all of it at once --------------------------------------------------------------------


@PROPERTY
@given(ask=asks(), data=st.data())
def test_decide_agrees_with_a_plain_reading_of_the_semantics(ask: Ask, data: st.DataObject) -> None:
    rules = data.draw(rules_near(ask, covering=data.draw(COIN)))

    decision = ask.under(*rules)

    permitted, named = plain_reading(rules, ask)
    assert decision.permitted == permitted
    if permitted:
        assert len(decision.rules) == 1 and decision.rules[0] in named
    else:
        assert decision.rules == named
    if decision.permitted:
        assert decision.grant is not None
        (chosen,) = [r for r in rules if r.id == decision.grant.rule_id]
        q = ask.query
        assert decision.grant.fields == tuple(released(chosen, q))
        assert decision.grant.transforms == chosen.transforms
        assert decision.grant.row_filters == chosen.row_filters
        assert decision.grant.rate_limits == chosen.rate_limits
        assert (decision.grant.min_count, decision.grant.max_rows) == (
            chosen.min_count,
            chosen.max_rows,
        )


# --- explanations and obligations ---------------------------------------------------------


@PROPERTY
@given(ask=asks(), data=st.data())
def test_the_explanation_has_one_line_for_every_rule_in_scope(
    ask: Ask, data: st.DataObject
) -> None:
    rules = data.draw(rules_near(ask, covering=data.draw(COIN)))

    decision = ask.under(*rules)

    forbidden = any(applies(r, ask) for r in rules if r.effect is Effect.FORBID)
    expected_lines = 0
    for rule in rules:
        lines = _lines_about(decision, rule)
        considered = in_scope(rule, ask) and (rule.effect is Effect.FORBID or not forbidden)
        assert len(lines) == (1 if considered else 0), (rule.id, decision.explanation)
        expected_lines += len(lines)
        if not considered:
            continue
        (line,) = lines
        if rule.effect is Effect.FORBID:
            assert (line == f"forbid {rule.id}: applies") == applies(rule, ask)
        elif not conditions_hold(rule, ask):
            assert line.startswith(f"permit {rule.id}: does not apply (")
        else:
            assert (
                line.startswith(f"permit {rule.id}: applies")
                or line == f"permit {rule.id}: {CHOSEN}"
            )
        if decision.permitted and rule.id == decision.rules[0]:
            assert line == f"permit {rule.id}: {CHOSEN}"
    if decision.rules == (DEFAULT_DENY,):
        expected_lines += 1
    assert len(decision.explanation) == expected_lines


def _obligation_lines(grant: Grant, query: Query) -> list[str]:
    """What the obligations text must say for ``grant``, written out independently.

    A transform is an obligation applied when the field's values leave the
    node: a released field, or the field a count_by groups by.
    """
    lines = []
    if grant.fields:
        lines.append("release only: " + ", ".join(grant.fields))
    if grant.withheld:
        lines.append("withhold: " + ", ".join(grant.withheld))
    for name in _shown(grant, query):
        transform = grant.transforms.get(name)
        if transform is not None:
            text = (
                f"map:{transform.map_name}"
                if transform.kind is TransformKind.MAP
                else transform.kind.value
            )
            lines.append(f"transform {name}: {text}")
    for f in grant.row_filters:
        lines.append(f"only rows where {f.field} {f.comparator.value} {','.join(f.values)}")
    lines.append(f"at most {grant.max_rows} rows")
    if grant.min_count:
        lines.append(f"counts below {grant.min_count} shown as 'fewer than {grant.min_count}'")
    for limit in grant.rate_limits:
        lines.append(f"rate limit: {limit.amount} per {limit.window_s} s per {limit.scope.value}")
    return lines


@PROPERTY
@given(ask=asks(), data=st.data())
def test_the_obligations_list_each_obligation_applied_and_nothing_else(
    ask: Ask, data: st.DataObject
) -> None:
    rules = data.draw(rules_near(ask, covering=data.draw(COIN)))

    decision = ask.under(*rules)

    if not decision.permitted:
        assert decision.obligations == ()
        return
    assert decision.grant is not None
    assert Counter(decision.obligations) == Counter(_obligation_lines(decision.grant, ask.query))


def test_a_transform_of_the_grouped_field_is_listed_among_the_obligations() -> None:
    """count_by releases the (mapped) group keys, so the map is an obligation applied."""
    ask = Ask(
        Requester("genovia", "a", ("analyst",), "i"),
        "statistics",
        Query("media", Operation.COUNT_BY, group_by="category"),
    )
    rule = replace(
        _open_permit(ask, "severity"),
        transforms={"category": Transform(TransformKind.MAP, "severity")},
        min_count=10,
    )

    decision = ask.under(rule)

    assert decision.permitted
    assert "transform category: map:severity" in decision.obligations, decision.obligations
