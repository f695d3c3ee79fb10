"""Loading a policy document (TOML) and checking it against the catalog.

A policy that names an unknown dataset, field, purpose, operation, group or
key fails to load with a message naming the rule and the name, so a typo can
never silently widen or narrow what a node releases.

Three kinds of rule: ``permit`` and ``forbid`` decide queries; ``approve``
names the fields a duty officer may release on a follow-up request
(``release``), the roles that may decide (``officers``, required) and the
default handling code (``handling``). A key that belongs to another kind of
rule is refused with a message saying where it belongs.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from liaison.catalog import Catalog, FieldType
from liaison.errors import CatalogError, InvalidQuery, PolicyError
from liaison.handling import DEFAULT_HANDLING, handling_code
from liaison.query import DEFAULT_NEAR_DISTANCE, MAX_NEAR_DISTANCE, Comparator, Operation
from policies.engine import DEFAULT_DENY, EVALUATION_ERROR
from policies.model import (
    ANY,
    Effect,
    Policy,
    RateLimit,
    RateScope,
    RowFilter,
    Rule,
    Transform,
    TransformKind,
)

_SCOPE_KEYS = ("agencies", "roles", "purposes", "datasets", "operations")
_PERMIT_KEYS = {
    "match_fields",
    "release",
    "min_count",
    "max_rows",
    "max_distance",
    "transforms",
    "row_filters",
    "rate_limit",
    "releases_lists",
    "near_budget",
}
_FORBID_KEYS = {"fields"}
_COMMON_KEYS = {
    "id",
    "effect",
    "description",
    "attributes",
    "case_ref",
    "legal_bases",
    *_SCOPE_KEYS,
}
# An approve rule has the scope and conditions of a permit, but no operations:
# a follow-up is no query. Its `release` is what a duty officer may release.
_APPROVE_KEYS = {"release", "officers", "handling"}
_KEYS = {
    Effect.PERMIT: _COMMON_KEYS | _PERMIT_KEYS | {"notify"},
    Effect.FORBID: _COMMON_KEYS | _FORBID_KEYS,
    Effect.APPROVE: (_COMMON_KEYS - {"operations"}) | _APPROVE_KEYS,
}
_EVERY_KEY = frozenset().union(*_KEYS.values())
_KIND = {Effect.PERMIT: "a permit", Effect.FORBID: "a forbid", Effect.APPROVE: "an approve"}
MAX_ROWS_CEILING = 10_000
RESERVED_RULE_IDS = frozenset(
    {DEFAULT_DENY, EVALUATION_ERROR, "dataset-not-offered", "differencing-guard", "near-match-cap"}
)


def load_policy(path: Path, catalog: Catalog) -> Policy:
    return load_policy_and_text(path, catalog)[0]


def load_policy_and_text(path: Path, catalog: Catalog) -> tuple[Policy, str]:
    """The policy and the exact text it was parsed from, read once.

    Decoded without newline translation, so a node that publishes the text
    publishes the file's own bytes (and SHA-256), exactly what it enforces.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError as exc:
        raise PolicyError(f"policy file {path} does not exist; check the node config") from exc
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{path}: not UTF-8 text ({exc}); save it as UTF-8") from exc
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path} ({exc.strerror})") from exc
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: not valid TOML ({exc})") from exc
    try:
        return parse_policy(document, catalog), text
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc}") from exc


def parse_policy(document: Mapping[str, Any], catalog: Catalog) -> Policy:
    unknown = set(document) - {"version", "agency", "groups", "maps", "rule"}
    if unknown:
        raise PolicyError(f"unknown top-level keys: {', '.join(sorted(unknown))}")
    version = document.get("version")
    if type(version) is not int or version != 1:
        raise PolicyError("policy needs `version = 1`")
    agency = document.get("agency")
    if not isinstance(agency, str) or not agency:
        raise PolicyError('policy needs `agency = "<this node\'s agency id>"`')
    groups = _parse_groups(document.get("groups", {}))
    maps = _parse_maps(document.get("maps", {}))
    raw_rules = document.get("rule", [])
    if not isinstance(raw_rules, list):
        raise PolicyError("rules are written as [[rule]] tables")
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_rules, start=1):
        if not isinstance(raw, dict):
            raise PolicyError(f"rule #{index} is not a table")
        rule = _parse_rule(raw, index, groups, maps, catalog)
        if rule.id in RESERVED_RULE_IDS:
            raise PolicyError(
                f"rule id {rule.id!r} is reserved for decisions no rule made; choose another"
            )
        if rule.id in seen:
            raise PolicyError(f"rule id {rule.id!r} is used twice; rule ids must be unique")
        seen.add(rule.id)
        rules.append(rule)
    return Policy(agency=agency, rules=tuple(rules), maps=maps)


def _parse_groups(raw: object) -> dict[str, frozenset[str]]:
    if not isinstance(raw, dict):
        raise PolicyError("[groups] maps a group name to a list of agency ids")
    groups = {}
    for name, members in raw.items():
        if (
            not isinstance(members, list)
            or not members
            or not all(isinstance(m, str) and m for m in members)
        ):
            raise PolicyError(f"group {name!r} must be a non-empty list of agency ids")
        if ANY in members or any(m.startswith("group:") for m in members):
            raise PolicyError(
                f'group {name!r} lists agency ids only; write "*" in the rule for any agency'
            )
        groups[name] = frozenset(members)
    return groups


def _parse_maps(raw: object) -> dict[str, dict[str, str]]:
    if not isinstance(raw, dict):
        raise PolicyError("[maps.NAME] tables map a value to its generalisation")
    maps = {}
    for name, table in raw.items():
        if not isinstance(table, dict) or not table:
            raise PolicyError(f'map {name!r} must be a non-empty table of value = "general"')
        for key, value in table.items():
            if not isinstance(value, str) or not value:
                raise PolicyError(f"map {name!r}: {key!r} must map to a non-empty string")
        maps[name] = dict(table)
    return maps


def _names(raw: dict[str, Any], key: str, where: str) -> frozenset[str]:
    if key not in raw:
        raise PolicyError(f'{where}: `{key}` is required (use ["*"] to mean any)')
    value = raw[key]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"{where}: `{key}` must be a non-empty list of names")
    return frozenset(value)


def _parse_rule(
    raw: dict[str, Any],
    index: int,
    groups: Mapping[str, frozenset[str]],
    maps: Mapping[str, Mapping[str, str]],
    catalog: Catalog,
) -> Rule:
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not rule_id.strip():
        raise PolicyError(f"rule #{index} needs an `id`")
    where = f"rule {rule_id!r}"
    try:
        effect = Effect(str(raw.get("effect")))
    except ValueError as exc:
        raise PolicyError(
            f'{where}: `effect` must be "permit" or "forbid" (or "approve": fields a duty '
            "officer may release on a follow-up request)"
        ) from exc
    unknown = set(raw) - _KEYS[effect]
    if unknown:
        raise PolicyError(f"{where}: {_unknown_keys(effect, unknown)}")

    agencies: set[str] = set()
    for name in _names(raw, "agencies", where):
        if name.startswith("group:"):
            group = name.removeprefix("group:")
            if group not in groups:
                raise PolicyError(f"{where}: group {group!r} is not defined in [groups]")
            agencies |= groups[group]
        else:
            agencies.add(name)
    roles = _names(raw, "roles", where)
    purposes = _names(raw, "purposes", where)
    for purpose in purposes - {ANY}:
        try:
            catalog.check_purpose(purpose)
        except CatalogError as exc:
            raise PolicyError(f"{where}: {exc}") from exc
    datasets = _names(raw, "datasets", where)
    if effect is not Effect.FORBID and ANY in datasets:
        raise PolicyError(f'{where}: {_KIND[effect]} names its datasets explicitly, not "*"')
    for dataset in datasets - {ANY}:
        try:
            catalog.dataset(dataset)
        except CatalogError as exc:
            raise PolicyError(f"{where}: {exc}") from exc
    if effect is Effect.APPROVE:
        return _approve_rule(
            raw,
            where,
            Rule(
                id=rule_id,
                effect=effect,
                agencies=frozenset(agencies),
                roles=roles,
                purposes=purposes,
                datasets=datasets,
                operations=frozenset(),
                description=_description(raw, where),
            ),
            catalog,
        )
    raw_ops = _names(raw, "operations", where)
    if ANY in raw_ops:
        operations = frozenset(Operation)
    else:
        try:
            operations = frozenset(Operation(o) for o in raw_ops)
        except ValueError as exc:
            raise PolicyError(
                f"{where}: unknown operation in {sorted(raw_ops)}; use "
                + ", ".join(o.value for o in Operation)
            ) from exc
    conditions = _conditions(raw, where)
    rule = Rule(
        id=rule_id,
        effect=effect,
        agencies=frozenset(agencies),
        roles=roles,
        purposes=purposes,
        datasets=datasets,
        operations=operations,
        description=_description(raw, where),
        attributes=conditions[0],
        case_ref_pattern=conditions[1],
        legal_bases=conditions[2],
    )
    if effect is Effect.FORBID:
        return replace(rule, fields=_field_list(raw, "fields", where, datasets, catalog))
    match_fields = _field_list(raw, "match_fields", where, datasets, catalog)
    computed = sorted(f for f in match_fields if _computed(f, datasets, catalog))
    if computed:
        raise PolicyError(
            f"{where}: {', '.join(computed)} is computed for each answer; it can be released, "
            "not matched on (remove it from `match_fields`)"
        )
    release = _field_list(raw, "release", where, datasets, catalog)
    min_count = raw.get("min_count", 0)
    max_rows = raw.get("max_rows", 100)
    if not isinstance(min_count, int) or isinstance(min_count, bool) or min_count < 0:
        raise PolicyError(f"{where}: `min_count` must be a whole number >= 0")
    if min_count > 0 and operations & {Operation.RECORDS, Operation.MATCH}:
        raise PolicyError(
            f"{where}: `min_count` applies to count and count_by; a records or match answer "
            "would still show a small count, so put those operations in a rule of their own"
        )
    if (
        not isinstance(max_rows, int)
        or isinstance(max_rows, bool)
        or not (1 <= max_rows <= MAX_ROWS_CEILING)
    ):
        raise PolicyError(f"{where}: `max_rows` must be between 1 and {MAX_ROWS_CEILING}")
    max_distance = raw.get("max_distance", DEFAULT_NEAR_DISTANCE)
    if (
        not isinstance(max_distance, int)
        or isinstance(max_distance, bool)
        or not (0 <= max_distance <= MAX_NEAR_DISTANCE)
    ):
        raise PolicyError(
            f"{where}: `max_distance` (the largest near-duplicate distance in bits) must be "
            f"between 0 and {MAX_NEAR_DISTANCE}"
        )
    return replace(
        rule,
        match_fields=match_fields,
        release=release,
        min_count=min_count,
        max_rows=max_rows,
        max_distance=max_distance,
        transforms=_transforms(raw, where, datasets, release, maps, catalog),
        row_filters=_row_filters(raw, where, datasets, catalog),
        rate_limits=_rate_limits(raw, where),
        releases_lists=_releases_lists(raw, where, operations),
        near_budget=_near_budget(raw, where, datasets, match_fields, catalog),
        notify=_notify(raw, where),
    )


# Why a key does not belong on a rule of another kind, and what to do instead.
_MISPLACED = {
    Effect.PERMIT: "`officers` and `handling` belong on approve rules "
    '(effect = "approve"), `fields` on forbids',
    Effect.FORBID: "a forbid names scope, conditions and the `fields` it covers; "
    "`notify` and release obligations belong on permits, `officers` and `handling` on "
    "approve rules",
    Effect.APPROVE: "an approve rule bounds what a duty officer may release on a follow-up "
    "request and permits no query, so it takes only scope (agencies, roles, purposes, "
    "datasets), conditions (attributes, case_ref, legal_bases), `release`, `officers`, "
    "`handling` and `description`; remove the others",
}


def _unknown_keys(effect: Effect, unknown: set[str]) -> str:
    text = f"unknown keys {', '.join(sorted(unknown))}"
    if unknown & _EVERY_KEY:
        text += f" for {_KIND[effect]} rule ({_MISPLACED[effect]})"
    if "legal_basis" in unknown:
        text += " (a rule lists the legal bases it accepts as `legal_bases`)"
    return text


def _notify(raw: dict[str, Any], where: str) -> bool:
    value = raw.get("notify", False)
    if not isinstance(value, bool):
        raise PolicyError(
            f"{where}: `notify` is true or false (true: a hit under this rule puts a notice "
            "in this agency's inbox)"
        )
    return value


def _approve_rule(raw: dict[str, Any], where: str, rule: Rule, catalog: Catalog) -> Rule:
    """The rest of an approve rule: what may be released, who decides, how it is handled."""
    conditions = _conditions(raw, where)
    if "release" not in raw:
        raise PolicyError(
            f"{where}: an approve rule needs `release = [...]`: the fields a duty officer may "
            "release on a follow-up request"
        )
    release = _field_list(raw, "release", where, rule.datasets, catalog)
    if not release:
        raise PolicyError(
            f"{where}: `release` is empty, so no officer could release anything; list the "
            "fields a duty officer may release, or remove the rule"
        )
    computed = sorted(f for f in release if _computed(f, rule.datasets, catalog))
    if computed:
        raise PolicyError(
            f"{where}: {', '.join(computed)} is computed for each query's answer, not held "
            "with the record, so a follow-up cannot release it (remove it from `release`)"
        )
    if "officers" not in raw:
        raise PolicyError(
            f"{where}: an approve rule needs `officers = [...]`: the roles at this node that "
            'may decide follow-up requests, e.g. officers = ["duty-officer"]'
        )
    officers = raw["officers"]
    if isinstance(officers, str):
        officers = [officers]
    if (
        not isinstance(officers, list)
        or not officers
        or not all(isinstance(o, str) and o.strip() for o in officers)
    ):
        raise PolicyError(
            f'{where}: `officers` must be a non-empty list of role names, e.g. ["duty-officer"]'
        )
    if ANY in officers:
        raise PolicyError(
            f'{where}: `officers` names the roles that may decide; "*" would let anyone '
            "with a token at this node release data"
        )
    handling = DEFAULT_HANDLING
    if "handling" in raw:
        text = raw["handling"]
        if not isinstance(text, str):
            raise PolicyError(f'{where}: `handling` is a code such as "H1"')
        try:
            handling = handling_code(text, where="`handling`")
        except InvalidQuery as exc:
            raise PolicyError(f"{where}: {exc}") from exc
    return replace(
        rule,
        attributes=conditions[0],
        case_ref_pattern=conditions[1],
        legal_bases=conditions[2],
        release=release,
        officers=frozenset(officers),
        handling=handling,
    )


def _releases_lists(raw: dict[str, Any], where: str, operations: frozenset[Operation]) -> bool:
    value = raw.get("releases_lists", False)
    if not isinstance(value, bool):
        raise PolicyError(f"{where}: `releases_lists` is true or false")
    if value and Operation.RECORDS not in operations:
        raise PolicyError(
            f"{where}: `releases_lists` applies to records; the rule does not permit records"
        )
    return value


def _near_budget(
    raw: dict[str, Any],
    where: str,
    datasets: frozenset[str],
    match_fields: frozenset[str],
    catalog: Catalog,
) -> RateLimit | None:
    if "near_budget" not in raw:
        return None
    spec = raw["near_budget"]
    amount, _, unit = str(spec).partition("/")
    if not isinstance(spec, str) or not amount.isdigit() or int(amount) < 1 or unit not in _WINDOWS:
        raise PolicyError(
            f"{where}: `near_budget` {spec!r}: write N/minute, N/hour or N/day "
            "(near-duplicate queries per investigator)"
        )
    if not any(
        name in d.field_names and d.field(name).near
        for d in catalog.datasets
        if d.name in datasets
        for name in match_fields
    ):
        raise PolicyError(
            f"{where}: `near_budget` limits near-duplicate queries, and the rule lets no "
            "perceptual hash (pdq) be matched on; remove it or add the hash to `match_fields`"
        )
    return RateLimit(RateScope.INVESTIGATOR, int(amount), _WINDOWS[unit])


def _computed(name: str, datasets: frozenset[str], catalog: Catalog) -> bool:
    return any(
        name in d.field_names and d.field(name).computed_from
        for d in catalog.datasets
        if ANY in datasets or d.name in datasets
    )


def _description(raw: dict[str, Any], where: str) -> str:
    value = raw.get("description", "")
    if not isinstance(value, str):
        raise PolicyError(f"{where}: `description` must be text")
    return value


def _conditions(
    raw: dict[str, Any], where: str
) -> tuple[dict[str, frozenset[str]], str, frozenset[str]]:
    attributes = raw.get("attributes", {})
    if not isinstance(attributes, dict):
        raise PolicyError(f"{where}: `attributes` maps an attribute to its allowed values")
    parsed = {}
    for name, values in attributes.items():
        if isinstance(values, str):
            values = [values]
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, str) and v for v in values)
        ):
            raise PolicyError(
                f'{where}: attribute {name!r} must list its allowed values, e.g. ["secret"]'
            )
        parsed[name] = frozenset(values)
    pattern = raw.get("case_ref", "")
    if not isinstance(pattern, str) or (pattern and not pattern.isprintable()):
        raise PolicyError(
            f'{where}: `case_ref` is a pattern such as "GEN-*" ("*" matches anything)'
        )
    bases = raw.get("legal_bases", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise PolicyError(f"{where}: `legal_bases` must be a list of legal basis ids")
    return parsed, pattern, frozenset(bases)


def _transforms(
    raw: dict[str, Any],
    where: str,
    datasets: frozenset[str],
    release: frozenset[str],
    maps: Mapping[str, Mapping[str, str]],
    catalog: Catalog,
) -> dict[str, Transform]:
    table = raw.get("transforms", {})
    if not isinstance(table, dict):
        raise PolicyError(f"{where}: `transforms` maps a released field to a transform")
    out = {}
    kinds = ", ".join([k.value for k in TransformKind if k is not TransformKind.MAP] + ["map:NAME"])
    for name, spec in table.items():
        if name not in release:
            raise PolicyError(f"{where}: transform of {name!r}, which the rule does not release")
        if not isinstance(spec, str):
            raise PolicyError(f"{where}: transform of {name!r} must be one of {kinds}")
        kind_text, _, map_name = spec.partition(":")
        try:
            kind = TransformKind(kind_text)
        except ValueError as exc:
            raise PolicyError(
                f"{where}: unknown transform {spec!r} for {name!r}; use one of {kinds}"
            ) from exc
        if kind is TransformKind.MAP and map_name not in maps:
            raise PolicyError(
                f"{where}: transform of {name!r} names map {map_name!r}, "
                "which is not defined in [maps]"
            )
        if kind is not TransformKind.MAP and map_name:
            raise PolicyError(f"{where}: transform {spec!r} takes no argument")
        if kind in (TransformKind.MONTH, TransformKind.YEAR):
            for dataset in datasets:
                if catalog.dataset(dataset).field(name).type is not FieldType.DATE:
                    raise PolicyError(f"{where}: {kind.value!r} applies to dates; {name!r} is not")
        out[name] = Transform(kind, map_name)
    return out


_FILTER_COMPARATORS = {
    "eq": Comparator.EQ,
    "in": Comparator.IN,
    "gte": Comparator.GTE,
    "lte": Comparator.LTE,
}


def _row_filters(
    raw: dict[str, Any], where: str, datasets: frozenset[str], catalog: Catalog
) -> tuple[RowFilter, ...]:
    items = raw.get("row_filters", [])
    if not isinstance(items, list):
        raise PolicyError(f'{where}: `row_filters` is a list like [{{ field = "x", eq = "y" }}]')
    out = []
    for item in items:
        if not isinstance(item, dict) or "field" not in item or len(item) != 2:
            raise PolicyError(
                f"{where}: each row filter names a field and one of eq, in, gte, lte, "
                'e.g. { field = "shareable", eq = "true" }'
            )
        name = item["field"]
        (op_name,) = set(item) - {"field"}
        comparator = _FILTER_COMPARATORS.get(op_name)
        if comparator is None:
            raise PolicyError(f"{where}: row filter on {name!r}: use eq, in, gte or lte")
        values = item[op_name]
        values = values if isinstance(values, list) else [values]
        if not values or not all(isinstance(v, str | bool | int) for v in values):
            raise PolicyError(f"{where}: row filter on {name!r} needs a value")
        texts = tuple(str(v).lower() if isinstance(v, bool) else str(v) for v in values)
        if comparator is not Comparator.IN and len(texts) != 1:
            raise PolicyError(f"{where}: row filter {op_name!r} on {name!r} takes one value")
        canonical = texts
        for dataset in datasets:
            try:
                field = catalog.dataset(dataset).field(name)
                canonical = tuple(field.canonical(t) for t in texts)
            except CatalogError as exc:
                raise PolicyError(f"{where}: row filter: {exc}") from exc
            if comparator in (Comparator.GTE, Comparator.LTE) and not field.type.orderable:
                raise PolicyError(f"{where}: row filter range on {name!r}, which is not ordered")
        out.append(RowFilter(name, comparator, canonical))
    return tuple(out)


_WINDOWS = {"minute": 60, "hour": 3600, "day": 86400}


def _rate_limits(raw: dict[str, Any], where: str) -> tuple[RateLimit, ...]:
    table = raw.get("rate_limit", {})
    if not isinstance(table, dict):
        raise PolicyError(f'{where}: `rate_limit` is a table like {{ investigator = "60/hour" }}')
    out = []
    for scope_name, spec in table.items():
        try:
            scope = RateScope(scope_name)
        except ValueError as exc:
            raise PolicyError(
                f"{where}: rate limit scope {scope_name!r}; use investigator or agency"
            ) from exc
        amount, _, unit = str(spec).partition("/")
        if not amount.isdigit() or int(amount) < 1 or unit not in _WINDOWS:
            raise PolicyError(f"{where}: rate limit {spec!r}: write N/minute, N/hour or N/day")
        out.append(RateLimit(scope, int(amount), _WINDOWS[unit]))
    return tuple(sorted(out, key=lambda r: r.scope.value))


def _field_list(
    raw: dict[str, Any], key: str, where: str, datasets: frozenset[str], catalog: Catalog
) -> frozenset[str]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{where}: `{key}` must be a list of field names")
    if ANY in datasets:
        known = {f for d in catalog.datasets for f in d.field_names}
        for name in value:
            if name not in known:
                raise PolicyError(f"{where}: `{key}`: no dataset has a field {name!r}")
        return frozenset(value)
    for dataset in datasets:
        ds = catalog.dataset(dataset)
        for name in value:
            try:
                ds.field(name)
            except CatalogError as exc:
                raise PolicyError(f"{where}: `{key}`: {exc}") from exc
    return frozenset(value)
