"""`liaison query --verify`, run as a user runs it, against gateways that lie.

The three demo nodes run for real on loopback. For each test a real gateway
(config, keys, ledger, gRPC server) is started in this process; its core is
subclassed so that the result it sends out first passes through a tampering
function, as a compromised gateway would. The command line is the real one,
a subprocess; it holds the nodes' public keys in a folder of its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from gateway.search import CheckedSearch, GatewayCore
from liaison.cli.exits import ExitCode
from liaison.demo.data import demo_agencies, probes
from liaison.keys import SigningKey
from liaison.messages import (
    NodeResult,
    NodeStatus,
    QueryRequest,
    Requester,
    SearchInput,
    SearchResult,
)
from liaison.patterns import write_series
from tests.support import (
    COMMAND_TIMEOUT_S,
    Run,
    Tamper,
    TamperingCore,
    assert_one_line_error,
    investigator_token,
    own_gateway,
    running_node,
)
from tests.test_cli_outcomes import SCHEMA_PATH, conforms

NODES = ("freedonia", "ruritania", "sylvania")
SHARED_SHA256 = probes().shared_sha256  # freedonia and ruritania hold it, sylvania does not
ENV_VAR = "LIAISON_NODE_KEYS"


@dataclass(frozen=True, slots=True)
class Nodes:
    root: Path
    addresses: dict[str, str]
    token_file: Path


@pytest.fixture(scope="module")
def nodes(federation_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    root = tmp_path_factory.mktemp("cli-verify") / "federation"
    shutil.copytree(federation_template, root)
    token_file = root.parent / "investigator.jwt"
    token_file.write_text(investigator_token(root) + "\n")
    with ExitStack() as stack:
        addresses = {
            a.agency_id: stack.enter_context(
                running_node(root / "nodes" / a.agency_id / "node.toml")
            ).address
            for a in demo_agencies()
        }
        yield Nodes(root, addresses, token_file)


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return loaded


def honest(result: SearchResult) -> SearchResult:
    return result


class ReplayingCore(TamperingCore):
    """A real gateway core that keeps its first result and serves it for every later search.

    Its first request is dated ``AGO_MS`` earlier, as if asked minutes ago
    (the nodes accept a request up to 300 s old): the result is genuine, every
    signature good, only it answers an earlier search than the one served.
    Later searches ask nobody.
    """

    AGO_MS = 120_000

    def __init__(self, core: GatewayCore) -> None:
        super().__init__(honest, core)
        self.first: SearchResult | None = None

    def request_for(self, requester: Requester, checked: CheckedSearch) -> QueryRequest:
        request = super().request_for(requester, checked)
        if self.first is None:
            return replace(request, issued_at_ms=request.issued_at_ms - self.AGO_MS)
        return request

    async def search(self, requester: Requester, search: SearchInput) -> SearchResult:
        if self.first is None:
            self.first = await super().search(requester, search)
        return self.first


@contextmanager
def gateway(
    nodes: Nodes,
    tamper: Tamper = honest,
    *,
    core: Callable[[GatewayCore], GatewayCore] | None = None,
    addresses: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """A real gateway over ``nodes`` (its own config and ledger) on a loopback port.

    ``core`` wraps the built core (default: ``TamperingCore`` with ``tamper``).
    """
    wrap = core if core is not None else (lambda built: TamperingCore(tamper, built))
    with own_gateway(nodes.root, addresses or nodes.addresses, wrap) as running:
        yield running.address


def at(node_id: str, change: Callable[[NodeResult], NodeResult]) -> Tamper:
    """Change ``node_id``'s result in every search the gateway answers."""

    def tamper(result: SearchResult) -> SearchResult:
        return replace(
            result,
            results=tuple(change(r) if r.node_id == node_id else r for r in result.results),
        )

    return tamper


def flip_hit(r: NodeResult) -> NodeResult:
    assert r.answer is not None
    return replace(r, answer=replace(r.answer, hit=not r.answer.hit))


def leave_out(node_id: str) -> Tamper:
    def tamper(result: SearchResult) -> SearchResult:
        return replace(result, results=tuple(r for r in result.results if r.node_id != node_id))

    return tamper


def cli(*args: str | Path, cwd: Path, env: Mapping[str, str] | None = None) -> Run:
    """``python -m liaison ARGS``; the caller's $LIAISON_NODE_KEYS never leaks in."""
    environment = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    environment.update(env or {})
    done = subprocess.run(
        [sys.executable, "-m", "liaison", *map(str, args)],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def query(
    nodes: Nodes,
    address: str,
    *args: str | Path,
    sha256: str = SHARED_SHA256,
    env: Mapping[str, str] | None = None,
) -> Run:
    """`liaison query media --match --where sha256=...` through the gateway at ``address``."""
    return cli(
        "query",
        "media",
        "--match",
        "--where",
        f"sha256={sha256}",
        "--purpose",
        "csam-investigation",
        "--case-ref",
        "GEN-VERIFY-CLI",
        "--gateway",
        address,
        "--token-file",
        nodes.token_file,
        *args,
        cwd=nodes.root.parent,
        env=env,
    )


def verify_lines(run: Run) -> dict[str, str]:
    """node id -> the rest of its `verify: <node>: ...` line on standard error."""
    out = {}
    for line in run.stderr.splitlines():
        if line.startswith("verify: ") and not line.startswith("verify: NOT VERIFIED"):
            node, _, rest = line.removeprefix("verify: ").partition(": ")
            assert node not in out, run.stderr  # one line per agency
            out[node] = rest
    return out


def table_rows(run: Run) -> dict[str, dict[str, str]]:
    """The first table of the output: node id -> {column: cell}, cut where the dashes are."""
    lines = run.stdout.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("---"))
    spans = [(m.start(), m.end()) for m in re.finditer(r"-+", lines[rule])]
    headers = [lines[rule - 1][a:b].strip() for a, b in spans]
    rows = {}
    for line in lines[rule + 1 :]:
        if not line.strip():
            break
        # The last column runs to the end of the line.
        cells = [line[a:b].strip() for a, b in spans[:-1]] + [line[spans[-1][0] :].strip()]
        rows[cells[0]] = dict(zip(headers, cells, strict=True))
    return rows


def by_node(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["node_id"]: r for r in doc["results"]}


def closed_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


# --- an honest gateway ----------------------------------------------------------------------


def test_honest_answers_verify_exit_0_with_one_line_per_agency(
    nodes: Nodes, schema: dict[str, Any]
) -> None:
    with gateway(nodes) as address:
        table = query(nodes, address, "--node-keys", nodes.root)
        as_json = query(nodes, address, "--node-keys", nodes.root, "--json")

    assert table.returncode == ExitCode.OK, table.stderr
    assert verify_lines(table) == dict.fromkeys(NODES, "verified")
    assert table.stderr.count("\n") == len(NODES)  # nothing else on standard error
    rows = table_rows(table)
    assert list(rows["freedonia"]) == ["agency", "status", "answer", "rule", "check", "ms"]
    # A hit names the node's reference for a follow-up: "HIT (ref r-...)".
    assert [rows[n]["answer"].split(" (ref ")[0] for n in NODES] == ["HIT", "HIT", "no hit"]
    assert all(rows[n]["check"] == "verified" for n in NODES)

    assert as_json.returncode == ExitCode.OK, as_json.stderr
    doc = as_json.json()
    conforms(doc, schema)
    assert doc["verification"] == {"verdict": "verified", "reason": None}
    for r in doc["results"]:
        assert r["verification"] == {"verdict": "verified", "reason": None}
    assert by_node(doc)["freedonia"]["answer"]["hit"] is True


# --- a gateway that alters, or drops, an agency's answer --------------------------------------


def test_an_altered_answer_is_not_verified_and_exits_5(nodes: Nodes) -> None:
    # Sylvania holds no copy; the gateway shows a hit there.
    with gateway(nodes, at("sylvania", flip_hit)) as address:
        run = query(nodes, address, "--node-keys", nodes.root)

    assert ExitCode.NOT_VERIFIED.value == 5
    assert run.returncode == ExitCode.NOT_VERIFIED, run.stderr
    lines = verify_lines(run)
    assert lines["freedonia"] == lines["ruritania"] == "verified"
    assert lines["sylvania"] == "FAILED: the answer shown differs from what the node signed in: hit"
    assert run.stderr.splitlines()[-1].startswith("verify: NOT VERIFIED: ")
    rows = table_rows(run)
    assert rows["sylvania"]["answer"] == "NOT VERIFIED"  # never the gateway's "HIT"
    assert rows["sylvania"]["rule"] == ""
    assert rows["sylvania"]["check"] == "FAILED"
    assert rows["freedonia"]["answer"].startswith("HIT (ref r-")
    assert "NOT VERIFIED: what the gateway shows for these agencies" in run.stdout


def test_an_altered_answer_in_json_is_null_and_failed(nodes: Nodes, schema: dict[str, Any]) -> None:
    with gateway(nodes, at("sylvania", flip_hit)) as address:
        run = query(nodes, address, "--node-keys", nodes.root, "--json")

    assert run.returncode == ExitCode.NOT_VERIFIED, run.stderr
    doc = run.json()
    conforms(doc, schema)
    sylvania = by_node(doc)["sylvania"]
    assert sylvania["verification"]["verdict"] == "FAILED"
    assert "differs from what the node signed in: hit" in sylvania["verification"]["reason"]
    assert sylvania["answer"] is None  # the gateway's hit is not shown as sylvania's answer
    assert sylvania["answer_digest"] is None
    assert by_node(doc)["ruritania"]["verification"]["verdict"] == "verified"
    assert doc["verification"]["verdict"] == "FAILED"
    assert doc["verification"]["reason"].startswith("sylvania: FAILED")
    assert doc["agencies"] == {"asked": 3, "answered": 2, "not_answered": 1, "not_asked": 0}


def test_an_agency_left_out_of_the_result_is_not_verified(nodes: Nodes) -> None:
    with gateway(nodes, leave_out("ruritania")) as address:
        run = query(nodes, address, "--node-keys", nodes.root)

    assert run.returncode == ExitCode.NOT_VERIFIED, run.stderr
    assert verify_lines(run)["ruritania"] == (
        "FAILED: the request was sent to this node, but the result leaves it out"
    )
    row = table_rows(run)["ruritania"]
    assert (row["status"], row["answer"], row["check"]) == ("-", "NOT VERIFIED", "FAILED")


def test_a_failure_outranks_agencies_not_answering(nodes: Nodes) -> None:
    # Freedonia and sylvania deny counts (exit 3 alone); the gateway also
    # alters sylvania's signed denial, here only its time.
    def retime(r: NodeResult) -> NodeResult:
        assert r.answer is not None
        return replace(r, answer=replace(r.answer, answered_at_ms=r.answer.answered_at_ms + 1))

    with gateway(nodes, at("sylvania", retime)) as address:
        run = cli(
            "query",
            "media",
            "--count",
            "--where",
            "first_seen>=2000-01-01",
            "--purpose",
            "statistics",
            "--case-ref",
            "GEN-VERIFY-CLI",
            "--gateway",
            address,
            "--token-file",
            nodes.token_file,
            "--node-keys",
            nodes.root,
            cwd=nodes.root.parent,
        )

    assert run.returncode == ExitCode.NOT_VERIFIED, run.stderr
    lines = verify_lines(run)
    assert lines["freedonia"] == "verified"  # a signed denial verifies like an answer
    assert lines["sylvania"] == (
        "FAILED: the answer shown differs from what the node signed in: answered_at_ms"
    )


# --- keys: what is held, where from, and turning it off --------------------------------------


def test_an_agency_without_a_key_is_unverifiable_not_a_failure(
    nodes: Nodes, schema: dict[str, Any], tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    for node in ("freedonia", "ruritania"):  # as each agency publishes its node's key
        shutil.copy(nodes.root / "nodes" / node / "node.pub", keys / f"{node}.pub")

    # Even an altered answer cannot be caught without the agency's key: not
    # exit 5, never "verified", and not counted as an answer either (exit 3).
    with gateway(nodes, at("sylvania", flip_hit)) as address:
        table = query(nodes, address, "--node-keys", keys)
        as_json = query(nodes, address, "--node-keys", keys, "--json")

    assert table.returncode == ExitCode.SOME_NOT_ANSWERED, table.stderr
    lines = verify_lines(table)
    assert lines["freedonia"] == lines["ruritania"] == "verified"
    assert lines["sylvania"].startswith("unverifiable: no public key for node 'sylvania'")
    row = table_rows(table)["sylvania"]
    assert (row["status"], row["check"]) == ("answered, UNVERIFIED", "unverifiable")
    assert table_rows(table)["freedonia"]["status"] == "answered"
    assert "UNVERIFIED: no key is held here for sylvania: what is shown for them rests on " in (
        table.stdout
    )
    assert as_json.returncode == ExitCode.SOME_NOT_ANSWERED, as_json.stderr
    doc = as_json.json()
    conforms(doc, schema)
    assert by_node(doc)["sylvania"]["verification"]["verdict"] == "unverifiable"
    assert doc["verification"]["verdict"] == "unverifiable"
    assert doc["agencies"] == {"asked": 3, "answered": 2, "not_answered": 1, "not_asked": 0}


def test_a_wrong_key_for_an_agency_fails_even_through_an_honest_gateway(
    nodes: Nodes, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    for node in NODES:
        shutil.copy(nodes.root / "nodes" / node / "node.pub", keys / f"{node}.pub")
    # A mix-up (or a key the agency has since replaced): what ruritania
    # signed does not verify under the key held for it.
    shutil.copy(nodes.root / "nodes" / "freedonia" / "node.pub", keys / "ruritania.pub")

    with gateway(nodes) as address:
        run = query(nodes, address, "--node-keys", keys)

    assert run.returncode == ExitCode.NOT_VERIFIED, run.stderr
    lines = verify_lines(run)
    assert lines["ruritania"].startswith("FAILED: not signed by this node's key")
    assert lines["freedonia"] == lines["sylvania"] == "verified"


def test_verify_without_keys_is_a_one_line_usage_error(tmp_path: Path) -> None:
    nowhere = closed_address()  # nothing is sent: the command stops first
    run = cli(
        "query",
        "media",
        "--match",
        "--where",
        f"sha256={SHARED_SHA256}",
        "--purpose",
        "csam-investigation",
        "--case-ref",
        "X",
        "--gateway",
        nowhere,
        "--token",
        "t",
        "--verify",
        cwd=tmp_path,
        env={ENV_VAR: ""},  # empty is unset
    )

    assert_one_line_error(run, "--verify needs the nodes' public keys", "--node-keys", ENV_VAR)
    assert run.returncode == ExitCode.USAGE


def test_verify_with_a_dry_run_is_a_usage_error(nodes: Nodes) -> None:
    run = query(nodes, closed_address(), "--dry-run", "--verify", "--node-keys", nodes.root)

    assert_one_line_error(run, "--dry-run releases no answers")
    assert run.returncode == ExitCode.USAGE


@pytest.mark.parametrize("where", ["missing", "empty", "garbage"])
def test_a_bad_node_key_folder_is_one_line(nodes: Nodes, tmp_path: Path, where: str) -> None:
    folder = tmp_path / "keys"
    if where != "missing":
        folder.mkdir()
    if where == "garbage":
        (folder / "sylvania.pub").write_text("not a key\n")

    run = query(nodes, closed_address(), "--node-keys", folder)

    line = assert_one_line_error(run, "--node-keys", str(folder))
    assert run.returncode == ExitCode.ERROR
    assert {"missing": "does not exist", "empty": "no node public keys", "garbage": "PEM"}[
        where
    ] in line


def test_node_keys_from_the_environment(nodes: Nodes) -> None:
    with gateway(nodes, at("sylvania", flip_hit)) as address:
        run = query(nodes, address, env={ENV_VAR: str(nodes.root / "nodes")})

    assert run.returncode == ExitCode.NOT_VERIFIED, run.stderr
    assert verify_lines(run)["sylvania"].startswith("FAILED")
    assert verify_lines(run)["ruritania"] == "verified"


def test_no_verify_checks_nothing(nodes: Nodes, schema: dict[str, Any]) -> None:
    with gateway(nodes, at("sylvania", flip_hit)) as address:
        off = query(nodes, address, "--no-verify", "--json", env={ENV_VAR: str(nodes.root)})
        no_keys = query(nodes, address, "--json")

    assert off.returncode == ExitCode.OK, off.stderr
    assert "verify" not in off.stderr
    doc = off.json()
    conforms(doc, schema)
    for r in doc["results"]:
        assert r["verification"] == {
            "verdict": "not checked",
            "reason": "verification is off (--no-verify)",
        }
    # Unchecked, the gateway's word is all there is.
    assert by_node(doc)["sylvania"]["answer"]["hit"] is True

    assert no_keys.returncode == ExitCode.OK, no_keys.stderr
    assert no_keys.stderr == ""
    unchecked = no_keys.json()
    assert unchecked["verification"]["verdict"] == "not checked"
    assert "--node-keys" in unchecked["verification"]["reason"]


# --- batches: every chunk is a request of its own, checked on its own -----------------------


def test_each_chunk_of_a_hash_list_is_verified(
    nodes: Nodes, schema: dict[str, Any], tmp_path: Path
) -> None:
    listing = tmp_path / "device.txt"
    listing.write_text(f"{SHARED_SHA256}\n{'1' * 64}\n{'2' * 64}\n")
    args = ("--hashes", listing, "--chunk-size", "2", "--node-keys", nodes.root)

    with gateway(nodes) as address:
        fine = query(nodes, address, *args, "--json")
    with gateway(nodes, at("sylvania", flip_hit)) as address:
        lied = query(nodes, address, *args, "--json")
        table = query(nodes, address, *args)

    assert fine.returncode == ExitCode.OK, fine.stderr
    assert verify_lines(fine) == dict.fromkeys(NODES, "verified")
    doc = fine.json()
    conforms(doc, schema)
    assert doc["verification"] == {"verdict": "verified", "reason": None}
    batch = doc["batches"]["sha256"]
    assert batch["chunks"] == 2
    assert all(n["verification"]["verdict"] == "verified" for n in batch["nodes"].values())

    assert lied.returncode == ExitCode.NOT_VERIFIED, lied.stderr
    assert verify_lines(lied)["sylvania"].startswith("FAILED: 2 of 2 requests: ")
    doc = lied.json()
    conforms(doc, schema)
    sylvania = doc["batches"]["sha256"]["nodes"]["sylvania"]
    assert sylvania["not_verified"] == 2
    assert sylvania["answered"] == 0
    assert sylvania["hits"] == 0  # the gateway's hits are not counted as sylvania's
    assert sylvania["verification"]["verdict"] == "FAILED"
    assert doc["batches"]["sha256"]["nodes"]["freedonia"]["hits"] == 1
    assert doc["verification"]["verdict"] == "FAILED"

    assert table.returncode == ExitCode.NOT_VERIFIED, table.stderr
    assert "2 NOT VERIFIED" in table_rows(table)["sylvania"]["sha256 (chunks)"]


def test_help_documents_verification(tmp_path: Path) -> None:
    run = cli("query", "--help", cwd=tmp_path)

    assert run.returncode == 0
    assert "--node-keys DIR" in run.stdout
    assert "--verify, --no-verify" in run.stdout
    epilog = run.stdout.split("exit status:", 1)[1]
    assert "  5  an answer shown is not what the agency signed" in epilog


def test_an_image_query_verifies_both_batches(
    nodes: Nodes, schema: dict[str, Any], tmp_path: Path
) -> None:
    write_series(tmp_path / "photos", seed=21, kinds=("jpeg",))

    with gateway(nodes, at("freedonia", flip_hit)) as address:
        run = cli(
            "query",
            "media",
            "--match",
            "--image",
            tmp_path / "photos",
            "--purpose",
            "csam-investigation",
            "--case-ref",
            "GEN-VERIFY-CLI",
            "--gateway",
            address,
            "--token-file",
            nodes.token_file,
            "--node-keys",
            nodes.root,
            "--json",
            cwd=tmp_path,
        )

    assert run.returncode == ExitCode.NOT_VERIFIED, run.stderr
    doc = run.json()
    conforms(doc, schema)
    lines = verify_lines(run)
    # Sylvania's signed denials of near-duplicates (its 24-bit cap) verify like answers.
    assert lines["sylvania"] == lines["ruritania"] == "verified"
    assert lines["freedonia"].startswith("FAILED: 2 of 2 requests: ")  # one exact, one near
    for batch in ("exact", "near"):
        freedonia = doc[batch]["nodes"]["freedonia"]
        assert (freedonia["not_verified"], freedonia["hits"]) == (1, 0)
        assert doc[batch]["nodes"]["ruritania"]["verification"]["verdict"] == "verified"
    assert doc["near"]["nodes"]["sylvania"]["denied"] == 1


# --- a gateway that serves an earlier result, relabels a denial, invents an agency ----------


def test_an_earlier_result_served_again_is_stale_and_exits_5(
    nodes: Nodes, schema: dict[str, Any]
) -> None:
    """The same question asked again: the gateway answers from its cache, asking nobody.

    Every signature in the cached result is good and it answers the very same
    question; only its time gives it away.
    """
    with gateway(nodes, core=ReplayingCore) as address:
        earlier = query(nodes, address, "--no-verify")  # "last month's" search
        replayed = query(nodes, address, "--node-keys", nodes.root)
        as_json = query(nodes, address, "--node-keys", nodes.root, "--json")

    assert earlier.returncode == ExitCode.OK, earlier.stderr
    assert replayed.returncode == ExitCode.NOT_VERIFIED, replayed.stderr
    lines = verify_lines(replayed)
    assert set(lines) == set(NODES)
    for rest in lines.values():
        assert rest.startswith(
            "FAILED: stale or replayed result: the request the nodes answered was issued 1"
        ), rest
        assert "s before this search was sent (more than the 30 s of clock skew allowed)" in rest
    assert replayed.stderr.splitlines()[-1].startswith("verify: NOT VERIFIED: ")
    rows = table_rows(replayed)
    assert {n: rows[n]["answer"] for n in NODES} == dict.fromkeys(NODES, "NOT VERIFIED")
    assert "HIT" not in replayed.stdout

    assert as_json.returncode == ExitCode.NOT_VERIFIED, as_json.stderr
    doc = as_json.json()
    conforms(doc, schema)
    assert doc["query_id"] == replayed.stdout.split()[1]  # the very same result, twice
    assert all(r["answer"] is None for r in doc["results"])
    assert doc["agencies"]["answered"] == 0


def test_a_denial_shows_the_reason_the_agency_signed_not_the_gateways(
    nodes: Nodes, schema: dict[str, Any]
) -> None:
    invented = "denied: your warrant was revoked; contact sylvania's legal office"
    args = (
        "query",
        "media",
        "--count",
        "--where",
        "first_seen>=2000-01-01",
        "--purpose",
        "statistics",
        "--case-ref",
        "GEN-VERIFY-CLI",
        "--token-file",
        nodes.token_file,
        "--node-keys",
        nodes.root,
    )
    # ``detail`` is the gateway's own word, outside what the node signed.
    with gateway(nodes, at("sylvania", lambda r: replace(r, detail=invented))) as address:
        table = cli(*args, "--gateway", address, cwd=nodes.root.parent)
        as_json = cli(*args, "--gateway", address, "--json", cwd=nodes.root.parent)

    assert as_json.returncode == ExitCode.SOME_NOT_ANSWERED, as_json.stderr
    doc = as_json.json()
    conforms(doc, schema)
    sylvania = by_node(doc)["sylvania"]
    assert sylvania["status"] == "denied"
    assert sylvania["verification"]["verdict"] == "verified"  # the signed denial is intact
    signed = sylvania["answer"]["decision"]["reason"]
    assert signed and signed != invented
    assert sylvania["detail"] == invented  # kept, and the schema says whose word it is
    detail_doc = json.loads(SCHEMA_PATH.read_text())["$defs"]["result"]["properties"]
    assert "not signed" in detail_doc["detail"]["description"]
    assert "not signed" in detail_doc["latency_ms"]["description"]

    assert table.returncode == ExitCode.SOME_NOT_ANSWERED, table.stderr
    assert table_rows(table)["sylvania"]["answer"] == f"denied: {signed}"
    assert "warrant" not in table.stdout


def _atlantis(nodes: Nodes, template: Path) -> Path:
    """A node the investigator never heard of, run by whoever runs the gateway.

    A copy of ruritania's node (so it holds the hash asked about) under a new
    id and a key of its own, trusting the same gateway.
    """
    folder = nodes.root / "nodes" / "atlantis"
    shutil.copytree(template / "nodes" / "ruritania", folder)
    config = folder / "node.toml"
    config.write_text(config.read_text().replace('id = "ruritania"', 'id = "atlantis"', 1))
    SigningKey.generate().write(folder / "node.key", folder / "node.pub")
    return config


def test_an_agency_the_gateway_adds_is_marked_unverified_and_not_counted(
    nodes: Nodes, federation_template: Path, schema: dict[str, Any], tmp_path: Path
) -> None:
    # The investigator holds the keys of the three agencies it knows.
    keys = tmp_path / "keys"
    keys.mkdir()
    for node in NODES:
        shutil.copy(nodes.root / "nodes" / node / "node.pub", keys / f"{node}.pub")
    config = _atlantis(nodes, federation_template)
    try:
        # The gateway signs the audience itself: atlantis is in it.
        with (
            running_node(config) as atlantis,
            gateway(nodes, addresses={**nodes.addresses, "atlantis": atlantis.address}) as gw,
        ):
            table = query(nodes, gw, "--node-keys", keys)
            as_json = query(nodes, gw, "--node-keys", keys, "--json")
    finally:
        shutil.rmtree(config.parent)

    assert table.returncode == ExitCode.SOME_NOT_ANSWERED, table.stderr
    lines = verify_lines(table)
    assert lines["atlantis"].startswith("unverifiable: no public key for node 'atlantis'")
    assert {n: lines[n] for n in NODES} == dict.fromkeys(NODES, "verified")
    rows = table_rows(table)
    assert rows["atlantis"]["status"] == "answered, UNVERIFIED"
    assert rows["atlantis"]["answer"].startswith("HIT")  # shown, but marked
    assert rows["ruritania"]["status"] == "answered"
    assert (
        "UNVERIFIED: no key is held here for atlantis: what is shown for them rests on the "
        "gateway's word alone" in table.stdout
    )

    assert as_json.returncode == ExitCode.SOME_NOT_ANSWERED, as_json.stderr
    doc = as_json.json()
    conforms(doc, schema)
    assert by_node(doc)["atlantis"]["verification"]["verdict"] == "unverifiable"
    assert doc["agencies"] == {"asked": 4, "answered": 3, "not_answered": 1, "not_asked": 0}


def everyone_not_asked(result: SearchResult) -> SearchResult:
    return replace(
        result,
        results=tuple(
            NodeResult(r.node_id, NodeStatus.NOT_ASKED, "not asked: does not offer 'media'")
            for r in result.results
        ),
    )


def nobody_at_all(result: SearchResult) -> SearchResult:
    return replace(result, results=(), signed_request=None)


def test_a_result_that_asked_nobody_exits_4_and_says_so(
    nodes: Nodes, schema: dict[str, Any]
) -> None:
    with gateway(nodes, everyone_not_asked) as address:
        unchecked = query(nodes, address, "--no-verify", "--json")
        checked = query(nodes, address, "--node-keys", nodes.root)
    with gateway(nodes, nobody_at_all) as address:
        empty = query(nodes, address, "--no-verify")

    assert unchecked.returncode == ExitCode.NONE_ANSWERED, unchecked.stderr
    assert unchecked.stderr == (
        "liaison query: no agency was asked: none of freedonia, ruritania, sylvania offers "
        "dataset 'media'\n"
    )
    doc = unchecked.json()
    conforms(doc, schema)
    assert doc["agencies"] == {"asked": 0, "answered": 0, "not_answered": 0, "not_asked": 3}
    assert empty.returncode == ExitCode.NONE_ANSWERED, empty.stderr
    assert empty.stderr == (
        "liaison query: no agency was asked: the gateway's result names no agency that offers "
        "dataset 'media'\n"
    )
    # With the keys, the signed request shows that everyone was asked.
    assert checked.returncode == ExitCode.NOT_VERIFIED, checked.stderr
    assert verify_lines(checked) == dict.fromkeys(
        NODES, "FAILED: the gateway says this node was not asked, but the request was sent to it"
    )
