"""`liaison policy check | explain | test`, and `liaison query --dry-run`.

The commands run as a user runs them, in `python -m liaison` subprocesses;
the analysis and the case runner are also called directly, where a test pins
one finding or one message.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from liaison import client
from liaison.catalog import CATALOG_V1
from liaison.demo.run import investigator_token
from liaison.errors import CaseFileError
from policies import load_policy, parse_policy
from policies.analysis import Finding, Kind, NodeMapping, Severity, analyse, policy_errors
from policies.cases import cases_path_for, load_cases, parse_cases, run_cases
from policies.model import Policy, RateLimit, RateScope
from tests.conftest import Federation
from tests.support import REPO, Run, assert_one_line_error, liaison

DEMO = REPO / "policies" / "demo"
DEMO_AGENCIES = ("freedonia", "ruritania", "sylvania")
SHA = "9688e70d2e30e0377f325563d9a73c2130a628c833aab8a1b9edbde7d3b6c351"


def one_line_error(run: Run, *fragments: str) -> None:
    assert run.returncode == 1, run
    assert_one_line_error(run, *fragments)


HEADER = 'version = 1\nagency = "testland"\n'


def rule(rule_id: str, effect: str = "permit", **keys: Any) -> str:
    """One [[rule]] table; scope keys default to "any", datasets to media."""
    scope: dict[str, Any] = {
        "agencies": ["*"],
        "roles": ["*"],
        "purposes": ["*"],
        "datasets": ["media"],
        "operations": ["*"],
    }
    lines = ["[[rule]]", f'id = "{rule_id}"', f'effect = "{effect}"']
    for key, value in {**scope, **keys}.items():
        lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"


def policy_of(*rules: str, extra: str = "") -> Policy:
    return parse_policy(tomllib.loads(HEADER + extra + "\n".join(rules)), CATALOG_V1)


def write_policy(folder: Path, *rules: str, name: str = "policy.toml") -> Path:
    path = folder / name
    path.write_text(HEADER + "\n".join(rules))
    return path


def kinds(findings: tuple[Finding, ...], rule_id: str) -> list[Kind]:
    return [f.kind for f in findings if f.rule == rule_id]


# ---------------------------------------------------------------- check


@pytest.mark.parametrize("agency", DEMO_AGENCIES)
def test_check_demo_policies_are_clean_even_when_strict(agency: str) -> None:
    run = liaison("policy", "check", DEMO / f"{agency}.toml", "--strict", "--json")

    assert run.returncode == 0, run
    report = run.json()
    assert report["loads"] is True
    assert report["ok"] is True
    assert report["agency"] == agency
    assert (report["errors"], report["warnings"]) == (0, 0)
    assert {f["severity"] for f in report["findings"]} <= {"note"}


def test_check_human_report_names_the_policy_and_counts_its_rules() -> None:
    run = liaison("policy", "check", DEMO / "sylvania.toml")

    assert run.returncode == 0, run
    first = run.stdout.splitlines()[0]
    assert "policy of sylvania, 6 rules (3 permits, 2 forbids, 1 approve rule)" in first


def test_check_lists_every_catalog_error_not_only_the_first(tmp_path: Path) -> None:
    path = write_policy(
        tmp_path,
        rule("bad-dataset", datasets=["mediaa"], operations=["match"]),
        rule("bad-field", operations=["match"], match_fields=["sha265"]),
        rule("bad-purpose", purposes=["curiosity"], operations=["match"]),
        rule(
            "bad-transform",
            operations=["records"],
            release=["category"],
            transforms={"category": "blur"},
        ),
        rule("fine", operations=["match"], match_fields=["sha256"]),
        rule("fine", operations=["count"]),
    )

    run = liaison("policy", "check", path)
    report = liaison("policy", "check", path, "--json")

    assert run.returncode == 1, run
    assert "the node would refuse to load this policy" in run.stdout
    for name in ("'mediaa'", "'sha265'", "'curiosity'", "'blur'", "used twice"):
        assert name in run.stdout, name
    assert report.returncode == 1
    findings = report.json()["findings"]
    assert [(f["rule"], f["severity"], f["kind"]) for f in findings] == [
        ("bad-dataset", "error", "invalid"),
        ("bad-field", "error", "invalid"),
        ("bad-purpose", "error", "invalid"),
        ("bad-transform", "error", "invalid"),
        ("fine", "error", "invalid"),
    ]
    assert "unknown dataset 'mediaa'" in findings[0]["message"]
    assert "dataset 'media' has no field 'sha265'" in findings[1]["message"]
    assert "unknown purpose 'curiosity'" in findings[2]["message"]
    assert "unknown transform 'blur' for 'category'" in findings[3]["message"]


def test_policy_errors_agree_with_the_loader() -> None:
    good = tomllib.loads((DEMO / "ruritania.toml").read_text())
    assert policy_errors(good, CATALOG_V1) == ()

    no_version = {k: v for k, v in good.items() if k != "version"}
    (only,) = policy_errors(no_version, CATALOG_V1)
    assert only.message == "policy needs `version = 1`"

    unnamed = {**good, "rule": [*good["rule"], {"effect": "permit"}, "not a table"]}
    messages = [f.message for f in policy_errors(unnamed, CATALOG_V1)]
    n = len(good["rule"])
    assert messages == [f"rule #{n + 1} needs an `id`", f"rule #{n + 2} is not a table"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "does not exist"),
        ("version = 1\nagency = \n", "not valid TOML"),
    ],
)
def test_check_unreadable_policy_is_one_clear_error(
    tmp_path: Path, content: str | None, fragment: str
) -> None:
    path = tmp_path / "policy.toml"
    if content is not None:
        path.write_text(content)

    one_line_error(liaison("policy", "check", path), str(path), fragment)


def test_check_warnings_pass_unless_strict(tmp_path: Path) -> None:
    path = write_policy(tmp_path, rule("hit", operations=["match"]))

    relaxed = liaison("policy", "check", path)
    strict = liaison("policy", "check", path, "--strict", "--json")

    assert relaxed.returncode == 0, relaxed
    assert "1 warning" in relaxed.stdout
    assert "warning   hit" in relaxed.stdout
    assert strict.returncode == 1, strict
    assert strict.json()["ok"] is False
    assert strict.json()["findings"][0]["kind"] == "never-applies"


def test_rules_that_can_never_apply() -> None:
    policy = policy_of(
        rule("match-without-fields", operations=["match", "count"]),
        rule("records-without-release", operations=["records"], match_fields=["sha256"]),
        rule("count-by-without-release", operations=["count_by"], match_fields=["category"]),
        rule("odd-case-ref", operations=["count"], case_ref=" GEN-*"),
        rule("odd-legal-basis", "forbid", legal_bases=["art-8 "]),
        rule("fine", operations=["match", "count"], match_fields=["sha256"]),
    )

    findings = {f.rule: f for f in analyse(policy) if f.kind is Kind.NEVER_APPLIES}

    assert sorted(findings) == [
        "count-by-without-release",
        "match-without-fields",
        "odd-case-ref",
        "odd-legal-basis",
        "records-without-release",
    ]
    assert all(f.severity is Severity.WARNING for f in findings.values())
    assert findings["match-without-fields"].message.startswith("never permits match: ")
    assert "`match_fields`" in findings["match-without-fields"].message
    assert findings["records-without-release"].message.startswith("can never permit anything")
    assert "(add `release`)" in findings["count-by-without-release"].message
    assert "' GEN-*'" in findings["odd-case-ref"].message
    assert "forbids nothing" in findings["odd-legal-basis"].message


def test_permit_fully_shadowed_by_a_forbid() -> None:
    policy = policy_of(
        rule(
            "accounts-lookup",
            agencies=["a", "b"],
            roles=["investigator"],
            purposes=["csam-investigation"],
            datasets=["accounts"],
            operations=["match"],
            match_fields=["email"],
        ),
        rule("no-accounts", "forbid", datasets=["accounts"]),
    )

    (finding,) = analyse(policy)

    assert (finding.kind, finding.severity, finding.rule) == (
        Kind.SHADOWED,
        Severity.WARNING,
        "accounts-lookup",
    )
    assert "forbid no-accounts overrides it for every agency" in finding.message


def test_forbids_together_shadow_a_permit_neither_covers_alone() -> None:
    policy = policy_of(
        rule("stats", purposes=["statistics", "csam-investigation"], operations=["count"]),
        rule("no-stats", "forbid", purposes=["statistics"]),
        rule("no-csam-counts", "forbid", purposes=["csam-investigation"], operations=["count"]),
    )

    (finding,) = [f for f in analyse(policy) if f.rule == "stats"]

    assert finding.kind is Kind.SHADOWED
    assert "forbids no-csam-counts, no-stats override it" in finding.message


def test_partial_and_conditional_forbids_do_not_count_as_shadowing() -> None:
    policy = policy_of(
        rule(
            "lookup",
            agencies=["a", "b"],
            roles=["investigator"],
            operations=["match", "records"],
            match_fields=["sha256"],
            release=["category"],
        ),
        # Only part of the scope: agency b, records.
        rule("no-records-for-b", "forbid", agencies=["b"], operations=["records"]),
        # Other roles only: a requester with investigator and trainee is denied, one
        # with investigator alone is not.
        rule("no-trainees", "forbid", roles=["trainee"]),
        # Conditions: the forbid applies only to some requests.
        rule("secret-only", "forbid", attributes={"clearance": ["none"]}),
        rule("gen-cases", "forbid", case_ref="GEN-*"),
        rule("cited", "forbid", legal_bases=["art-8"]),
    )

    findings = analyse(policy)

    assert Kind.SHADOWED not in [f.kind for f in findings]
    (partial,) = [f for f in findings if f.kind is Kind.PARTLY_SHADOWED]
    assert partial.severity is Severity.NOTE
    assert partial.message == (
        "forbid no-records-for-b overrides it for agency b and operation records"
    )


def test_a_forbid_naming_one_agency_partly_overrides_a_permit_for_any_agency() -> None:
    policy = policy_of(
        rule("hit", operations=["match"], match_fields=["sha256"]),
        rule("not-for-elbonia", "forbid", agencies=["elbonia"], purposes=["statistics"]),
    )

    (finding,) = analyse(policy)

    assert finding.kind is Kind.PARTLY_SHADOWED
    assert finding.message == (
        "forbid not-for-elbonia overrides it for agency elbonia and purpose statistics"
    )


def test_a_forbid_on_fields_makes_granted_fields_unusable() -> None:
    policy = policy_of(
        rule(
            "accounts",
            datasets=["accounts"],
            purposes=["statistics"],
            operations=["count", "count_by"],
            match_fields=["ip", "platform"],
            release=["platform"],
        ),
        rule("no-ip", "forbid", datasets=["*"], purposes=["statistics"], fields=["ip"]),
    )

    (finding,) = analyse(policy)

    assert (finding.kind, finding.rule) == (Kind.FORBIDDEN_FIELD, "accounts")
    assert finding.message.startswith("grants ip, but forbid no-ip denies every query")


def test_policy_of_forbids_only_is_noted() -> None:
    (finding,) = analyse(policy_of(rule("no-accounts", "forbid", datasets=["accounts"])))

    assert (finding.kind, finding.severity) == (Kind.NO_PERMITS, Severity.NOTE)


def _case_lister(**more: object) -> Policy:
    return parse_policy(
        {
            "version": 1,
            "agency": "testland",
            "rule": [
                {
                    "id": "case-list",
                    "effect": "permit",
                    "agencies": ["*"],
                    "roles": ["*"],
                    "purposes": ["statistics"],
                    "datasets": ["cases"],
                    "operations": ["records"],
                    "release": ["offence", "status"],
                    "max_rows": 30,
                    **more,
                }
            ],
        },
        CATALOG_V1,
    )


def test_a_records_permit_that_releases_lists_is_a_warning() -> None:
    demo = load_policy(DEMO / "ruritania.toml", CATALOG_V1)
    lister = _case_lister(releases_lists=True)

    (finding,) = [f for f in analyse(lister) if f.kind is Kind.LISTING]

    assert [f.rule for f in analyse(demo) if f.kind is Kind.LISTING] == []
    assert (finding.rule, finding.severity) == ("case-list", Severity.WARNING)
    assert finding.message == (
        "releases lists (`releases_lists = true`): a requester in scope can have up to 30 "
        "records a query with no identifying field asked, offence, status each; remove "
        "`releases_lists` unless the agency means to hand out lists"
    )


def test_a_records_permit_with_no_identifying_match_field_never_answers_records() -> None:
    by_offence = _case_lister(match_fields=["offence"])

    findings = [f for f in analyse(by_offence) if f.rule == "case-list"]

    assert [(f.kind, f.severity) for f in findings] == [(Kind.NEVER_APPLIES, Severity.WARNING)]
    assert findings[0].message == (
        "can never permit anything: a records query must look up a field that identifies a "
        "record (case_ref), and the rule lets none be matched on (add an identifying field "
        "to `match_fields`, or `releases_lists = true` if the rule is meant to release lists)"
    )


def test_a_near_match_without_a_budget_of_its_own_is_a_warning() -> None:
    rule: dict[str, Any] = {
        "id": "pdq-hits",
        "effect": "permit",
        "agencies": ["*"],
        "roles": ["investigator"],
        "purposes": ["csam-investigation"],
        "datasets": ["media"],
        "operations": ["match"],
        "match_fields": ["sha256", "pdq"],
    }
    document = {"version": 1, "agency": "testland", "rule": [rule]}
    bare = parse_policy(document, CATALOG_V1)
    budgeted = parse_policy({**document, "rule": [{**rule, "near_budget": "30/hour"}]}, CATALOG_V1)

    (finding,) = [f for f in analyse(bare) if f.kind is Kind.NEAR_WITHOUT_BUDGET]

    assert finding.severity is Severity.WARNING
    assert finding.message == (
        "lets pdq be matched as near-duplicates but sets no `near_budget`: repeated near "
        "queries measure the distance to a stored hash, so the node applies its default of "
        '100 per 3600 s per investigator; set `near_budget` (e.g. "100/hour") to make the '
        "limit the policy's own"
    )
    assert [f for f in analyse(budgeted) if f.kind is Kind.NEAR_WITHOUT_BUDGET] == []
    assert budgeted.rules[0].near_budget == RateLimit(RateScope.INVESTIGATOR, 30, 3600)
    for path in sorted(DEMO.glob("*.toml")):
        if not path.name.endswith(".cases.toml"):
            policy = load_policy(path, CATALOG_V1)
            assert [f for f in analyse(policy) if f.kind is Kind.NEAR_WITHOUT_BUDGET] == []


def write_node_config(folder: Path, *, policy: str = "policy.toml", key: bool = False) -> Path:
    path = folder / "node.toml"
    path.write_text(
        f"""
[node]
id = "testland"
database_url = "sqlite:///agency.sqlite3"
policy = "{policy}"
signing_key = "node.key"
{'transform_key = "transform.key"' if key else ""}

[[trusted_gateway]]
id = "gw"
public_key = "gateway.pub"

[datasets.media]
table = "files"
[datasets.media.fields]
sha256 = "sha256"
category = "cat"

[datasets.accounts]
table = "accounts"
[datasets.accounts.fields]
email = "mail"
platform = "service"
handle = "nick"
"""
    )
    return path


def test_node_config_mapping_warnings(tmp_path: Path) -> None:
    path = write_policy(
        tmp_path,
        rule(
            "media",
            operations=["match", "records", "count_by"],
            match_fields=["sha256", "md5"],
            release=["category", "first_seen"],
            row_filters=[{"field": "shareable", "eq": "true"}],
        ),
        rule(
            "accounts",
            datasets=["accounts"],
            operations=["records"],
            match_fields=["email"],
            release=["handle"],
            transforms={"handle": "keyed-hash"},
        ),
        rule("cases", datasets=["cases"], operations=["count"]),
    )
    node = write_node_config(tmp_path)

    run = liaison("policy", "check", path, "--node-config", node, "--json")

    assert run.returncode == 0, run
    warnings = [
        (f["rule"], f["kind"], f["message"])
        for f in run.json()["findings"]
        if f["severity"] == "warning"
    ]
    assert [(r, k) for r, k, _ in warnings] == [
        ("media", "unenforceable-row-filter"),
        ("media", "unmapped-field"),
        ("media", "unmapped-field"),
        ("accounts", "missing-transform-key"),
        ("cases", "unmapped-dataset"),
    ]
    messages = [m for _, _, m in warnings]
    assert "row filter on shareable" in messages[0]
    assert "denies every query this rule would permit" in messages[0]
    assert messages[1].startswith("match field(s) md5 not mapped by node 'testland'")
    assert "released field(s) first_seen" in messages[2]
    assert "grouping by them fails" in messages[2]
    assert "refuses to start" in messages[3]
    assert "dataset-not-offered" in messages[4]
    assert liaison("policy", "check", path, "--node-config", node, "--strict").returncode == 1


def test_node_config_with_transform_key_and_full_mapping_is_clean(tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path,
        rule(
            "accounts",
            datasets=["accounts"],
            operations=["match"],
            match_fields=["email"],
            release=["handle"],
            transforms={"handle": "keyed-hash"},
        ),
    )
    config = write_node_config(tmp_path, key=True)
    from liaison.config import load_node_config

    node = NodeMapping.from_config(load_node_config(config, CATALOG_V1))

    assert analyse(load_policy(policy, CATALOG_V1), node) == ()


def test_node_config_for_another_policy_file_is_noted(tmp_path: Path) -> None:
    path = write_policy(tmp_path, rule("counts", operations=["count"]), name="draft.toml")
    node = write_node_config(tmp_path, policy="policy.toml")

    run = liaison("policy", "check", path, "--node-config", node)

    assert run.returncode == 0, run
    assert "the node config loads" in run.stdout
    assert "not this file" in run.stdout


def test_bad_node_config_is_one_clear_error(tmp_path: Path) -> None:
    path = write_policy(tmp_path, rule("counts", operations=["count"]))
    node = tmp_path / "node.toml"
    node.write_text('[node]\nid = "x"\n')

    one_line_error(liaison("policy", "check", path, "--node-config", node), "node.toml")


# ---------------------------------------------------------------- explain


def explain(*args: str | Path) -> Run:
    return liaison("policy", "explain", *args)


def test_explain_permit_shows_rule_obligations_and_fields() -> None:
    run = explain(
        DEMO / "ruritania.toml",
        "media",
        "--fields",
        "category,first_seen,shareable",
        "--where",
        f"sha256={SHA}",
        "--agency",
        "genovia",
        "--role",
        "investigator",
        "--attr",
        "clearance=secret",
        "--purpose",
        "csam-investigation",
        "--case-ref",
        "GEN-2026-0142",
    )

    assert run.returncode == 0, run
    out = run.stdout
    assert out.startswith("decision: PERMIT under partner-media-records\n")
    assert "genovia (roles investigator; attributes clearance=secret)" in out
    assert "partner-media-records  permit  chosen" in out
    assert "  - transform first_seen: month" in out
    assert "  - only rows where shareable eq true" in out
    assert "released: category, first_seen" in out
    assert "withheld: shareable" in out
    # Every other rule is accounted for, with why it is out of scope.
    assert "partner-hash-match      permit   covers match, not records" in out
    assert "no-account-statistics   forbid   about accounts, not media" in out
    assert (
        "partner-follow-up       approve  an approve rule: it bounds follow-up releases and "
        "decides no query"
    ) in out


def test_explain_denial_names_the_forbid_and_the_permits_it_overrides() -> None:
    run = explain(
        DEMO / "sylvania.toml",
        "accounts",
        "--match",
        "--where",
        "email=suspect@mail.example",
        "--agency",
        "genovia",
        "--role",
        "investigator",
        "--role",
        "trainee",
        "--purpose",
        "offender-identification",
        "--case-ref",
        "GEN-1",
        "--json",
    )

    assert run.returncode == 0, run
    report = run.json()
    assert report["decision"] == "deny"
    assert report["rules"] == ["no-trainees"]
    assert report["reason"] == "Trainee accounts get no answers from this node."
    assert report["request"]["roles"] == ["investigator", "trainee"]
    considered = {c["rule"]: c["outcome"] for c in report["considered"]}
    assert considered == {
        "no-trainees": "applies",
        "account-lookup": "in scope, not reached: a forbid applies",
    }
    out_of_scope = {o["rule"]: o["why_not"] for o in report["out_of_scope"]}
    assert out_of_scope["no-ip-statistics"] == (
        "purpose offender-identification is not one of statistics"
    )
    assert report["obligations"] == []


def test_explain_near_miss_says_which_condition_failed() -> None:
    common: list[str | Path] = [
        DEMO / "freedonia.toml",
        "media",
        "--fields",
        "category",
        "--where",
        f"sha256={SHA}",
        "--agency",
        "genovia",
        "--role",
        "investigator",
        "--purpose",
        "csam-investigation",
    ]

    missed = explain(*common, "--case-ref", "INT-2026-9")
    report = explain(*common, "--case-ref", "INT-2026-9", "--json").json()

    assert missed.returncode == 0, missed
    assert missed.stdout.startswith("decision: DENY by default-deny\n")
    assert (
        "close-partner-metadata  permit  does not apply (case reference does not match 'GEN-*')"
    ) in missed.stdout
    assert "default-deny            -       no applicable permit" in missed.stdout
    assert report["considered"][-1] == {
        "rule": "default-deny",
        "effect": None,
        "outcome": "no applicable permit",
    }
    assert "close-partner-metadata: case reference does not match 'GEN-*'" in report["reason"]
    assert {o["rule"]: o["why_not"] for o in report["out_of_scope"]}["hash-hit-no-hit"] == (
        "covers match, not records"
    )


def test_explain_legal_basis_and_attributes_change_the_decision() -> None:
    base: list[str | Path] = [
        DEMO / "ruritania.toml",
        "accounts",
        "--fields",
        "platform,ip",
        "--where",
        "email=suspect@mail.example",
        "--agency",
        "sylvania",
        "--role",
        "investigator",
        "--purpose",
        "offender-identification",
        "--case-ref",
        "SYL-1",
        "--json",
    ]

    without = explain(*base).json()
    cited = explain(*base, "--legal-basis", "budapest-convention-art-29").json()

    assert without["decision"] == "deny"
    assert "legal basis none is not one of" in without["reason"]
    assert cited["decision"] == "permit"
    assert (cited["released"], cited["withheld"]) == (["platform"], ["ip"])
    assert cited["request"]["legal_basis"] == "budapest-convention-art-29"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--purpose", "curiosity"], ["unknown purpose 'curiosity'"]),
        (["--attr", "clearance"], ["--attr 'clearance'", "NAME=VALUE"]),
        (["--where", "sha256=abc"], ["'sha256'", "64 hexadecimal digits"]),
        (["--where", "colour=red"], ["no field 'colour'"]),
    ],
)
def test_explain_bad_input_is_one_clear_error(args: list[str], fragments: list[str]) -> None:
    defaults = {"--purpose": "statistics", "--where": f"sha256={SHA}"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        defaults[flag] = value
    extra = [x for pair in defaults.items() for x in pair if pair[0] != "--attr"]
    if "--attr" in defaults:
        extra += ["--attr", defaults["--attr"]]
    run = explain(
        DEMO / "sylvania.toml",
        "media",
        "--match",
        "--agency",
        "genovia",
        "--role",
        "investigator",
        "--case-ref",
        "GEN-1",
        *extra,
    )

    one_line_error(run, *fragments)


# ---------------------------------------------------------------- test


@pytest.mark.parametrize("agency", DEMO_AGENCIES)
def test_demo_policy_cases_pass(agency: str) -> None:
    policy = load_policy(DEMO / f"{agency}.toml", CATALOG_V1)
    cases = load_cases(cases_path_for(DEMO / f"{agency}.toml"), CATALOG_V1)

    results = run_cases(policy, cases)

    assert len(results) >= 8
    assert [r.case.name for r in results if not r.passed] == []
    decisions = {r.decision.permitted for r in results}
    assert decisions == {True, False}, "each demo case file pins permits and denials"


def test_policy_test_command_finds_the_cases_beside_the_policy() -> None:
    run = liaison("policy", "test", DEMO / "ruritania.toml")
    report = liaison("policy", "test", DEMO / "freedonia.toml", "--json")

    assert run.returncode == 0, run
    assert run.stdout.splitlines()[-1] == "13 cases: 13 passed, 0 failed"
    assert "pass    a partner learns whether we hold a file" in run.stdout
    assert report.returncode == 0, report
    assert report.json()["failed"] == 0
    assert report.json()["cases"].endswith("freedonia.cases.toml")


FAILING_CASES = f"""
[defaults]
requester = {{ agency = "genovia", roles = ["investigator"] }}
purpose = "csam-investigation"
case_ref = "GEN-1"

[[case]]
name = "hit/no-hit is open"
query = {{ dataset = "media", operation = "match", where = ["sha256={SHA}"] }}
expect = "permit"

[[case]]
name = "lawyer expects records for genovia"
expect = "permit"
[case.query]
dataset = "media"
operation = "records"
where = ["sha256={SHA}"]
fields = ["category"]

[[case]]
name = "lawyer expects case refs to be released"
expect = "permit"
rule = "partner-hash-match"
released = ["category", "case_ref", "first_seen"]
[case.requester]
agency = "genovia"
roles = ["investigator"]
attributes = {{ clearance = "secret" }}
[case.query]
dataset = "media"
operation = "records"
predicates = [{{ field = "sha256", in = ["{SHA}"] }}]
fields = ["category", "case_ref"]
"""


def test_failing_cases_are_reported_with_the_difference(tmp_path: Path) -> None:
    cases = tmp_path / "intent.toml"
    cases.write_text(FAILING_CASES)

    with pytest.raises(CaseFileError, match="which the query does not request"):
        load_cases(cases, CATALOG_V1)
    cases.write_text(FAILING_CASES.replace(', "first_seen"]', "]"))
    run = liaison("policy", "test", DEMO / "ruritania.toml", cases)
    report = liaison("policy", "test", DEMO / "ruritania.toml", cases, "--json")

    assert run.returncode == 1, run
    assert run.stdout.splitlines()[-1] == "3 cases: 1 passed, 2 failed"
    assert "FAIL    lawyer expects records for genovia" in run.stdout
    assert (
        "  - expected permit, got deny by default-deny (no rule permits genovia (investigator) "
        "to records media for csam-investigation (partner-media-records: requester has no "
        "'clearance' attribute))"
    ) in run.stdout
    assert "  - expected rule partner-hash-match, got partner-media-records" in run.stdout
    assert "  - released: expected [category, case_ref], got [category, case_ref]" not in (
        run.stdout
    )
    assert report.returncode == 1
    results = {r["name"]: r for r in report.json()["results"]}
    assert results["hit/no-hit is open"]["passed"] is True
    assert results["lawyer expects records for genovia"]["decision"] == "deny"


def test_released_and_withheld_differences(tmp_path: Path) -> None:
    document = tomllib.loads(
        """
[[case]]
name = "case refs stay here"
requester = { agency = "genovia", roles = ["investigator"] }
purpose = "csam-investigation"
case_ref = "GEN-1"
expect = "permit"
released = ["category", "case_ref"]
withheld = []
obligations_include = ["at most 50 rows"]
reason_includes = "nothing withheld"
[case.query]
dataset = "media"
operation = "records"
any = { md5 = ["9dd4e461268c8034f5c8564e155c67a6"] }
fields = ["category", "case_ref"]
"""
    )
    policy = load_policy(DEMO / "freedonia.toml", CATALOG_V1)

    (result,) = run_cases(policy, parse_cases(document, CATALOG_V1))

    assert result.failures == (
        "released: expected [category, case_ref], got [category]",
        "withheld: expected nothing, got [case_ref]",
        "no obligation includes 'at most 50 rows' (obligations: release only: category; "
        "withhold: case_ref; only rows where shareable eq true; at most 1000 rows)",
        "reason does not include 'nothing withheld' (reason: 'withheld: case_ref')",
    )


CASE = """
[[case]]
name = "the case"
requester = { agency = "genovia", roles = ["investigator"] }
purpose = "csam-investigation"
case_ref = "GEN-1"
query = { dataset = "media", operation = "count" }
expect = "deny"
"""


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('expect = "deny"', ""), "case 'the case': `expect` is required"),
        (('expect = "deny"', 'expect = "allow"'), '"permit" or "deny"'),
        (('case_ref = "GEN-1"\n', ""), "case 'the case': `case_ref` is required"),
        (('purpose = "csam-investigation"', 'purpose = "fun"'), "unknown purpose 'fun'"),
        (('"count" }', '"count", colour = "red" }'), "query: unknown keys colour"),
        (('"count" }', '"count", where = ["colour=red"] }'), "has no field 'colour'"),
        (('"count" }', '"count", where = ["sha256"] }'), "write FIELD=VALUE"),
        (('"count" }', '"count", where = ["md5=xyz"] }'), "32 hexadecimal digits"),
        (('operation = "count"', 'operation = "list"'), "one of match, count, count_by"),
        (('roles = ["investigator"]', 'roles = "investigator", rank = 3'), "unknown keys rank"),
        (('expect = "deny"', 'expect = "deny"\nreleased = []'), "`released` applies to permits"),
        (('expect = "deny"', 'expect = "deny"\nverdict = 1'), "unknown keys verdict"),
        (('name = "the case"', 'name = ""'), "case #1 needs a `name"),
    ],
)
def test_malformed_cases_name_the_case(edit: tuple[str, str], message: str) -> None:
    old, new = edit
    assert old in CASE
    document = tomllib.loads(CASE.replace(old, new, 1))

    with pytest.raises(CaseFileError) as raised:
        parse_cases(document, CATALOG_V1)

    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, "write at least one case as a [[case]] table"),
        ({"cases": []}, "unknown top-level keys cases"),
        ({"defaults": {"expect": "permit"}, "case": [{}]}, "[defaults] takes"),
    ],
)
def test_malformed_case_files(document: dict[str, Any], message: str) -> None:
    with pytest.raises(CaseFileError) as raised:
        parse_cases(document, CATALOG_V1)

    assert message in str(raised.value)


def test_duplicate_case_names_are_refused() -> None:
    document = tomllib.loads(CASE + CASE)

    with pytest.raises(CaseFileError, match="case 'the case' is named twice"):
        parse_cases(document, CATALOG_V1)


def test_malformed_case_file_is_one_clear_error(tmp_path: Path) -> None:
    cases = tmp_path / "broken.cases.toml"
    cases.write_text(CASE.replace('expect = "deny"', 'expect = "maybe"'))
    not_toml = tmp_path / "not.cases.toml"
    not_toml.write_text("[[case]\n")

    one_line_error(
        liaison("policy", "test", DEMO / "sylvania.toml", cases),
        str(cases),
        "case 'the case'",
        '"permit" or "deny"',
    )
    one_line_error(liaison("policy", "test", DEMO / "sylvania.toml", not_toml), "not valid TOML")


def test_missing_default_cases_file_says_where_it_looked(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, rule("counts", operations=["count"]), name="agency.toml")

    run = liaison("policy", "test", policy)

    one_line_error(run, str(tmp_path / "agency.cases.toml"), "beside the policy")


# ---------------------------------------------------------------- query --dry-run


def test_query_dry_run_shows_each_node_decision(federation: Federation) -> None:
    if not hasattr(client, "dry_run"):
        pytest.skip("liaison.client.dry_run is not there yet (being written separately)")
    token = investigator_token(federation.root)
    common = [
        "query",
        "accounts",
        "--fields",
        "platform,handle",
        "--where",
        "email=suspect@mail.example",
        "--purpose",
        "offender-identification",
        "--case-ref",
        "GEN-2026-0142",
        "--gateway",
        federation.gateway.address,
        "--token",
        token,
        "--dry-run",
    ]

    table = liaison(*common, "--legal-basis", "eu-2016-680-art-8", cwd=federation.root)
    uncited = liaison(*common, "--json", cwd=federation.root)

    assert table.returncode == 0, table
    assert table.stdout.startswith("dry run (no data read, nothing released)")
    rows = {line.split()[0]: line for line in table.stdout.splitlines()[4:] if line.strip()}
    assert "would permit" in rows["ruritania"]
    assert "partner-account-lookup" in rows["ruritania"]
    assert "would deny" in rows["freedonia"]
    assert "no-account-data-abroad" in rows["freedonia"]
    assert uncited.returncode == 0, uncited
    report = uncited.json()
    assert report["dry_run"] is True
    decisions = {r["node_id"]: r["decision"] for r in report["results"]}
    assert decisions["ruritania"]["decision"] == "deny"
    assert "legal basis none" in decisions["ruritania"]["reason"]
    assert decisions["sylvania"]["decision"] == "permit"


def test_a_transformed_field_that_is_also_matchable_is_warned_about(tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path,
        rule(
            "stats",
            operations=["count_by"],
            match_fields=["category"],
            release=["category"],
            transforms={"category": "redact"},
        ),
    )

    findings = analyse(load_policy(policy, CATALOG_V1))

    assert [(f.severity, f.kind, f.rule) for f in findings] == [
        (Severity.WARNING, Kind.MATCHABLE_TRANSFORM, "stats")
    ]
    assert "predicates on it" in findings[0].message
