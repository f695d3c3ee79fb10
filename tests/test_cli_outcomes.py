"""`liaison query` as scripts use it: exit codes, the --json schema, --hashes, token attributes.

The command runs as a real process of its own (forked from an interpreter that
imported the command line once: ``tests.conftest.warm_liaison``) against a
real federation on loopback:
a gateway and three nodes serving SQLite databases written here, each with a
policy of its own, plus two addresses where no node answers:

* alpha holds media (hashes and categories) and cases, and answers genovia;
* beta holds media but its policy answers only another agency: it denies;
* gamma offers no media at all: the gateway leaves it out of media queries;
* delta is a closed port: unreachable;
* epsilon is a socket that accepts connections and never speaks: it times out.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from liaison.cli.exits import ExitCode
from liaison.demo.data import INVESTIGATOR_AGENCY
from liaison.demo.federation import write_dev_idp
from liaison.patterns import write_series
from tests.conftest import warm_liaison
from tests.support import (
    REPO,
    Run,
    assert_one_line_error,
    gateway_over,
    investigator_token,
    start_local_node,
    write_local_node,
)

CASE_REF = "GEN-CLI-1"
PURPOSE = "csam-investigation"
MEDIA_ROWS = 40
HELD = 3  # of the 2,500 hashes asked in a batch, alpha holds this many
BATCH = 2_500
SCHEMA_PATH = REPO / "liaison" / "cli" / "query-output.schema.json"

ALPHA_POLICY = """\
version = 1
agency = "alpha"

[[rule]]
id = "media-lookups"
effect = "permit"
agencies = ["genovia"]
roles = ["investigator"]
purposes = ["csam-investigation"]
datasets = ["media"]
operations = ["match", "records", "count", "count_by"]
match_fields = ["sha256", "md5", "category", "pdq"]
release = ["sha256", "md5", "category"]
max_rows = 10000

[[rule]]
id = "cleared-cases"
effect = "permit"
agencies = ["genovia"]
roles = ["investigator"]
purposes = ["csam-investigation"]
datasets = ["cases"]
operations = ["records"]
attributes = { clearance = ["secret"] }
match_fields = ["case_ref"]
release = ["case_ref", "offence"]
max_rows = 10
"""

OTHERS_ONLY_POLICY = """\
version = 1
agency = "{node}"

[[rule]]
id = "ruritania-only"
effect = "permit"
agencies = ["ruritania"]
roles = ["investigator"]
purposes = ["csam-investigation"]
datasets = ["{dataset}"]
operations = ["match"]
match_fields = ["{field}"]
"""

META = sa.MetaData()
MEDIA = sa.Table(
    "register",
    META,
    sa.Column("rid", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("sha", sa.String(64), nullable=False),
    sa.Column("md5", sa.String(32), nullable=False),
    sa.Column("cat", sa.String(8), nullable=False),
    sa.Column("pdq", sa.String(64), nullable=False),
)
CASES = sa.Table(
    "dossiers",
    META,
    sa.Column("ref", sa.String(32), primary_key=True),
    sa.Column("offence", sa.String(32), nullable=False),
)
MEDIA_MAP = ("register", {"sha256": "sha", "md5": "md5", "category": "cat", "pdq": "pdq"})
CASES_MAP = ("dossiers", {"case_ref": "ref", "offence": "offence"})


def sha_of(i: int) -> str:
    return hashlib.sha256(f"cli file {i}".encode()).hexdigest()


def pdq_of(i: int) -> str:
    return hashlib.sha256(f"cli pdq {i}".encode()).hexdigest()


def md5_of(i: int) -> str:
    return hashlib.md5(f"cli file {i}".encode(), usedforsecurity=False).hexdigest()


def fill(url: str) -> None:
    engine = sa.create_engine(url)
    META.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            MEDIA.insert(),
            [
                {
                    "rid": i,
                    "sha": sha_of(i),
                    "md5": md5_of(i),
                    "cat": "AB"[i % 2],
                    "pdq": pdq_of(i),
                }
                for i in range(MEDIA_ROWS)
            ],
        )
        conn.execute(CASES.insert(), [{"ref": "ALPHA-1", "offence": "distribution"}])
    engine.dispose()


# --- a strict validator for the subset of JSON Schema the output schema uses ---------------
#
# jsonschema is not a dependency; this checks exactly the keywords the schema
# file uses, and refuses any other keyword, so the schema cannot silently use
# one this validator ignores.

ANNOTATIONS = {"$schema", "$id", "title", "description", "$defs"}
TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


class SchemaError(AssertionError):
    pass


def validate(doc: Any, schema: Mapping[str, Any], root: Mapping[str, Any], at: str = "$") -> None:
    unknown = (
        set(schema)
        - ANNOTATIONS
        - {
            "type",
            "properties",
            "required",
            "additionalProperties",
            "items",
            "enum",
            "const",
            "anyOf",
            "oneOf",
            "$ref",
            "pattern",
            "minimum",
            "maximum",
        }
    )
    if unknown:
        raise SchemaError(f"schema keyword(s) {sorted(unknown)} not supported by this validator")
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/$defs/"), ref
        validate(doc, root["$defs"][ref.removeprefix("#/$defs/")], root, at)
    if "anyOf" in schema or "oneOf" in schema:
        options = schema.get("anyOf") or schema["oneOf"]
        passed = 0
        for option in options:
            try:
                validate(doc, option, root, at)
            except SchemaError:
                continue
            passed += 1
        if passed == 0 or ("oneOf" in schema and passed != 1):
            raise SchemaError(f"{at}: {passed} of the alternatives match {doc!r:.200}")
    if "const" in schema and (doc != schema["const"] or type(doc) is not type(schema["const"])):
        raise SchemaError(f"{at}: {doc!r} is not {schema['const']!r}")
    if "enum" in schema and doc not in schema["enum"]:
        raise SchemaError(f"{at}: {doc!r} not one of {schema['enum']}")
    kind = schema.get("type")
    if kind is not None:
        if kind == "integer":
            ok = isinstance(doc, int) and not isinstance(doc, bool)
        elif kind == "number":
            ok = isinstance(doc, int | float) and not isinstance(doc, bool)
        else:
            ok = isinstance(doc, TYPES[kind])
        if not ok:
            raise SchemaError(f"{at}: {doc!r:.100} is not of type {kind}")
    if "minimum" in schema and doc < schema["minimum"]:
        raise SchemaError(f"{at}: {doc} < {schema['minimum']}")
    if "maximum" in schema and doc > schema["maximum"]:
        raise SchemaError(f"{at}: {doc} > {schema['maximum']}")
    if "pattern" in schema and not re.search(schema["pattern"], doc):
        raise SchemaError(f"{at}: {doc!r} does not match {schema['pattern']}")
    if isinstance(doc, dict) and kind == "object":
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in doc:
                raise SchemaError(f"{at}: key {key!r} missing")
        extra = schema.get("additionalProperties", True)
        for key, value in doc.items():
            if key in props:
                validate(value, props[key], root, f"{at}.{key}")
            elif extra is False:
                raise SchemaError(f"{at}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                validate(value, extra, root, f"{at}.{key}")
    if isinstance(doc, list) and "items" in schema:
        for i, item in enumerate(doc):
            validate(item, schema["items"], root, f"{at}[{i}]")


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return loaded


def conforms(doc: Any, schema: dict[str, Any]) -> None:
    validate(doc, schema, schema)


# --- the federation -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fed:
    root: Path
    gateway: str
    token_file: Path
    closed: str  # a loopback address where nothing listens

    def query(self, *args: str | Path, nodes: str, json_out: bool = True) -> Run:
        return warm_liaison(
            "query",
            "--gateway",
            self.gateway,
            "--token-file",
            self.token_file,
            "--purpose",
            PURPOSE,
            "--case-ref",
            CASE_REF,
            "--nodes",
            nodes,
            *(["--json"] if json_out else []),
            *args,
            cwd=self.root,
        )


def closed_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    root = tmp_path_factory.mktemp("cli-outcomes") / "federation"
    write_dev_idp(root, INVESTIGATOR_AGENCY)
    configs = {
        "alpha": write_local_node(
            root,
            "alpha",
            database_url=f"sqlite:///{root / 'alpha.sqlite3'}",
            mapping={"media": MEDIA_MAP, "cases": CASES_MAP},
            policy_text=ALPHA_POLICY,
        ),
        "beta": write_local_node(
            root,
            "beta",
            database_url=f"sqlite:///{root / 'beta.sqlite3'}",
            mapping={"media": MEDIA_MAP},
            policy_text=OTHERS_ONLY_POLICY.format(node="beta", dataset="media", field="sha256"),
        ),
        "gamma": write_local_node(
            root,
            "gamma",
            database_url=f"sqlite:///{root / 'gamma.sqlite3'}",
            mapping={"cases": CASES_MAP},
            policy_text=OTHERS_ONLY_POLICY.format(node="gamma", dataset="cases", field="case_ref"),
        ),
    }
    for silent in ("delta", "epsilon"):  # keys and configs, never served
        write_local_node(
            root,
            silent,
            database_url=f"sqlite:///{root / f'{silent}.sqlite3'}",
            mapping={"media": MEDIA_MAP},
            policy_text=OTHERS_ONLY_POLICY.format(node=silent, dataset="media", field="sha256"),
        )
    for node in configs:
        fill(f"sqlite:///{root / f'{node}.sqlite3'}")
    with ExitStack() as stack, socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(16)  # connections complete in the kernel; nothing is ever said
        addresses = {n: start_local_node(stack, c).address for n, c in configs.items()}
        addresses["delta"] = closed_address()
        addresses["epsilon"] = f"127.0.0.1:{mute.getsockname()[1]}"
        gateway = stack.enter_context(gateway_over(root, addresses))
        token_file = root / "investigator.jwt"
        token_file.write_text(investigator_token(root) + "\n")
        yield Fed(root, gateway, token_file, closed_address())


def by_node(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["node_id"]: r for r in doc["results"]}


def match_held(*more: str) -> list[str]:
    return ["media", "--match", "--where", f"sha256={sha_of(1)}", *more]


# --- exit codes -------------------------------------------------------------------------------


def test_every_asked_agency_answered_exits_0_and_not_asked_is_no_failure(
    fed: Fed, schema: dict[str, Any]
) -> None:
    run = fed.query(*match_held(), nodes="alpha,gamma")

    assert run.returncode == ExitCode.OK, run.stderr
    doc = run.json()
    conforms(doc, schema)
    results = by_node(doc)
    assert results["alpha"]["status"] == "answered"
    assert results["alpha"]["answer"]["hit"] is True
    assert results["gamma"]["status"] == "not asked"
    assert results["gamma"]["answer"] is None
    assert doc["agencies"] == {"asked": 1, "answered": 1, "not_answered": 0, "not_asked": 1}
    # No node keys given: nothing is checked, and every result says so.
    assert {r["verification"]["verdict"] for r in doc["results"]} == {"not checked"}


def test_a_denial_exits_3_with_the_other_answers(fed: Fed, schema: dict[str, Any]) -> None:
    run = fed.query(*match_held(), nodes="alpha,beta")

    assert run.returncode == ExitCode.SOME_NOT_ANSWERED, run.stderr
    doc = run.json()
    conforms(doc, schema)
    beta = by_node(doc)["beta"]
    assert beta["status"] == "denied"
    assert beta["answer"]["decision"]["permitted"] is False
    # A denial says nothing of a hit: null, never false.
    assert beta["answer"]["hit"] is None
    assert by_node(doc)["alpha"]["answer"]["hit"] is True


def test_an_unreachable_node_exits_3(fed: Fed, schema: dict[str, Any]) -> None:
    run = fed.query(*match_held(), nodes="alpha,delta")

    assert run.returncode == ExitCode.SOME_NOT_ANSWERED, run.stderr
    doc = run.json()
    conforms(doc, schema)
    delta = by_node(doc)["delta"]
    assert delta["status"] == "unreachable"
    assert delta["answer"] is None
    assert delta["answer_digest"] is None


def test_a_node_that_never_answers_times_out_and_exits_3(fed: Fed, schema: dict[str, Any]) -> None:
    run = fed.query(*match_held("--deadline-ms", "1500"), nodes="alpha,epsilon")

    assert run.returncode == ExitCode.SOME_NOT_ANSWERED, run.stderr
    doc = run.json()
    conforms(doc, schema)
    assert by_node(doc)["epsilon"]["status"] == "timed out"
    assert by_node(doc)["alpha"]["status"] == "answered"


def test_no_agency_answering_exits_4(fed: Fed, schema: dict[str, Any]) -> None:
    run = fed.query(*match_held(), nodes="beta,delta")

    assert run.returncode == ExitCode.NONE_ANSWERED, run.stderr
    conforms(run.json(), schema)
    assert run.json()["agencies"]["answered"] == 0


def test_a_query_no_agency_offers_is_refused_by_the_gateway_in_one_line(fed: Fed) -> None:
    # gamma offers no media: an honest gateway asks nobody and refuses the
    # query (exit 1, nothing was run). A result that asks nobody is exit 4
    # (tests/test_cli_verify.py, from a gateway that returns one anyway).
    run = fed.query(*match_held(), nodes="gamma", json_out=False)

    assert_one_line_error(run, "no node asked offers dataset 'media'", "gamma")
    assert run.returncode == ExitCode.ERROR


def test_the_table_exits_as_the_json_does(fed: Fed) -> None:
    run = fed.query(*match_held(), nodes="alpha,beta", json_out=False)

    assert run.returncode == ExitCode.SOME_NOT_ANSWERED, run.stderr
    assert "denied" in run.stdout
    assert "HIT" in run.stdout


def test_a_refused_token_exits_1(fed: Fed) -> None:
    bad = fed.root / "forged.jwt"
    bad.write_text("not-a-jwt\n")

    run = warm_liaison(
        "query",
        "--gateway",
        fed.gateway,
        "--token-file",
        bad,
        *match_held(),
        "--purpose",
        PURPOSE,
        "--case-ref",
        CASE_REF,
        cwd=fed.root,
    )

    assert run.returncode == ExitCode.ERROR
    assert_one_line_error(run, "token")


def test_dry_run_exits_3_when_a_policy_cannot_be_had(fed: Fed, schema: dict[str, Any]) -> None:
    run = fed.query(*match_held("--dry-run"), nodes="alpha,beta,delta")

    assert run.returncode == ExitCode.SOME_NOT_ANSWERED, run.stderr
    doc = run.json()
    conforms(doc, schema)
    decisions = {r["node_id"]: r["decision"] for r in doc["results"]}
    assert decisions["alpha"]["permitted"] is True
    assert decisions["beta"]["permitted"] is False  # a policy that would deny is an answer
    assert decisions["delta"] is None


def test_help_lists_every_exit_code(tmp_path: Path) -> None:
    run = warm_liaison("query", "--help", cwd=tmp_path)

    assert run.returncode == 0
    epilog = run.stdout.split("exit status:", 1)[1]
    for code in ExitCode:
        assert re.search(rf"^  {code.value}  \S", epilog, re.MULTILINE), code


# --- --json: stable keys, one schema ---------------------------------------------------------

ANSWER_KEYS = {
    "match": {"hit"},
    "count": {"count"},
    "count_by": {"buckets", "buckets_suppressed", "bucket_minimum"},
    "records": {"fields", "rows", "withheld_fields", "truncated"},
}
ALL_KINDS = set().union(*ANSWER_KEYS.values())


@pytest.mark.parametrize(
    ("name", "args", "operation"),
    [
        ("match hit", ["--match", "--where", f"sha256={sha_of(2)}"], "match"),
        ("match no hit", ["--match", "--where", f"sha256={'0' * 64}"], "match"),
        (
            "records",
            ["--fields", "sha256,category", "--any", f"sha256={sha_of(0)},{sha_of(3)}"],
            "records",
        ),
        ("records none", ["--fields", "category", "--where", f"md5={'0' * 32}"], "records"),
        ("count", ["--count", "--where", "category=A"], "count"),
        ("count_by", ["--count-by", "category", "--any", "category=A,B"], "count_by"),
        ("count_by empty", ["--count-by", "category", "--where", f"sha256={'0' * 64}"], "count_by"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_every_answer_kind_has_every_key(
    fed: Fed, schema: dict[str, Any], name: str, args: list[str], operation: str
) -> None:
    # Verified with the nodes' keys (as `liaison init` writes them): every kind
    # of answer, and of denial, is what its node signed.
    run = fed.query("media", *args, "--node-keys", fed.root, nodes="alpha,beta,gamma,delta")

    assert run.returncode == ExitCode.SOME_NOT_ANSWERED, run.stderr
    doc = run.json()
    conforms(doc, schema)
    verdicts = {r["node_id"]: r["verification"]["verdict"] for r in doc["results"]}
    assert verdicts == {
        "alpha": "verified",
        "beta": "verified",
        "gamma": "not answered",
        "delta": "not answered",
    }, run.stderr
    assert doc["verification"]["verdict"] == "verified"
    assert doc["kind"] == "search"
    assert doc["query"]["operation"] == operation
    results = by_node(doc)
    assert [results[n]["status"] for n in ("alpha", "beta", "gamma", "delta")] == [
        "answered",
        "denied",
        "not asked",
        "unreachable",
    ]
    answer = results["alpha"]["answer"]
    # Keys of this operation carry values; every other kind's keys are present and null.
    assert all(answer[k] is not None for k in ANSWER_KEYS[operation]), answer
    assert all(answer[k] is None for k in ALL_KINDS - ANSWER_KEYS[operation]), answer
    denied = results["beta"]["answer"]
    assert all(denied[k] is None for k in ALL_KINDS)
    if name == "match hit":
        assert answer["hit"] is True
    if name == "match no hit":
        assert answer["hit"] is False
    if name == "records":
        assert sorted(answer["rows"]) == sorted([[sha_of(0), "A"], [sha_of(3), "B"]])
    if name == "records none":
        assert answer["rows"] == []
    if name == "count":
        assert answer["count"]["value"] == MEDIA_ROWS // 2
    if name == "count_by":
        assert {b["key"]: b["count"] for b in answer["buckets"]} == {
            "A": MEDIA_ROWS // 2,
            "B": MEDIA_ROWS // 2,
        }
    if name == "count_by empty":
        assert answer["buckets"] == []


def test_the_validator_is_strict(schema: dict[str, Any]) -> None:
    # Positive control: the checks used above reject what they must.
    good = {
        "kind": "search",
        "query_id": "q",
        "query": {
            "dataset": "media",
            "operation": "match",
            "predicates": [],
            "fields": [],
            "group_by": None,
            "limit": 0,
        },
        "agencies": {"asked": 0, "answered": 0, "not_answered": 0, "not_asked": 0},
        "verification": {"verdict": "not checked", "reason": "no node keys"},
        "results": [],
    }
    conforms(good, schema)
    for broken in (
        {k: v for k, v in good.items() if k != "agencies"},  # a key missing
        {**good, "extra": 1},  # a key not in the schema
        {**good, "query_id": None},  # a wrong type
        {**good, "kind": "other"},
        {**good, "verification": {"verdict": "trusted", "reason": None}},
    ):
        with pytest.raises(SchemaError):
            conforms(broken, schema)
    with pytest.raises(SchemaError, match="not supported"):
        validate(1, {"type": "integer", "multipleOf": 2}, {})


def test_schema_option_prints_the_published_schema(tmp_path: Path) -> None:
    run = warm_liaison("query", "--schema", cwd=tmp_path)

    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)
    assert printed == json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert printed["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    # The package ships it: loadable as a resource, not only from the source tree.
    from importlib import resources

    shipped = resources.files("liaison.cli").joinpath("query-output.schema.json")
    assert json.loads(shipped.read_text(encoding="utf-8")) == printed


# --- values checked here, before anything is sent ----------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["media", "--match", "--where", "sha256=xyz"], ("sha256", "hexadecimal")),
        (["media", "--match", "--where", f"sha256={'a' * 63}"], ("sha256", "64")),
        (["media", "--match", "--where", "colour=red"], ("colour",)),
        (["media", "--count-by", "nosuch"], ("nosuch",)),
        (["nosuch", "--match", "--where", "sha256=00"], ("nosuch",)),
        (["media", "--fields", "sha256,sha256", "--where", f"sha256={'a' * 64}"], ("once",)),
        (
            ["media", "--match", "--any", "sha256=" + ",".join([sha_of(0)] * 1001)],
            ("1000", "1001", "--hashes"),
        ),
        (["media", "--match", "--near", f"sha256={'a' * 64}"], ("near", "perceptual")),
        (["media", "--match"], ("predicate",)),
    ],
    ids=lambda v: " ".join(v)[:40] if isinstance(v, list) else None,
)
def test_bad_values_are_refused_here_before_any_connection(
    tmp_path: Path, args: list[str], fragments: tuple[str, ...]
) -> None:
    closed = closed_address()

    run = warm_liaison(
        "query",
        "--gateway",
        closed,
        "--token",
        "t",
        *args,
        "--purpose",
        PURPOSE,
        "--case-ref",
        CASE_REF,
        cwd=tmp_path,
    )

    line = assert_one_line_error(run, *fragments)
    assert run.returncode == ExitCode.USAGE
    assert closed not in line and "not answering" not in line


def test_an_unknown_purpose_is_refused_here(tmp_path: Path) -> None:
    run = warm_liaison(
        "query",
        "--gateway",
        closed_address(),
        "--token",
        "t",
        *match_held(),
        "--purpose",
        "curiosity",
        "--case-ref",
        CASE_REF,
        cwd=tmp_path,
    )

    assert run.returncode == ExitCode.USAGE
    assert_one_line_error(run, "--purpose", "curiosity")


# --- --hashes -------------------------------------------------------------------------------------


def hash_lines(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """2,500 SHA-256 hashes, comments and blank lines; alpha holds HELD of them."""
    held = {sha_of(i): 0 for i in (5, 17, 33)}
    assert len(held) == HELD
    lines = ["# seized device 7, exported by the lab", ""]
    unheld = (hashlib.sha256(f"not held {i}".encode()).hexdigest() for i in range(BATCH))
    positions = {400: sha_of(5), 1_300: sha_of(17), 2_450: sha_of(33)}
    for i in range(BATCH):
        value = positions.get(i) or next(unheld)
        if value in held:
            held[value] = len(lines) + 1
        lines.append(value.upper() if i % 2 else value)  # case does not matter
        if i % 500 == 0:
            lines.append("   # a comment between hashes")
    path = tmp_path / "device7.txt"
    path.write_text("\n".join(lines) + "\n")
    return path, held


def test_hashes_from_a_file_find_the_held_ones_with_their_lines(
    fed: Fed, schema: dict[str, Any], tmp_path: Path
) -> None:
    path, held = hash_lines(tmp_path)

    run = fed.query("media", "--fields", "category", "--hashes", path, nodes="alpha,beta")

    assert run.returncode == ExitCode.SOME_NOT_ANSWERED, run.stderr  # beta denies every chunk
    doc = run.json()
    conforms(doc, schema)
    assert doc["kind"] == "hashes"
    assert doc["values"] == {"sha256": BATCH}
    batch = doc["batches"]["sha256"]
    assert batch["chunks"] == 3
    assert len(batch["query_ids"]) == 3
    assert batch["nodes"]["alpha"]["answered"] == 3
    assert batch["nodes"]["beta"]["denied"] == 3
    found = {m["value"]: m["line"] for m in doc["matched"]["alpha"]}
    assert found == held
    assert doc["matched"]["beta"] == []


def test_hashes_from_standard_input_with_progress(fed: Fed, tmp_path: Path) -> None:
    path, held = hash_lines(tmp_path)

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "liaison",
            "query",
            "--gateway",
            fed.gateway,
            "--token-file",
            str(fed.token_file),
            "media",
            "--fields",
            "sha256",
            "--hashes",
            "-",
            "--purpose",
            PURPOSE,
            "--case-ref",
            CASE_REF,
            "--nodes",
            "alpha",
            "--chunk-size",
            "1000",
            "--progress",
            "--json",
        ],
        input=path.read_text(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )

    assert done.returncode == ExitCode.OK, done.stderr
    doc = json.loads(done.stdout)  # progress never reaches stdout
    assert doc["source"] == "(standard input)"
    assert {m["value"] for m in doc["matched"]["alpha"]} == set(held)
    progress = done.stderr.strip().splitlines()
    assert progress[-1].startswith(f"asking (sha256): {BATCH:,}/{BATCH:,} hashes (100%)")
    assert "hashes/s" in progress[-1]


def test_hashes_from_liaison_hash_json(fed: Fed, tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "a.bin").write_bytes(b"cli file 7")  # alpha holds its SHA-256: sha_of(7)
    (files / "b.bin").write_bytes(b"something else")
    hashed = warm_liaison("hash", "--json", files, cwd=tmp_path)
    listing = tmp_path / "hashes.json"
    listing.write_text(hashed.stdout)

    run = fed.query("media", "--fields", "category", "--hashes", listing, nodes="alpha")

    assert run.returncode == ExitCode.OK, run.stderr
    doc = run.json()
    assert doc["values"] == {"sha256": 2}
    assert doc["matched"]["alpha"] == [{"field": "sha256", "value": sha_of(7), "line": 1}]


def test_hashes_by_md5_length(fed: Fed, tmp_path: Path) -> None:
    listing = tmp_path / "mixed.txt"
    listing.write_text(f"{md5_of(9)}\n{sha_of(10)}\n{'0' * 32}\n")

    run = fed.query("media", "--fields", "category", "--hashes", listing, nodes="alpha")

    assert run.returncode == ExitCode.OK, run.stderr
    doc = run.json()
    assert doc["values"] == {"md5": 2, "sha256": 1}
    assert sorted((m["field"], m["line"]) for m in doc["matched"]["alpha"]) == [
        ("md5", 1),
        ("sha256", 2),
    ]


@pytest.mark.parametrize(
    ("content", "extra", "fragments"),
    [
        (f"{'a' * 64}\n\n{'b' * 64}\nnot-a-hash\n", [], ("line 4", "not-a-hash", "not a hash")),
        (f"{'a' * 64}\n{'g' * 64}\n", [], ("line 2", "hexadecimal")),
        (f"{'a' * 64}\n{'a' * 32}\n", ["--hash-field", "sha256"], ("line 2", "64")),
        ("# only a comment\n\n", [], ("no hash",)),
        ('[{"path": "x", "sha256": "zz"}]', [], ("item 1", "sha256")),
        ('{"not": "a list"}', [], ("list",)),
        (f"{'a' * 64}\n", ["--hash-field", "category"], ("category", "not a hash field")),
        (f"{'a' * 64}\n", ["--distance", "10"], ("--distance", "--hash-field pdq")),
    ],
    ids=[
        "not a hash",
        "not hex",
        "md5 as sha256",
        "nothing",
        "json value",
        "json object",
        "field",
        "distance without pdq",
    ],
)
def test_a_bad_hash_list_is_refused_before_any_connection(
    tmp_path: Path, content: str, extra: list[str], fragments: tuple[str, ...]
) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(content)
    closed = closed_address()

    run = warm_liaison(
        "query",
        "--gateway",
        closed,
        "--token",
        "t",
        "media",
        "--match",
        "--hashes",
        listing,
        *extra,
        "--purpose",
        PURPOSE,
        "--case-ref",
        CASE_REF,
        cwd=tmp_path,
    )

    line = assert_one_line_error(run, *fragments)
    assert run.returncode == ExitCode.USAGE
    assert closed not in line


def test_more_than_100000_hashes_are_refused(tmp_path: Path) -> None:
    listing = tmp_path / "huge.txt"
    listing.write_text("".join(f"{i:064x}\n" for i in range(100_001)))

    run = warm_liaison(
        "query",
        "--gateway",
        closed_address(),
        "--token",
        "t",
        "media",
        "--match",
        "--hashes",
        listing,
        "--purpose",
        PURPOSE,
        "--case-ref",
        CASE_REF,
        cwd=tmp_path,
    )

    assert_one_line_error(run, "100,000")
    assert run.returncode == ExitCode.USAGE


# --- token issue --attribute --------------------------------------------------------------------


def issue(fed: Fed, *attributes: str) -> Run:
    return warm_liaison(
        "token",
        "issue",
        "--key",
        fed.root / "idp" / f"{INVESTIGATOR_AGENCY}.key",
        "--agency",
        INVESTIGATOR_AGENCY,
        "--subject",
        "inv.carol",
        "--ttl",
        "600",
        *(a for attribute in attributes for a in ("--attribute", attribute)),
        cwd=fed.root,
    )


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [(["clearance=secret", "unit=triage"], "answered"), ([], "denied")],
    ids=["cleared", "no attribute"],
)
def test_an_attribute_reaches_the_node_policy(
    fed: Fed, tmp_path: Path, attributes: list[str], expected: str
) -> None:
    issued = issue(fed, *attributes)
    assert issued.returncode == 0, issued.stderr
    token = tmp_path / "carol.jwt"
    token.write_text(issued.stdout)

    run = warm_liaison(
        "query",
        "--gateway",
        fed.gateway,
        "--token-file",
        token,
        "cases",
        "--fields",
        "offence",
        "--where",
        "case_ref=ALPHA-1",
        "--purpose",
        PURPOSE,
        "--case-ref",
        CASE_REF,
        "--nodes",
        "alpha",
        "--json",
        cwd=tmp_path,
    )

    alpha = by_node(run.json())["alpha"]
    assert alpha["status"] == expected, alpha
    if expected == "answered":
        assert run.returncode == ExitCode.OK
        assert alpha["answer"]["decision"]["rules"] == ["cleared-cases"]
        assert alpha["answer"]["rows"] == [["distribution"]]
    else:
        assert run.returncode == ExitCode.NONE_ANSWERED


def test_sixteen_attributes_of_64_characters_are_accepted(fed: Fed, tmp_path: Path) -> None:
    attributes = [f"{i:02d}{'k' * 62}={'v' * 64}" for i in range(16)]
    issued = issue(fed, *attributes)
    assert issued.returncode == 0, issued.stderr
    token = tmp_path / "wide.jwt"
    token.write_text(issued.stdout)

    run = warm_liaison(
        "query",
        "--gateway",
        fed.gateway,
        "--token-file",
        token,
        *match_held(),
        "--purpose",
        PURPOSE,
        "--case-ref",
        CASE_REF,
        "--nodes",
        "alpha",
        cwd=tmp_path,
    )

    assert run.returncode == ExitCode.OK, run.stderr  # the gateway took the token


@pytest.mark.parametrize(
    ("attributes", "fragments"),
    [
        ([f"k{i}=v" for i in range(17)], ("at most 16",)),
        ([f"{'k' * 65}=v"], ("64",)),
        ([f"k={'v' * 65}"], ("64",)),
        (["clearance"], ("KEY=VALUE",)),
        (["=secret"], ("KEY=VALUE",)),
        (["clearance="], ("KEY=VALUE",)),
        (["a=1", "a=2"], ("twice",)),
        (["k=line\u2028break"], ("printable",)),
    ],
    ids=["17", "long key", "long value", "no =", "no key", "no value", "twice", "unprintable"],
)
def test_bad_attributes_are_usage_errors(
    fed: Fed, attributes: list[str], fragments: tuple[str, ...]
) -> None:
    run = issue(fed, *attributes)

    assert_one_line_error(run, "--attribute", *fragments)
    assert run.returncode == ExitCode.USAGE
    assert run.stdout == ""


# --- progress ------------------------------------------------------------------------------------


def test_image_query_reports_progress_on_stderr_only(
    fed: Fed, schema: dict[str, Any], tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    written = write_series(folder, seed=11)

    run = fed.query("media", "--match", "--image", folder, "--progress", nodes="alpha")

    assert run.returncode == ExitCode.OK, run.stderr
    doc = run.json()  # stdout is the JSON document alone
    conforms(doc, schema)
    assert doc["kind"] == "images"
    assert doc["exact"]["nodes"]["alpha"]["answered"] == 1
    assert doc["near"]["nodes"]["alpha"]["answered"] == 1
    lines = run.stderr.splitlines()
    n = len(written)
    assert any(line.startswith(f"hashing: {n}/{n} files (100%)") for line in lines), lines
    assert f"hashed {n} file(s) here: {n} by SHA-256, {n} by PDQ" in lines
    assert any(line.startswith(f"asking (exact): {n}/{n} hashes (100%)") for line in lines)
    # Distinct PDQ hashes: a variant may hash as its original does.
    near = doc["near"]["values"]
    assert any(line.startswith(f"asking (near, 31 bits): {near}/{near} hashes") for line in lines)


def test_image_query_is_quiet_on_stderr_without_a_terminal(fed: Fed, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    write_series(folder, seed=12, kinds=("jpeg",))

    run = fed.query("media", "--match", "--image", folder, nodes="alpha")

    assert run.returncode == ExitCode.OK, run.stderr
    assert run.stderr == ""
    assert run.json()["kind"] == "images"


def test_hashes_as_a_table_with_a_node_not_asked(fed: Fed, tmp_path: Path) -> None:
    listing = tmp_path / "few.txt"
    listing.write_text(f"{sha_of(4)}\n{'0' * 64}\n")

    run = fed.query(
        "media", "--fields", "category", "--hashes", listing, nodes="alpha,gamma", json_out=False
    )

    assert run.returncode == ExitCode.OK, run.stderr  # gamma offers no media: not a failure
    head, table, holds = run.stdout.split("\n\n")
    assert head == f"2 hash(es) from {listing}: 2 sha256"
    rows = {line.split()[0]: line for line in table.splitlines()}
    assert "1 answered" in rows["alpha"]
    assert "not asked" in rows["gamma"]
    assert holds == f"alpha holds:\n  {sha_of(4)}  (sha256, line 1)\n"


def test_pdq_hashes_are_asked_as_near_duplicates(fed: Fed, schema: dict[str, Any]) -> None:
    near = f"{int(pdq_of(6), 16) ^ 0b10110:064x}"  # 3 bits from a hash alpha holds
    listing = fed.root / "pdq.txt"
    listing.write_text(f"{near}\n{'0' * 64}\n")

    close = fed.query(
        "media",
        "--match",
        "--hashes",
        listing,
        "--hash-field",
        "pdq",
        "--distance",
        "3",
        nodes="alpha",
    )
    far = fed.query(
        "media",
        "--match",
        "--hashes",
        listing,
        "--hash-field",
        "pdq",
        "--distance",
        "2",
        nodes="alpha",
    )

    assert close.returncode == far.returncode == ExitCode.OK, close.stderr + far.stderr
    conforms(close.json(), schema)
    batch = close.json()["batches"]["pdq"]
    assert (batch["comparator"], batch["max_distance"], batch["values"]) == ("near", 3, 2)
    assert batch["nodes"]["alpha"]["hits"] == 1
    assert far.json()["batches"]["pdq"]["nodes"]["alpha"]["hits"] == 0
