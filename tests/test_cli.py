"""The `liaison` command line, run as a user runs it: real processes, real files.

Every command runs in a process of its own with a timeout: the demo, the first `init`,
``--version`` and a bare ``liaison`` as a plain ``python -m liaison``, from a
fresh interpreter; the rest forked from one that imported the command line
already (``tests.conftest.warm_liaison``), which saves most of a second each.
One federation started with ``demo --keep-running`` serves all the query
tests of this module, and is always stopped with ``demo --stop`` afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from liaison.catalog import CATALOG_V1
from liaison.config import load_gateway_config, load_node_config
from liaison.demo.consoles import GATEWAY_CONSOLE, IDP, NODE_CONSOLE
from liaison.demo.data import probes
from liaison.identity.verify import TokenVerifier
from liaison.tokens import dev_issuer
from tests.conftest import warm_liaison
from tests.support import Run, assert_one_line_error, liaison

COMMAND_TIMEOUT_S = 60
START_TIMEOUT_S = 20
STOP_TIMEOUT_S = 10
DEMO_AGENCIES = ("freedonia", "ruritania", "sylvania")
# What `demo --keep-running` leaves running: the nodes, the gateway, the
# development sign-in provider and the two web consoles.
DEMO_PROCESSES = (*DEMO_AGENCIES, "gateway", IDP, GATEWAY_CONSOLE, NODE_CONSOLE)
AGENCY_NAMES = (
    "Ruritania National Police",
    "Freedonia National Central Bureau",
    "Sylvania Cyber Crime Unit",
)


def pid_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return True
    return state in ("Z", "X")


def wait_gone(pids: Sequence[int], timeout_s: float = STOP_TIMEOUT_S) -> list[int]:
    """Wait for ``pids`` to exit; return those still running at the deadline."""
    deadline = time.monotonic() + timeout_s
    alive = [p for p in pids if not pid_gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if not pid_gone(p)]
    return alive


def recorded_pids(run_dir: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text().strip()) for p in sorted(run_dir.glob("*.pid"))}


def results_by_node(query: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["node_id"]: r for r in query["results"]}


# ---------------------------------------------------------------------------
# fixtures


@dataclass(frozen=True, slots=True)
class KeptFederation:
    root: Path
    pids: dict[str, int]
    probe: str
    started: Run  # what `demo --keep-running` printed
    # Every process any `demo --keep-running` run here recorded; `demo --stop`
    # must leave none of them running (checked when the module is done).
    seen: set[int] = field(default_factory=set)


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeptFederation]:
    """`liaison demo --keep-running`: a federation left running for `liaison query`.

    Stopping it is a test too: after the module, `demo --stop` must succeed and
    leave none of the processes that any `--keep-running` here started.
    """
    base = tmp_path_factory.mktemp("kept")
    root = base / "federation"
    run_dir = root / "run"
    seen: set[int] = set()
    try:
        started = liaison("demo", "--workdir", root, "--keep-running", cwd=base)
        pids = recorded_pids(run_dir)
        seen |= set(pids.values())
        assert started.returncode == 0, started.stderr
        assert "Traceback" not in started.stderr
        assert sorted(pids) == sorted(DEMO_PROCESSES)
        assert not any(pid_gone(p) for p in pids.values()), "a process exited right away"
        yield KeptFederation(root, pids, probes().shared_sha256, started, seen)
    finally:
        if run_dir.exists():
            seen |= set(recorded_pids(run_dir).values())
        stopped = liaison("demo", "--stop", "--workdir", root, cwd=base)
        alive = wait_gone(sorted(seen))
        for pid in alive:  # only the processes this fixture's demo runs started
            os.kill(pid, signal.SIGKILL)
        assert stopped.returncode == 0, stopped.stderr
        assert not alive, f"still running after `demo --stop`: {alive}"


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`liaison init DIR --node a --node b --agency inv`."""
    base = tmp_path_factory.mktemp("init")
    root = base / "federation"
    run = liaison("init", root, "--node", "a", "--node", "b", "--agency", "inv", cwd=base)
    assert run.returncode == 0, run.stderr
    assert "federation written to" in run.stdout
    return root


@pytest.fixture
def unused_address() -> Iterator[str]:
    """A loopback address where nothing listens: bound to port 0, never listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        host, port = sock.getsockname()
        yield f"{host}:{port}"


# ---------------------------------------------------------------------------
# liaison demo


def test_demo_json_reports_every_agency_answer(tmp_path: Path) -> None:
    run = liaison("demo", "--json", cwd=tmp_path)

    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    doc = json.loads(run.stdout)
    assert doc["workdir"] is None  # a throwaway federation, removed afterwards
    # The demo ends with an audit: every ledger verifies and they reconcile.
    assert doc["audit"]["ok"] is True
    assert sorted(doc["audit"]["receipts"]) == sorted(DEMO_AGENCIES)
    assert all(n == 7 for n in doc["audit"]["receipts"].values())
    assert doc["audit"]["differences"] == []
    queries = doc["queries"]
    assert len(queries) == 7
    assert all(sorted(results_by_node(q)) == sorted(DEMO_AGENCIES) for q in queries)

    match = results_by_node(queries[0])
    assert queries[0]["query"]["operation"] == "match"
    assert {n: r["status"] for n, r in match.items()} == dict.fromkeys(DEMO_AGENCIES, "answered")
    assert match["ruritania"]["answer"]["hit"] is True
    assert match["freedonia"]["answer"]["hit"] is True
    assert match["sylvania"]["answer"]["hit"] is False

    records = results_by_node(queries[1])
    assert records["freedonia"]["status"] == "answered"
    assert records["freedonia"]["answer"]["withheld_fields"] == ["case_ref"]
    assert "case_ref" not in records["freedonia"]["answer"]["fields"]
    assert records["ruritania"]["answer"]["fields"] == ["category", "first_seen", "case_ref"]
    assert records["sylvania"]["status"] == "denied"
    assert records["sylvania"]["answer"]["decision"]["rules"] == ["default-deny"]
    assert records["sylvania"]["answer"]["decision"]["permitted"] is False

    accounts = results_by_node(queries[2])
    assert accounts["freedonia"]["status"] == "denied"
    assert accounts["freedonia"]["answer"]["decision"]["rules"] == ["no-account-data-abroad"]
    assert accounts["ruritania"]["status"] == "answered"
    assert accounts["sylvania"]["status"] == "answered"

    statistics = results_by_node(queries[4])
    assert {n: r["status"] for n, r in statistics.items()} == dict.fromkeys(DEMO_AGENCIES, "denied")
    assert all(r["answer"]["decision"]["rules"] for r in statistics.values())

    # A re-encoded copy found as a near-duplicate; Sylvania's policy caps the distance.
    near = results_by_node(queries[5])
    assert queries[5]["query"]["predicates"][0]["comparator"] == "near"
    assert queries[5]["query"]["predicates"][0]["max_distance"] == 31
    assert near["ruritania"]["answer"]["hit"] is True
    assert near["freedonia"]["answer"]["hit"] is True
    assert near["sylvania"]["status"] == "denied"
    assert "cap of 24 bits" in near["sylvania"]["detail"]

    # Device triage: forty hashes in one request; each agency lists the ones it holds.
    triage = results_by_node(queries[6])
    assert len(queries[6]["query"]["predicates"][0]["values"]) == 40
    for agency in ("ruritania", "freedonia"):
        answer = triage[agency]["answer"]
        assert triage[agency]["status"] == "answered"
        assert answer["fields"] == ["sha256", "category"]
        asked = set(queries[6]["query"]["predicates"][0]["values"])
        assert {row[0] for row in answer["rows"]} <= asked
        assert answer["rows"]
    assert triage["sylvania"]["status"] == "denied"

    # Every answer and denial shown is checked against the agency's own key.
    for q in queries:
        assert q["verification"] == {"verdict": "verified", "reason": None}, q["title"]
        assert {r["verification"]["verdict"] for r in q["results"]} == {"verified"}


def test_demo_prints_tables(kept: KeptFederation) -> None:
    # `demo --keep-running` prints what a plain `demo` prints (the same code
    # writes both), so the module's one kept federation shows the tables too;
    # `demo --json` (above) runs the throwaway federation a plain `demo` uses.
    run = kept.started

    assert "Traceback" not in run.stderr
    for name in AGENCY_NAMES:  # progress names the agencies it builds
        assert name in run.stderr
    for agency in DEMO_AGENCIES:  # tables name the agencies that answered
        assert agency in run.stdout
    assert "HIT" in run.stdout
    assert "no hit" in run.stdout
    assert "default-deny" in run.stdout
    assert "no-account-data-abroad" in run.stdout
    assert "NOT VERIFIED" not in run.stdout
    assert (
        "Answers: 21 signed answers checked here against each agency's own key: all verified"
        in run.stdout
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--keep-running"], "--keep-running needs --workdir"),
        (["--stop"], "--stop needs the --workdir"),
    ],
)
def test_demo_options_that_need_a_workdir(tmp_path: Path, args: list[str], fragment: str) -> None:
    assert_one_line_error(liaison("demo", *args, cwd=tmp_path), fragment)


def test_demo_refuses_a_folder_that_is_not_a_federation(tmp_path: Path) -> None:
    workdir = tmp_path / "busy"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("mine\n")

    run = liaison("demo", "--workdir", workdir, cwd=tmp_path)

    assert_one_line_error(run, str(workdir), "not empty")
    assert (workdir / "notes.txt").read_text() == "mine\n"


def test_keep_running_twice_then_stop_leaves_nothing_running(
    kept: KeptFederation, tmp_path: Path
) -> None:
    # Whether a second --keep-running refuses or reuses the running federation,
    # `demo --stop` must then stop every process either run started: the kept
    # fixture stops the federation after the module's last test and fails if
    # any process in ``kept.seen`` is still running.
    again = liaison("demo", "--workdir", kept.root, "--keep-running", cwd=tmp_path)
    pids = recorded_pids(kept.root / "run")
    kept.seen.update(pids.values())

    assert "Traceback" not in again.stderr
    assert sorted(pids) == sorted(DEMO_PROCESSES)


# ---------------------------------------------------------------------------
# liaison query, against the federation left running by demo --keep-running


def test_kept_federation_writes_its_run_files(kept: KeptFederation) -> None:
    run_dir = kept.root / "run"
    for name in [*DEMO_AGENCIES, "gateway"]:
        host, _, port = (run_dir / f"{name}.addr").read_text().strip().rpartition(":")
        assert host == "127.0.0.1"
        assert int(port) > 0
    assert (kept.root / "investigator.jwt").read_text().count(".") == 2


def test_query_prints_a_table(kept: KeptFederation, tmp_path: Path) -> None:
    run = warm_liaison(
        "query",
        "--federation",
        kept.root,
        "media",
        "--match",
        "--where",
        f"sha256={kept.probe}",
        "--purpose",
        "csam-investigation",
        "--case-ref",
        "X",
        cwd=tmp_path,
    )

    assert run.returncode == 0, run.stderr
    # The federation folder holds the nodes' public keys: every answer is
    # checked against them by default, one line per agency on stderr.
    assert sorted(run.stderr.splitlines()) == [f"verify: {a}: verified" for a in DEMO_AGENCIES]
    assert "purpose csam-investigation, case X" in run.stdout
    lines = {line.split()[0]: line for line in run.stdout.splitlines() if line.strip()}
    assert "HIT" in lines["ruritania"]
    assert "HIT" in lines["freedonia"]
    assert "no hit" in lines["sylvania"]
    assert lines["agency"].split() == ["agency", "status", "answer", "rule", "check", "ms"]
    assert all(lines[a].split()[-2] == "verified" for a in DEMO_AGENCIES)


def test_query_no_verify_prints_the_table_alone(kept: KeptFederation, tmp_path: Path) -> None:
    run = warm_liaison(
        "query",
        "--federation",
        kept.root,
        "media",
        "--match",
        "--where",
        f"sha256={kept.probe}",
        "--purpose",
        "csam-investigation",
        "--case-ref",
        "X",
        "--no-verify",
        cwd=tmp_path,
    )

    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    lines = {line.split()[0]: line for line in run.stdout.splitlines() if line.strip()}
    assert lines["agency"].split() == ["agency", "status", "answer", "rule", "ms"]


def test_query_json(kept: KeptFederation, tmp_path: Path) -> None:
    run = warm_liaison(
        "query",
        "--federation",
        kept.root,
        "media",
        "--match",
        "--where",
        f"sha256={kept.probe}",
        "--purpose",
        "csam-investigation",
        "--case-ref",
        "X",
        "--json",
        cwd=tmp_path,
    )

    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["query"]["dataset"] == "media"
    assert doc["query"]["predicates"] == [
        {"field": "sha256", "comparator": "eq", "values": [kept.probe], "max_distance": None}
    ]
    by_node = results_by_node(doc)
    assert sorted(by_node) == sorted(DEMO_AGENCIES)
    assert {n: r["answer"]["hit"] for n, r in by_node.items()} == {
        "freedonia": True,
        "ruritania": True,
        "sylvania": False,
    }
    assert all(len(r["answer_digest"]) == 64 for r in by_node.values())
    assert all(r["verification"]["verdict"] == "verified" for r in by_node.values())


def test_query_with_explicit_gateway_and_token_file(kept: KeptFederation, tmp_path: Path) -> None:
    gateway = (kept.root / "run" / "gateway.addr").read_text().strip()

    run = warm_liaison(
        "query",
        "--gateway",
        gateway,
        "--token-file",
        kept.root / "investigator.jwt",
        "media",
        "--count",
        "--purpose",
        "statistics",
        "--case-ref",
        "GEN-STATS-1",
        "--nodes",
        "ruritania",
        "--json",
        cwd=tmp_path,
    )

    assert run.returncode == 0, run.stderr
    assert [r["node_id"] for r in json.loads(run.stdout)["results"]] == ["ruritania"]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (
            ["nosuch", "--match", "--where", "sha256=00"],
            ("unknown dataset 'nosuch'", "media"),
        ),
        (["media", "--match", "--where", "sha256=not-hex"], ("sha256", "hexadecimal")),
        (["media", "--match", "--where", "sha256"], ("--where", "FIELD=VALUE")),
        (["media", "--match", "--where", "colour=red"], ("colour",)),
        (
            ["media", "--match", "--where", f"sha256={'ab' * 32}", "--nodes", "atlantis"],
            ("atlantis",),
        ),
    ],
)
def test_query_rejects_bad_input_in_one_line(
    kept: KeptFederation, tmp_path: Path, args: list[str], fragments: tuple[str, ...]
) -> None:
    run = warm_liaison(
        "query",
        "--federation",
        kept.root,
        *args,
        "--purpose",
        "csam-investigation",
        "--case-ref",
        "X",
        cwd=tmp_path,
    )

    assert_one_line_error(run, *fragments)


@pytest.mark.parametrize(
    "option",
    [
        ["--limit", "-1"],
        ["--limit", "5000000000"],
        ["--deadline-ms", "-1"],
        ["--deadline-ms", "5000000000"],
    ],
    ids=" ".join,
)
def test_query_rejects_out_of_range_numbers(
    kept: KeptFederation, tmp_path: Path, option: list[str]
) -> None:
    run = warm_liaison(
        "query",
        "--federation",
        kept.root,
        "media",
        "--count",
        "--purpose",
        "statistics",
        "--case-ref",
        "GEN-STATS-1",
        *option,
        cwd=tmp_path,
    )

    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert "error: " in last
    assert option[0].lstrip("-").split("-")[0] in last  # names limit or deadline


def test_query_with_a_forged_token_is_refused(kept: KeptFederation, tmp_path: Path) -> None:
    gateway = (kept.root / "run" / "gateway.addr").read_text().strip()

    run = warm_liaison(
        "query",
        "--gateway",
        gateway,
        "--token",
        "not-a-jwt",
        "media",
        "--match",
        "--where",
        f"sha256={kept.probe}",
        "--purpose",
        "csam-investigation",
        "--case-ref",
        "X",
        cwd=tmp_path,
    )

    assert_one_line_error(run, "token")


def test_query_without_case_ref_is_a_usage_error(tmp_path: Path) -> None:
    run = warm_liaison(
        "query",
        "--gateway",
        "127.0.0.1:9",
        "--token",
        "t",
        "media",
        "--match",
        "--purpose",
        "csam-investigation",
        cwd=tmp_path,
    )

    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert (
        run.stderr.strip()
        .splitlines()[-1]
        .endswith("error: the following arguments are required: --case-ref")
    )


def test_query_to_a_gateway_that_is_not_running(unused_address: str, tmp_path: Path) -> None:
    run = warm_liaison(
        "query",
        "--gateway",
        unused_address,
        "--token",
        "t",
        "media",
        "--match",
        "--where",
        f"sha256={'ab' * 32}",
        "--purpose",
        "csam-investigation",
        "--case-ref",
        "X",
        cwd=tmp_path,
    )

    assert_one_line_error(run, unused_address, "not answering")
    assert run.returncode == 1


def test_query_without_a_gateway_says_how_to_name_one(tmp_path: Path) -> None:
    run = warm_liaison(
        "query",
        "--federation",
        tmp_path,  # no run/gateway.addr, no investigator.jwt
        "media",
        "--match",
        "--where",
        f"sha256={'ab' * 32}",
        "--purpose",
        "csam-investigation",
        "--case-ref",
        "X",
        cwd=tmp_path,
    )

    assert_one_line_error(run, "--gateway")


# ---------------------------------------------------------------------------
# liaison init, node serve, token issue


def test_init_writes_private_keys_owner_only(initialised: Path) -> None:
    signing_keys = ["gateway/gateway.key", "idp/inv.key", "nodes/a/node.key", "nodes/b/node.key"]
    private = sorted(initialised.rglob("*.key"))  # signing keys, and any TLS keys

    assert set(signing_keys) <= {p.relative_to(initialised).as_posix() for p in private}
    for name in signing_keys:
        assert (initialised / name).with_suffix(".pub").exists()
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        if path.name in ("transform.key", "audit.key"):  # HMAC secrets: 32 bytes in hex
            assert len(bytes.fromhex(path.read_text().strip())) == 32
        else:
            assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----")


def test_init_writes_configs_that_load(initialised: Path) -> None:
    gateway = load_gateway_config(initialised / "gateway" / "gateway.toml")
    nodes = {n: load_node_config(initialised / "nodes" / n / "node.toml", CATALOG_V1) for n in "ab"}

    assert [n.id for n in gateway.nodes] == ["a", "b"]
    assert [i.issuer for i in gateway.issuers] == [dev_issuer("inv")]
    assert all(n.public_key.exists() for n in gateway.nodes)
    assert gateway.signing_key.exists()
    for node_id, config in nodes.items():
        assert config.node_id == node_id
        assert config.signing_key.exists()
        assert config.policy.exists()
        assert sorted(d.dataset for d in config.datasets) == ["accounts", "cases", "media"]
        assert [t.public_key.resolve() for t in config.trusted_gateways] == [
            (initialised / "gateway" / "gateway.pub").resolve()
        ]
    # Every node the gateway knows is one of the nodes init wrote, at its address.
    assert {n.id: n.address for n in gateway.nodes} == {n: c.listen for n, c in nodes.items()}


def test_init_refuses_a_non_empty_folder(initialised: Path, tmp_path: Path) -> None:
    before = sorted(p.relative_to(initialised) for p in initialised.rglob("*"))

    run = warm_liaison("init", initialised, "--node", "c", cwd=tmp_path)

    assert_one_line_error(run, str(initialised), "not empty")
    assert sorted(p.relative_to(initialised) for p in initialised.rglob("*")) == before


def test_init_needs_a_node(tmp_path: Path) -> None:
    assert_one_line_error(warm_liaison("init", tmp_path / "empty", cwd=tmp_path), "--node")


@pytest.mark.parametrize("base_port", ["65535", "70000", "-5"])
def test_init_rejects_ports_that_cannot_exist(tmp_path: Path, base_port: str) -> None:
    # Nodes take the ports after the gateway's; none may fall outside 1..65535.
    run = warm_liaison(
        "init", tmp_path / "fed", "--node", "a", f"--base-port={base_port}", cwd=tmp_path
    )

    assert run.returncode != 0, "init wrote configs with impossible ports"
    assert "Traceback" not in run.stderr
    assert "port" in run.stderr


def _port0_copy(config: Path, name: str, *replacements: tuple[str, str]) -> Path:
    """A copy of a node config beside it (relative paths still hold) on port 0."""
    text = config.read_text()
    lines = [
        'listen = "127.0.0.1:0"' if line.startswith("listen = ") else line
        for line in text.splitlines()
    ]
    text = "\n".join(lines) + "\n"
    for old, new in replacements:
        assert old in text
        text = text.replace(old, new)
    copy = config.with_name(name)
    copy.write_text(text)
    return copy


def test_node_serve_starts_and_stops_cleanly_on_sigterm(initialised: Path, tmp_path: Path) -> None:
    config = _port0_copy(initialised / "nodes" / "a" / "node.toml", "node-port0.toml")
    port_file = tmp_path / "a.addr"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "liaison",
            "node",
            "serve",
            "--config",
            str(config),
            "--port-file",
            str(port_file),
        ],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_file.exists() and process.poll() is None:
            assert time.monotonic() < deadline, "node did not write its port file"
            time.sleep(0.05)
        assert process.poll() is None, "node exited while starting"
        host, _, port = port_file.read_text().strip().rpartition(":")
        assert host == "127.0.0.1"
        with socket.create_connection((host, int(port)), timeout=5):
            pass  # it accepts connections

        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=STOP_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    logged = [json.loads(line) for line in stderr.splitlines()]
    # The hex case of each hash column is learnt and the PDQ index built from
    # the database before the node serves.
    messages = [e["msg"] for e in logged]
    detected = [e for e in logged if e["msg"] == "hex case detected"]
    assert {e["field"] for e in detected} == {"sha256", "md5", "pdq"}
    assert [m for m in messages if m != "hex case detected"] == [
        "pdq index built",
        "node serving",
        "node stopping",
    ]
    assert messages.index("pdq index built") > messages.index("hex case detected")
    built, serving = (next(e for e in logged if e["msg"] == m) for m in messages[-3:-1])
    assert built["dataset"] == "media"
    assert serving["node_id"] == "a"
    assert serving["address"] == f"{host}:{port}"
    assert stdout == ""


def test_node_serve_names_a_missing_table(initialised: Path, tmp_path: Path) -> None:
    config = _port0_copy(
        initialised / "nodes" / "b" / "node.toml",
        "missing-table.toml",
        ('table = "media"', 'table = "no_such_table"'),
    )

    run = warm_liaison("node", "serve", "--config", config, cwd=tmp_path)

    assert_one_line_error(run, "'no_such_table'", "does not exist", "media")


def test_node_serve_names_a_missing_config(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"

    run = warm_liaison("node", "serve", "--config", missing, cwd=tmp_path)

    assert_one_line_error(run, str(missing), "does not exist")


def test_token_issue_prints_a_jwt_the_gateway_accepts(initialised: Path, tmp_path: Path) -> None:
    run = warm_liaison(
        "token",
        "issue",
        "--key",
        initialised / "idp" / "inv.key",
        "--agency",
        "inv",
        "--subject",
        "inv.bob",
        "--roles",
        "investigator, analyst",
        "--ttl",
        "600",
        "--attribute",
        "clearance=secret",
        "--attribute",
        "unit = victim-identification",
        cwd=tmp_path,
    )

    assert run.returncode == 0, run.stderr
    token = run.stdout.strip()
    assert token.count(".") == 2 and "\n" not in token
    config = load_gateway_config(initialised / "gateway" / "gateway.toml")
    requester = TokenVerifier(config.issuers, config.audience).verify(token)
    assert requester.agency == "inv"
    assert requester.subject == "inv.bob"
    assert requester.roles == ("investigator", "analyst")
    assert requester.issuer == dev_issuer("inv")
    assert requester.attributes == {"clearance": "secret", "unit": "victim-identification"}


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--ttl", "0"], "--ttl"),
        (["--ttl", "999999"], "--ttl"),
        (["--roles", " , "], "--roles"),
    ],
)
def test_token_issue_rejects_bad_options(
    initialised: Path, tmp_path: Path, args: list[str], fragment: str
) -> None:
    run = warm_liaison(
        "token",
        "issue",
        "--key",
        initialised / "idp" / "inv.key",
        "--agency",
        "inv",
        "--subject",
        "inv.bob",
        *args,
        cwd=tmp_path,
    )

    assert_one_line_error(run, fragment)


def test_token_issue_with_a_missing_key(tmp_path: Path) -> None:
    missing = tmp_path / "nokey.pem"

    run = warm_liaison(
        "token", "issue", "--key", missing, "--agency", "inv", "--subject", "s", cwd=tmp_path
    )

    assert_one_line_error(run, str(missing), "does not exist")


# ---------------------------------------------------------------------------
# help and version


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["init"],
        ["node"],
        ["node", "serve"],
        ["gateway"],
        ["gateway", "serve"],
        ["token"],
        ["token", "issue"],
        ["query"],
        ["demo"],
    ],
    ids=lambda c: " ".join(c) or "liaison",
)
def test_help(command: list[str], tmp_path: Path) -> None:
    run = warm_liaison(*command, "--help", cwd=tmp_path)

    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert run.stdout.startswith(f"usage: liaison {' '.join(command)}".rstrip())


def test_version(tmp_path: Path) -> None:
    run = liaison("--version", cwd=tmp_path)

    assert run.returncode == 0
    assert run.stdout.startswith("liaison ")


def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    run = liaison(cwd=tmp_path)

    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert "usage: liaison" in run.stderr
