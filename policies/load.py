"""Loading a policy document (TOML) and checking it against the catalog.

A policy that names an unknown dataset, field, purpose, operation, group or
key fails to load with a message naming the rule and the name, so a typo can
never silently widen or narrow what a node releases.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from liaison.catalog import Catalog
from liaison.errors import CatalogError, PolicyError
from liaison.query import Operation
from policies.engine import DEFAULT_DENY, EVALUATION_ERROR
from policies.model import ANY, Effect, Policy, Rule

_SCOPE_KEYS = ("agencies", "roles", "purposes", "datasets", "operations")
_PERMIT_KEYS = {"match_fields", "release", "min_count", "max_rows"}
_COMMON_KEYS = {"id", "effect", "description", *_SCOPE_KEYS}
MAX_ROWS_CEILING = 10_000
RESERVED_RULE_IDS = frozenset({DEFAULT_DENY, EVALUATION_ERROR, "dataset-not-offered"})


def load_policy(path: Path, catalog: Catalog) -> Policy:
    try:
        text = path.read_text(encoding="utf-8")
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
        return parse_policy(document, catalog)
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc}") from exc


def parse_policy(document: Mapping[str, Any], catalog: Catalog) -> Policy:
    unknown = set(document) - {"version", "agency", "groups", "rule"}
    if unknown:
        raise PolicyError(f"unknown top-level keys: {', '.join(sorted(unknown))}")
    version = document.get("version")
    if type(version) is not int or version != 1:
        raise PolicyError("policy needs `version = 1`")
    agency = document.get("agency")
    if not isinstance(agency, str) or not agency:
        raise PolicyError('policy needs `agency = "<this node\'s agency id>"`')
    groups = _parse_groups(document.get("groups", {}))
    raw_rules = document.get("rule", [])
    if not isinstance(raw_rules, list):
        raise PolicyError("rules are written as [[rule]] tables")
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_rules, start=1):
        if not isinstance(raw, dict):
            raise PolicyError(f"rule #{index} is not a table")
        rule = _parse_rule(raw, index, groups, catalog)
        if rule.id in RESERVED_RULE_IDS:
            raise PolicyError(
                f"rule id {rule.id!r} is reserved for decisions no rule made; choose another"
            )
        if rule.id in seen:
            raise PolicyError(f"rule id {rule.id!r} is used twice; rule ids must be unique")
        seen.add(rule.id)
        rules.append(rule)
    return Policy(agency=agency, rules=tuple(rules))


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
    raw: dict[str, Any], index: int, groups: Mapping[str, frozenset[str]], catalog: Catalog
) -> Rule:
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not rule_id.strip():
        raise PolicyError(f"rule #{index} needs an `id`")
    where = f"rule {rule_id!r}"
    try:
        effect = Effect(str(raw.get("effect")))
    except ValueError as exc:
        raise PolicyError(f'{where}: `effect` must be "permit" or "forbid"') from exc
    allowed = _COMMON_KEYS | (_PERMIT_KEYS if effect is Effect.PERMIT else set())
    unknown = set(raw) - allowed
    if unknown:
        raise PolicyError(f"{where}: unknown keys {', '.join(sorted(unknown))}")

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
    if effect is Effect.PERMIT and ANY in datasets:
        raise PolicyError(f'{where}: a permit names its datasets explicitly, not "*"')
    for dataset in datasets - {ANY}:
        try:
            catalog.dataset(dataset)
        except CatalogError as exc:
            raise PolicyError(f"{where}: {exc}") from exc
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
    rule = Rule(
        id=rule_id,
        effect=effect,
        agencies=frozenset(agencies),
        roles=roles,
        purposes=purposes,
        datasets=datasets,
        operations=operations,
        description=str(raw.get("description", "")),
    )
    if effect is Effect.FORBID:
        return rule
    match_fields = _field_list(raw, "match_fields", where, datasets, catalog)
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
    return Rule(
        id=rule.id,
        effect=rule.effect,
        agencies=rule.agencies,
        roles=rule.roles,
        purposes=rule.purposes,
        datasets=rule.datasets,
        operations=rule.operations,
        match_fields=match_fields,
        release=release,
        min_count=min_count,
        max_rows=max_rows,
        description=rule.description,
    )


def _field_list(
    raw: dict[str, Any], key: str, where: str, datasets: frozenset[str], catalog: Catalog
) -> frozenset[str]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{where}: `{key}` must be a list of field names")
    for dataset in datasets:
        ds = catalog.dataset(dataset)
        for name in value:
            try:
                ds.field(name)
            except CatalogError as exc:
                raise PolicyError(f"{where}: `{key}`: {exc}") from exc
    return frozenset(value)
