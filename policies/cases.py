"""Policy tests: cases an agency writes beside its policy to pin down intent.

A case file is TOML, by convention ``NAME.cases.toml`` beside ``NAME.toml``::

    [defaults]                       # optional: every case starts from these
    requester = { agency = "genovia", roles = ["investigator"] }
    purpose = "csam-investigation"
    case_ref = "GEN-2026-0142"

    [[case]]
    name = "a cleared partner sees the month a file was first seen"
    requester = { agency = "genovia", roles = ["investigator"],
                  attributes = { clearance = "secret" } }
    query = { dataset = "media", operation = "records",
              where = ["sha256=9f86d0..."], fields = ["category", "first_seen"] }
    expect = "permit"
    rule = "partner-media-records"
    released = ["category", "first_seen"]
    obligations_include = ["transform first_seen: month"]

A case names a requester (``agency``, ``roles``, optional ``attributes`` and
``subject``), a ``purpose``, a ``case_ref``, an optional ``legal_basis`` and a
``query``: its ``dataset``, its ``operation`` (match, count, count_by,
records), predicates as ``where = ["FIELD=VALUE", "FIELD>=VALUE", ...]``,
``any = { FIELD = ["V1", "V2"] }`` or ``predicates = [{ field = "F", eq =
"V" }]`` (eq, in, gte, lte), and ``fields`` (records) or ``group_by``
(count_by). The query is checked against the catalog as the gateway would.

Expectations: ``expect = "permit"`` or ``"deny"`` (required); ``rule``: the
decision names this rule (a forbid, ``default-deny``, or the permit that
answers); ``released`` and ``withheld``: exactly these requested fields
(records); ``obligations_include``: each text appears in one of the
obligations; ``reason_includes``: text the decision's reason contains.

A follow-up case asks what a duty officer may release on a follow-up request
(approve rules, ``policies.followup``) instead of deciding a query::

    [[case]]
    name = "a Genovian follow-up may have the case reference released"
    followup = { dataset = "media", fields = ["case_ref", "first_seen", "shareable"] }
    expect_decidable = ["case_ref", "first_seen"]
    expect_refused = ["shareable"]
    rule = "genovian-follow-up"

It takes ``followup`` in place of ``query`` and ``expect``; ``expect_decidable``
and ``expect_refused``: exactly these asked fields (at least one of the two);
``rule``: an approve rule that applies or a forbid that refuses a field
(``default-deny`` when there is neither);
``reason_includes``: text one of the refusals contains. Its result reads as a
permit when some field is decidable, a denial otherwise.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liaison.catalog import Catalog
from liaison.errors import CaseFileError, CatalogError, InvalidQuery
from liaison.messages import Requester
from liaison.query import (
    Comparator,
    Operation,
    Predicate,
    Query,
    validate_case_ref,
    validate_legal_basis,
    validate_query,
)
from policies.engine import DEFAULT_DENY, PolicyDecision, decide
from policies.followup import FollowUpBounds, decide_followup
from policies.model import Policy

CASES_SUFFIX = ".cases.toml"


@dataclass(frozen=True, slots=True)
class Expectation:
    permit: bool
    rule: str = ""
    released: tuple[str, ...] | None = None
    withheld: tuple[str, ...] | None = None
    obligations_include: tuple[str, ...] = ()
    reason_includes: str = ""
    # Follow-up cases only: exactly these asked fields decidable, or refused.
    decidable: tuple[str, ...] | None = None
    refused: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class FollowUpAsk:
    """The part of a follow-up request the policy bounds: which fields of which dataset."""

    dataset: str
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PolicyCase:
    name: str
    requester: Requester
    purpose: str
    case_ref: str
    legal_basis: str
    # For a follow-up case, the records query it reads as (dataset and fields).
    query: Query
    expect: Expectation
    followup: FollowUpAsk | None = None


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: PolicyCase
    # For a follow-up case, its bounds read as a decision (see ``bounds``).
    decision: PolicyDecision
    failures: tuple[str, ...]
    bounds: FollowUpBounds | None = None

    @property
    def passed(self) -> bool:
        return not self.failures


def cases_path_for(policy_path: Path) -> Path:
    """``ruritania.toml`` -> ``ruritania.cases.toml``, in the same folder."""
    return policy_path.with_name(policy_path.name.removesuffix(".toml") + CASES_SUFFIX)


def load_cases(path: Path, catalog: Catalog) -> tuple[PolicyCase, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise CaseFileError(f"policy test file {path} does not exist") from exc
    except UnicodeDecodeError as exc:
        raise CaseFileError(f"{path}: not UTF-8 text ({exc}); save it as UTF-8") from exc
    except OSError as exc:
        raise CaseFileError(f"cannot read policy test file {path} ({exc.strerror})") from exc
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CaseFileError(f"{path}: not valid TOML ({exc})") from exc
    try:
        return parse_cases(document, catalog)
    except CaseFileError as exc:
        raise CaseFileError(f"{path}: {exc}") from exc


_CASE_KEYS = {
    "name",
    "description",
    "requester",
    "purpose",
    "case_ref",
    "legal_basis",
    "query",
    "expect",
    "rule",
    "released",
    "withheld",
    "obligations_include",
    "reason_includes",
}
_FOLLOWUP_CASE_KEYS = (
    _CASE_KEYS - {"query", "expect", "released", "withheld", "obligations_include"}
) | {"followup", "expect_decidable", "expect_refused"}
_DEFAULT_KEYS = {"requester", "purpose", "case_ref", "legal_basis"}


def parse_cases(document: Mapping[str, Any], catalog: Catalog) -> tuple[PolicyCase, ...]:
    unknown = set(document) - {"description", "defaults", "case"}
    if unknown:
        raise CaseFileError(
            f"unknown top-level keys {', '.join(sorted(unknown))}; a case file has an optional "
            "[defaults] table and [[case]] tables"
        )
    defaults = document.get("defaults", {})
    if not isinstance(defaults, dict):
        raise CaseFileError("[defaults] must be a table")
    extra = set(defaults) - _DEFAULT_KEYS
    if extra:
        raise CaseFileError(
            f"[defaults] takes {', '.join(sorted(_DEFAULT_KEYS))}; not {', '.join(sorted(extra))}"
        )
    raw_cases = document.get("case", [])
    if not isinstance(raw_cases, list) or not raw_cases:
        raise CaseFileError("write at least one case as a [[case]] table")
    cases: list[PolicyCase] = []
    names: set[str] = set()
    for index, raw in enumerate(raw_cases, start=1):
        if not isinstance(raw, dict):
            raise CaseFileError(f"case #{index} is not a table")
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            raise CaseFileError(f'case #{index} needs a `name = "..."` saying what it pins down')
        if name in names:
            raise CaseFileError(f"case {name!r} is named twice; case names must be unique")
        names.add(name)
        try:
            cases.append(_parse_case(name, {**defaults, **raw}, catalog))
        except (CaseFileError, CatalogError, InvalidQuery) as exc:
            raise CaseFileError(f"case {name!r}: {exc}") from exc
    return tuple(cases)


def _text(raw: Mapping[str, Any], key: str, *, default: str | None = None) -> str:
    value = raw.get(key, default)
    if value is None:
        raise CaseFileError(f"`{key}` is required")
    if not isinstance(value, str):
        raise CaseFileError(f"`{key}` must be text")
    return value


def _texts(raw: Mapping[str, Any], key: str, where: str = "") -> tuple[str, ...]:
    value = raw.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise CaseFileError(f"{where}`{key}` must be a list of names")
    return tuple(value)


def _parse_case(name: str, raw: Mapping[str, Any], catalog: Catalog) -> PolicyCase:
    if "followup" in raw:
        return _parse_followup_case(name, raw, catalog)
    unknown = set(raw) - _CASE_KEYS
    if unknown:
        raise CaseFileError(
            f"unknown keys {', '.join(sorted(unknown))}; a case takes "
            + ", ".join(sorted(_CASE_KEYS))
        )
    requester = _requester(raw.get("requester"))
    purpose = _text(raw, "purpose")
    catalog.check_purpose(purpose)
    case_ref = validate_case_ref(_text(raw, "case_ref"))
    legal_basis = validate_legal_basis(_text(raw, "legal_basis", default=""))
    query = validate_query(_query(raw.get("query")), catalog)
    return PolicyCase(
        name=name,
        requester=requester,
        purpose=purpose,
        case_ref=case_ref,
        legal_basis=legal_basis,
        query=query,
        expect=_expectation(raw, query),
    )


def _parse_followup_case(name: str, raw: Mapping[str, Any], catalog: Catalog) -> PolicyCase:
    unknown = set(raw) - _FOLLOWUP_CASE_KEYS
    if unknown:
        raise CaseFileError(
            f"unknown keys {', '.join(sorted(unknown))} in a follow-up case; it takes "
            + ", ".join(sorted(_FOLLOWUP_CASE_KEYS))
        )
    requester = _requester(raw.get("requester"))
    purpose = _text(raw, "purpose")
    catalog.check_purpose(purpose)
    case_ref = validate_case_ref(_text(raw, "case_ref"))
    legal_basis = validate_legal_basis(_text(raw, "legal_basis", default=""))
    spec = raw["followup"]
    if not isinstance(spec, dict) or set(spec) != {"dataset", "fields"}:
        raise CaseFileError(
            '`followup` is a table like { dataset = "media", fields = ["case_ref"] }'
        )
    dataset = spec["dataset"]
    if not isinstance(dataset, str) or not dataset:
        raise CaseFileError('followup needs `dataset = "media"` (or accounts, cases)')
    known = catalog.dataset(dataset).field_names
    fields = _texts(spec, "fields", "followup: ")
    if not fields:
        raise CaseFileError("followup: `fields` names at least one field")
    stray = [f for f in fields if f not in known]
    if stray:
        raise CaseFileError(
            f"followup: {dataset} has no field {', '.join(stray)} (it has {', '.join(known)})"
        )
    expected: dict[str, tuple[str, ...] | None] = {}
    for key in ("expect_decidable", "expect_refused"):
        expected[key] = _texts(raw, key) if key in raw else None
        names = expected[key] or ()
        stray = [n for n in names if n not in fields]
        if stray:
            raise CaseFileError(
                f"`{key}` names {', '.join(stray)}, which the follow-up does not ask for "
                f"(it asks for {', '.join(fields)})"
            )
    if expected["expect_decidable"] is None and expected["expect_refused"] is None:
        raise CaseFileError(
            "a follow-up case needs `expect_decidable = [...]` or `expect_refused = [...]` "
            "(or both)"
        )
    decidable = expected["expect_decidable"]
    return PolicyCase(
        name=name,
        requester=requester,
        purpose=purpose,
        case_ref=case_ref,
        legal_basis=legal_basis,
        query=Query(dataset=dataset, operation=Operation.RECORDS, fields=fields),
        expect=Expectation(
            permit=bool(decidable),
            rule=_text(raw, "rule", default=""),
            reason_includes=_text(raw, "reason_includes", default=""),
            decidable=decidable,
            refused=expected["expect_refused"],
        ),
        followup=FollowUpAsk(dataset, fields),
    )


def _requester(raw: object) -> Requester:
    if not isinstance(raw, dict):
        raise CaseFileError(
            '`requester` is required: a table like { agency = "genovia", roles = ["investigator"] }'
        )
    unknown = set(raw) - {"agency", "roles", "attributes", "subject"}
    if unknown:
        raise CaseFileError(
            f"requester: unknown keys {', '.join(sorted(unknown))}; "
            "use agency, roles, attributes, subject"
        )
    agency = raw.get("agency")
    if not isinstance(agency, str) or not agency:
        raise CaseFileError('requester needs `agency = "<agency id>"`')
    roles = _texts(raw, "roles", "requester: ")
    attributes = raw.get("attributes", {})
    if not isinstance(attributes, dict) or not all(isinstance(v, str) for v in attributes.values()):
        raise CaseFileError(
            'requester: `attributes` is a table of text values, e.g. { clearance = "secret" }'
        )
    subject = raw.get("subject", "policy-test")
    if not isinstance(subject, str):
        raise CaseFileError("requester: `subject` must be text")
    return Requester(agency, subject, roles, "", dict(attributes))


_QUERY_KEYS = {"dataset", "operation", "where", "any", "predicates", "fields", "group_by"}
_COMPARATORS = {c.value: c for c in Comparator}


def _query(raw: object) -> Query:
    if not isinstance(raw, dict):
        raise CaseFileError(
            '`query` is required: a table like { dataset = "media", operation = "match", '
            'where = ["sha256=..."] }'
        )
    unknown = set(raw) - _QUERY_KEYS
    if unknown:
        raise CaseFileError(
            f"query: unknown keys {', '.join(sorted(unknown))}; use "
            + ", ".join(sorted(_QUERY_KEYS))
        )
    dataset = raw.get("dataset")
    if not isinstance(dataset, str) or not dataset:
        raise CaseFileError('query needs `dataset = "media"` (or accounts, cases)')
    ops = ", ".join(o.value for o in Operation)
    try:
        operation = Operation(str(raw.get("operation")))
    except ValueError as exc:
        raise CaseFileError(f"query needs `operation`, one of {ops}") from exc
    predicates = [_where(text) for text in _texts(raw, "where", "query: ")]
    predicates += _any(raw.get("any", {}))
    predicates += _predicate_tables(raw.get("predicates", []))
    group_by = raw.get("group_by")
    if group_by is not None and not isinstance(group_by, str):
        raise CaseFileError("query: `group_by` is a field name")
    return Query(
        dataset=dataset,
        operation=operation,
        predicates=tuple(predicates),
        fields=_texts(raw, "fields", "query: "),
        group_by=group_by,
    )


def _where(text: str) -> Predicate:
    for symbol, comparator in (">=", Comparator.GTE), ("<=", Comparator.LTE), ("=", Comparator.EQ):
        field, sep, value = text.partition(symbol)
        if sep and field.strip():
            return Predicate(field.strip(), comparator, (value.strip(),))
    raise CaseFileError(f"query: where {text!r}: write FIELD=VALUE, FIELD>=VALUE or FIELD<=VALUE")


def _any(raw: object) -> list[Predicate]:
    if not isinstance(raw, dict):
        raise CaseFileError('query: `any` is a table like { category = ["A", "B"] }')
    out = []
    for field, values in raw.items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise CaseFileError(f"query: any {field!r} must be a list of values")
        out.append(Predicate(field, Comparator.IN, tuple(values)))
    return out


def _predicate_tables(raw: object) -> list[Predicate]:
    if not isinstance(raw, list):
        raise CaseFileError('query: `predicates` is a list like [{ field = "sha256", eq = "..." }]')
    out = []
    for item in raw:
        if not isinstance(item, dict) or len(item) != 2 or not isinstance(item.get("field"), str):
            raise CaseFileError(
                "query: each predicate names a field and one of eq, in, gte, lte, e.g. "
                '{ field = "sha256", eq = "..." }'
            )
        (op_name,) = set(item) - {"field"}
        comparator = _COMPARATORS.get(op_name)
        if comparator is None:
            raise CaseFileError(f"query: predicate on {item['field']!r}: use eq, in, gte or lte")
        values = item[op_name]
        values = values if isinstance(values, list) else [values]
        if not all(isinstance(v, str | int | bool) for v in values):
            raise CaseFileError(f"query: predicate on {item['field']!r} needs text values")
        texts = tuple(str(v).lower() if isinstance(v, bool) else str(v) for v in values)
        out.append(Predicate(item["field"], comparator, texts))
    return out


def _expectation(raw: Mapping[str, Any], query: Query) -> Expectation:
    expect = raw.get("expect")
    if expect not in ("permit", "deny"):
        raise CaseFileError('`expect` is required: "permit" or "deny"')
    permit = expect == "permit"
    released = _texts(raw, "released") if "released" in raw else None
    withheld = _texts(raw, "withheld") if "withheld" in raw else None
    for key, names in (("released", released), ("withheld", withheld)):
        if names is None:
            continue
        if not permit:
            raise CaseFileError(f"`{key}` applies to permits; a denial releases nothing")
        if query.operation is not Operation.RECORDS:
            raise CaseFileError(f"`{key}` applies to records queries")
        stray = [n for n in names if n not in query.fields]
        if stray:
            raise CaseFileError(
                f"`{key}` names {', '.join(stray)}, which the query does not request "
                f"(it requests {', '.join(query.fields)})"
            )
    obligations = _obligation_texts(raw)
    if obligations and not permit:
        raise CaseFileError("`obligations_include` applies to permits; a denial has none")
    return Expectation(
        permit=permit,
        rule=_text(raw, "rule", default=""),
        released=released,
        withheld=withheld,
        obligations_include=obligations,
        reason_includes=_text(raw, "reason_includes", default=""),
    )


def _obligation_texts(raw: Mapping[str, Any]) -> tuple[str, ...]:
    value = raw.get("obligations_include", [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise CaseFileError("`obligations_include` must be a list of texts")
    return tuple(value)


def run_case(policy: Policy, case: PolicyCase) -> CaseResult:
    if case.followup is not None:
        return _run_followup_case(policy, case, case.followup)
    decision = decide(
        policy,
        case.requester,
        case.purpose,
        case.query,
        case_ref=case.case_ref,
        legal_basis=case.legal_basis,
    )
    return CaseResult(case, decision, tuple(_differences(case.expect, decision)))


def _run_followup_case(policy: Policy, case: PolicyCase, ask: FollowUpAsk) -> CaseResult:
    bounds = decide_followup(
        policy,
        case.requester,
        case.purpose,
        ask.dataset,
        ask.fields,
        case_ref=case.case_ref,
        legal_basis=case.legal_basis,
    )
    parts = []
    if bounds.decidable:
        parts.append(f"an officer may release: {', '.join(bounds.decidable)}")
    if bounds.refused:
        parts.append(f"refused: {bounds.reason}")
    # Read as a decision, so the case reports like any other: "permit" when an
    # officer may release something, under the approve rules that apply.
    decision = PolicyDecision(
        permitted=bool(bounds.decidable),
        rules=(*bounds.rules, *bounds.forbidden_by) or (DEFAULT_DENY,),
        reason="; ".join(parts),
        explanation=bounds.explanation,
    )
    expect = case.expect
    failures = []
    for key, expected, actual in (
        ("decidable", expect.decidable, bounds.decidable),
        ("refused", expect.refused, tuple(bounds.refused)),
    ):
        if expected is not None and set(expected) != set(actual):
            failures.append(f"{key}: expected {_names(expected)}, got {_names(actual)}")
    if expect.rule and expect.rule not in decision.rules:
        failures.append(f"expected rule {expect.rule}, got {', '.join(decision.rules)}")
    if expect.reason_includes and not any(
        expect.reason_includes in why for why in bounds.refused.values()
    ):
        failures.append(
            f"no refusal includes {expect.reason_includes!r} "
            f"(refusals: {bounds.reason or 'none'!r})"
        )
    return CaseResult(case, decision, tuple(failures), bounds)


def run_cases(policy: Policy, cases: Sequence[PolicyCase]) -> tuple[CaseResult, ...]:
    return tuple(run_case(policy, c) for c in cases)


def describe_decision(decision: PolicyDecision) -> str:
    rules = ", ".join(decision.rules)
    if decision.permitted:
        return f"permit under {rules}"
    return f"deny by {rules}"


def _differences(expect: Expectation, decision: PolicyDecision) -> list[str]:
    if expect.permit != decision.permitted:
        wanted = "permit" if expect.permit else "deny"
        got = describe_decision(decision)
        detail = f" ({decision.reason})" if decision.reason else ""
        return [f"expected {wanted}, got {got}{detail}"]
    out = []
    if expect.rule and expect.rule not in decision.rules:
        out.append(f"expected rule {expect.rule}, got {', '.join(decision.rules)}")
    grant = decision.grant
    released = grant.fields if grant else ()
    withheld = grant.withheld if grant else ()
    for key, expected, actual in (
        ("released", expect.released, released),
        ("withheld", expect.withheld, withheld),
    ):
        if expected is not None and set(expected) != set(actual):
            out.append(f"{key}: expected {_names(expected)}, got {_names(actual)}")
    for text in expect.obligations_include:
        if not any(text in line for line in decision.obligations):
            shown = "; ".join(decision.obligations) or "none"
            out.append(f"no obligation includes {text!r} (obligations: {shown})")
    if expect.reason_includes and expect.reason_includes not in decision.reason:
        out.append(
            f"reason does not include {expect.reason_includes!r} "
            f"(reason: {decision.reason or 'none'!r})"
        )
    return out


def _names(names: Sequence[str]) -> str:
    return "[" + ", ".join(names) + "]" if names else "nothing"


__all__ = [
    "CASES_SUFFIX",
    "CaseFileError",
    "CaseResult",
    "Expectation",
    "FollowUpAsk",
    "PolicyCase",
    "cases_path_for",
    "describe_decision",
    "load_cases",
    "parse_cases",
    "run_case",
    "run_cases",
]
