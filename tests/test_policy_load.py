"""Loading policy documents: the demo policies load, and every mistake is named.

A typo in a policy must never silently widen or narrow what a node releases,
so each kind of mistake fails to load with a message that names the rule and
the offending name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from liaison.catalog import CATALOG_V1
from liaison.errors import PolicyError
from liaison.query import Operation
from policies import Effect, Policy, load_policy, parse_policy
from policies.load import MAX_ROWS_CEILING
from policies.model import ANY

DEMO_POLICIES = sorted(
    p
    for p in (Path(__file__).parents[1] / "policies" / "demo").glob("*.toml")
    if not p.name.endswith(".cases.toml")
)
SCOPE_KEYS = ("agencies", "roles", "purposes", "datasets", "operations")


def permit_rule(**overrides: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "id": "partner-records",
        "effect": "permit",
        "agencies": ["genovia"],
        "roles": ["investigator"],
        "purposes": ["csam-investigation"],
        "datasets": ["media"],
        "operations": ["records"],
        "match_fields": ["sha256"],
        "release": ["category"],
    }
    rule.update(overrides)
    return rule


def forbid_rule(**overrides: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "id": "no-trainees",
        "effect": "forbid",
        "agencies": ["*"],
        "roles": ["trainee"],
        "purposes": ["*"],
        "datasets": ["*"],
        "operations": ["*"],
    }
    rule.update(overrides)
    return rule


def without(rule: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in rule.items() if k != key}


def document(*rules: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"version": 1, "agency": "testland", "rule": list(rules), **top}


def parse(doc: dict[str, Any]) -> Policy:
    return parse_policy(doc, CATALOG_V1)


# --- what loads ----------------------------------------------------------------


@pytest.mark.parametrize("path", DEMO_POLICIES, ids=lambda p: p.stem)
def test_each_demo_policy_loads(path: Path) -> None:
    loaded = load_policy(path, CATALOG_V1)

    assert loaded.agency == path.stem
    assert loaded.permits and loaded.forbids
    assert len({r.id for r in loaded.rules}) == len(loaded.rules)
    for rule in loaded.permits:
        assert ANY not in rule.datasets
        for dataset in rule.datasets:
            names = set(CATALOG_V1.dataset(dataset).field_names)
            assert rule.match_fields <= names and rule.release <= names


def test_there_are_demo_policies_to_load() -> None:
    assert [p.stem for p in DEMO_POLICIES] == ["freedonia", "ruritania", "sylvania"]


def test_the_demo_groups_and_wildcards_are_expanded() -> None:
    ruritania = load_policy(DEMO_POLICIES[1], CATALOG_V1)
    rules = {r.id: r for r in ruritania.rules}

    assert rules["partner-hash-match"].agencies == {"freedonia", "sylvania", "genovia"}
    assert rules["no-account-statistics"].operations == frozenset(Operation)
    assert rules["no-account-statistics"].effect is Effect.FORBID
    assert rules["open-statistics"].min_count == 10
    assert rules["partner-hash-match"].release == frozenset()


def test_a_minimal_policy_loads_with_the_documented_defaults() -> None:
    loaded = parse(document(permit_rule(), forbid_rule(description="No trainees.")))

    permit, forbid = loaded.rules
    assert loaded.agency == "testland"
    assert permit.effect is Effect.PERMIT
    assert permit.operations == {Operation.RECORDS}
    assert (permit.min_count, permit.max_rows) == (0, 100)
    assert forbid.effect is Effect.FORBID
    assert forbid.datasets == {ANY}
    assert forbid.description == "No trainees."


def test_a_policy_without_rules_loads_and_permits_nothing() -> None:
    loaded = parse({"version": 1, "agency": "testland"})

    assert loaded.rules == ()


def test_a_single_name_may_be_written_without_brackets() -> None:
    loaded = parse(document(permit_rule(roles="investigator", operations="*")))

    assert loaded.rules[0].roles == {"investigator"}
    assert loaded.rules[0].operations == frozenset(Operation)


def test_a_group_and_named_agencies_are_merged() -> None:
    loaded = parse(
        document(
            permit_rule(agencies=["group:partners", "sylvania"]),
            groups={"partners": ["genovia", "ruritania"]},
        )
    )

    assert loaded.rules[0].agencies == {"genovia", "ruritania", "sylvania"}


def test_fields_must_exist_in_every_dataset_a_permit_names() -> None:
    loaded = parse(
        document(
            permit_rule(
                datasets=["media", "accounts"],
                match_fields=["first_seen"],
                release=["case_ref", "first_seen"],
            )
        )
    )

    assert loaded.rules[0].datasets == {"media", "accounts"}


def test_load_policy_reads_toml_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        'version = 1\nagency = "testland"\n\n[groups]\nnear = ["genovia"]\n\n'
        "[[rule]]\n"
        'id = "hit"\neffect = "permit"\nagencies = ["group:near"]\nroles = ["*"]\n'
        'purposes = ["*"]\ndatasets = ["media"]\noperations = ["match"]\n'
        'match_fields = ["sha256"]\n',
        encoding="utf-8",
    )

    loaded = load_policy(path, CATALOG_V1)

    assert [(r.id, r.agencies) for r in loaded.rules] == [("hit", frozenset({"genovia"}))]


# --- what does not load, and what the message says ------------------------------


def _raises(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(message)):
        parse(doc)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            permit_rule(datasets=["medias"]),
            "rule 'partner-records': unknown dataset 'medias'; the catalog has: media",
        ),
        (
            forbid_rule(datasets=["acounts"]),
            "rule 'no-trainees': unknown dataset 'acounts'",
        ),
        (
            permit_rule(match_fields=["sha265"]),
            "rule 'partner-records': `match_fields`: dataset 'media' has no field 'sha265'",
        ),
        (
            permit_rule(release=["categroy"]),
            "rule 'partner-records': `release`: dataset 'media' has no field 'categroy'",
        ),
        (
            permit_rule(
                datasets=["media", "accounts"], match_fields=["case_ref"], release=["category"]
            ),
            "rule 'partner-records': `release`: dataset 'accounts' has no field 'category'",
        ),
        (
            permit_rule(purposes=["csam-investigation", "curiosity"]),
            "rule 'partner-records': unknown purpose 'curiosity'; use one of:",
        ),
        (
            forbid_rule(purposes=["statistic"]),
            "rule 'no-trainees': unknown purpose 'statistic'",
        ),
        (
            permit_rule(operations=["records", "lookup"]),
            "rule 'partner-records': unknown operation in ['lookup', 'records']; "
            "use match, count, count_by, records",
        ),
        (
            permit_rule(agencies=["group:nato"]),
            "rule 'partner-records': group 'nato' is not defined in [groups]",
        ),
        (
            permit_rule(relase=["case_ref"]),
            "rule 'partner-records': unknown keys relase",
        ),
        (
            permit_rule(max_row=5, min_cout=2),
            "rule 'partner-records': unknown keys max_row, min_cout",
        ),
        (
            forbid_rule(release=["category"]),
            "rule 'no-trainees': unknown keys release",
        ),
        (
            permit_rule(datasets=["*"]),
            "rule 'partner-records': a permit names its datasets explicitly, not \"*\"",
        ),
        (
            permit_rule(datasets="*"),
            "rule 'partner-records': a permit names its datasets explicitly, not \"*\"",
        ),
        (
            permit_rule(effect="allow"),
            'rule \'partner-records\': `effect` must be "permit" or "forbid"',
        ),
        (
            without(permit_rule(), "effect"),
            'rule \'partner-records\': `effect` must be "permit" or "forbid"',
        ),
        (
            permit_rule(match_fields="sha256"),
            "rule 'partner-records': `match_fields` must be a list of field names",
        ),
        (without(permit_rule(), "id"), "rule #1 needs an `id`"),
        (permit_rule(id="  "), "rule #1 needs an `id`"),
        (permit_rule(id=7), "rule #1 needs an `id`"),
    ],
    ids=[
        "unknown-dataset",
        "unknown-dataset-in-forbid",
        "unknown-match-field",
        "unknown-release-field",
        "field-missing-from-one-dataset",
        "unknown-purpose",
        "unknown-purpose-in-forbid",
        "unknown-operation",
        "unknown-group",
        "unknown-key",
        "unknown-keys-sorted",
        "obligations-on-a-forbid",
        "permit-any-dataset",
        "permit-any-dataset-as-string",
        "bad-effect",
        "missing-effect",
        "field-list-not-a-list",
        "missing-id",
        "blank-id",
        "id-not-a-string",
    ],
)
def test_a_bad_rule_fails_naming_the_rule_and_the_name(rule: dict[str, Any], message: str) -> None:
    _raises(document(permit_rule(id="fine"), rule), message.replace("#1", "#2"))


@pytest.mark.parametrize("key", SCOPE_KEYS)
def test_every_scope_key_is_required(key: str) -> None:
    _raises(
        document(without(permit_rule(), key)),
        f"rule 'partner-records': `{key}` is required (use [\"*\"] to mean any)",
    )


@pytest.mark.parametrize("key", SCOPE_KEYS)
@pytest.mark.parametrize("value", [[], "", [""], ["investigator", 3]], ids=repr)
def test_a_scope_list_must_hold_names(key: str, value: object) -> None:
    _raises(
        document(forbid_rule(**{key: value})),
        f"rule 'no-trainees': `{key}` must be a non-empty list of names",
    )


def test_duplicate_rule_ids_fail_naming_the_id() -> None:
    doc = document(permit_rule(id="twice"), forbid_rule(id="once"), forbid_rule(id="twice"))

    _raises(doc, "rule id 'twice' is used twice; rule ids must be unique")


@pytest.mark.parametrize("value", [-1, True, False, "5", 1.5])
def test_min_count_must_be_a_whole_number_of_zero_or_more(value: object) -> None:
    _raises(
        document(permit_rule(min_count=value)),
        "rule 'partner-records': `min_count` must be a whole number >= 0",
    )


@pytest.mark.parametrize("value", [0, -3, MAX_ROWS_CEILING + 1, True, "10", 10.0])
def test_max_rows_must_be_within_bounds(value: object) -> None:
    _raises(
        document(permit_rule(max_rows=value)),
        f"rule 'partner-records': `max_rows` must be between 1 and {MAX_ROWS_CEILING}",
    )


def test_the_row_bounds_themselves_are_allowed() -> None:
    loaded = parse(
        document(
            permit_rule(id="one", max_rows=1, min_count=0),
            permit_rule(
                id="most", operations=["count"], max_rows=MAX_ROWS_CEILING, min_count=10_000
            ),
        )
    )

    assert [r.max_rows for r in loaded.rules] == [1, MAX_ROWS_CEILING]


@pytest.mark.parametrize("version", [None, 2, 0, "1", True, 1.0], ids=repr)
def test_a_policy_needs_version_1(version: object) -> None:
    doc = document(permit_rule())
    if version is None:
        del doc["version"]
    else:
        doc["version"] = version

    _raises(doc, "policy needs `version = 1`")


@pytest.mark.parametrize("agency", [None, "", 5, ["testland"]], ids=repr)
def test_a_policy_needs_its_agency(agency: object) -> None:
    doc = document(permit_rule())
    if agency is None:
        del doc["agency"]
    else:
        doc["agency"] = agency

    _raises(doc, 'policy needs `agency = "<this node\'s agency id>"`')


def test_an_unknown_top_level_key_fails() -> None:
    # `[[rules]]` for `[[rule]]` would otherwise load a policy without rules.
    doc = {"version": 1, "agency": "testland", "rules": [permit_rule()]}

    _raises(doc, "unknown top-level keys: rules")


def test_rules_must_be_an_array_of_tables() -> None:
    _raises({"version": 1, "agency": "testland", "rule": permit_rule()}, "[[rule]] tables")
    _raises({"version": 1, "agency": "testland", "rule": ["oops"]}, "rule #1 is not a table")


@pytest.mark.parametrize(
    "groups",
    [{"eu": []}, {"eu": "genovia"}, {"eu": ["genovia", ""]}, {"eu": [1]}],
    ids=["empty", "string", "blank-member", "number"],
)
def test_a_group_must_be_a_non_empty_list_of_agencies(groups: dict[str, object]) -> None:
    _raises(document(groups=groups), "group 'eu' must be a non-empty list of agency ids")


def test_groups_must_be_a_table() -> None:
    _raises(document(groups=["eu"]), "[groups] maps a group name to a list of agency ids")


def test_invalid_toml_fails_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('version = 1\nagency = "testland\n', encoding="utf-8")

    with pytest.raises(PolicyError, match=re.escape(f"{path}: not valid TOML")):
        load_policy(path, CATALOG_V1)


def test_a_missing_policy_file_fails_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    with pytest.raises(PolicyError, match=re.escape(f"policy file {path} does not exist")):
        load_policy(path, CATALOG_V1)


def test_errors_from_a_file_name_the_file_and_the_rule(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text(
        'version = 1\nagency = "testland"\n\n[[rule]]\nid = "oops"\neffect = "forbid"\n'
        'agencies = ["*"]\nroles = ["*"]\npurposes = ["*"]\ndatasets = ["media"]\n'
        'operations = ["*"]\nrelease = ["category"]\n',
        encoding="utf-8",
    )

    with pytest.raises(PolicyError, match=re.escape(f"{path}: rule 'oops': unknown keys release")):
        load_policy(path, CATALOG_V1)


def test_min_count_on_a_rule_that_allows_records_is_refused() -> None:
    with pytest.raises(PolicyError, match="`min_count` applies to count and count_by"):
        parse(document(permit_rule(id="leaky", operations=["records", "count"], min_count=5)))


@pytest.mark.parametrize("reserved", ["default-deny", "evaluation-error", "dataset-not-offered"])
def test_reserved_rule_ids_are_refused(reserved: str) -> None:
    with pytest.raises(PolicyError, match=f"rule id '{reserved}' is reserved"):
        parse(document(permit_rule(id=reserved)))


@pytest.mark.parametrize("member", ["*", "group:other"])
def test_a_group_lists_agency_ids_only(member: str) -> None:
    doc = document(permit_rule(agencies=["group:all"]))
    doc["groups"] = {"all": ["genovia", member]}

    with pytest.raises(PolicyError, match="group 'all' lists agency ids only"):
        parse(doc)
