"""`liaison audit`, run as an auditor runs it: real processes on a copy of real ledgers.

One `liaison demo --workdir` run per module writes a federation whose gateway
has logged five queries and whose three nodes hold their receipts. Each test
works on its own copy of that folder, so it may edit the SQLite files as
someone with write access to them could, and then runs `python -m liaison
audit ...` in a process of its own and reads what it printed (forked from an
interpreter that imported the command line once: ``tests.conftest.warm_liaison``).
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from liaison.demo.data import probes
from liaison.keys import SigningKey
from liaison.ledger.entries import AuditKey
from liaison.ledger.log import Ledger
from liaison.ledger.logged import gateway_origin
from tests.conftest import warm_liaison
from tests.support import Run, assert_one_line_error, liaison, tampering

NODES = ("freedonia", "ruritania", "sylvania")
QUERIES = 7
# The demo ends with one follow-up to Freedonia: the gateway logs the request,
# its delivery and the decision; Freedonia receipts the request and the decision.
HOLDER = "freedonia"
# The demo's gateway ledger: `opened`, then request and outcome of each query,
# then the follow-up's three entries.
GATEWAY_SIZE = 1 + 2 * QUERIES + 3
# Where the last query's request entry stands: cutting the gateway's log there
# removes that query and the follow-up after it.
LAST_REQUEST = 2 * QUERIES - 1


def node_size(node: str) -> int:
    """Each node's receipts: `opened`, one receipt per query, the follow-up's two at the holder."""
    return 1 + QUERIES + (2 if node == HOLDER else 0)


GATEWAY = Path("gateway") / "ledger.sqlite3"
GATEWAY_PUB = Path("gateway") / "gateway.pub"
AUDIT_KEY = Path("audit") / "audit.key"
VERIFIED = "VERIFIED: every entry, the tree and every checkpoint check out, up to the newest"
RECONCILED = "RECONCILED: every answered request is on both sides with the same digests"


def receipts(node: str) -> Path:
    return Path("nodes") / node / "state" / "receipts.sqlite3"


def node_pub(node: str) -> Path:
    return Path("nodes") / node / "node.pub"


@dataclass(frozen=True, slots=True)
class Demo:
    root: Path
    query_ids: tuple[str, ...]


@pytest.fixture(scope="module")
def demo_template(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """`liaison demo --workdir DIR --json`: five queries logged, once per module."""
    base = tmp_path_factory.mktemp("audit-demo")
    run = liaison("demo", "--workdir", base / "federation", "--json", "--no-consoles", cwd=base)
    assert run.returncode == 0, run.stderr
    queries = json.loads(run.stdout)["queries"]
    assert len(queries) == QUERIES
    return Demo(base / "federation", tuple(q["query_id"] for q in queries))


def agency_databases(folder: str, names: list[str]) -> list[str]:
    """The records each demo node serves (``nodes/<id>/<id>.sqlite3``): no audit reads them."""
    node = Path(folder).name
    return [f"{node}.sqlite3"] if node in NODES and f"{node}.sqlite3" in names else []


@pytest.fixture
def demo(demo_template: Demo, tmp_path: Path) -> Demo:
    """A private copy of the demo federation's keys, configs and ledgers, to tamper with freely."""
    root = tmp_path / "federation"
    shutil.copytree(demo_template.root, root, ignore=agency_databases)
    return Demo(root, demo_template.query_ids)


def audit(demo: Demo, *args: str | Path) -> Run:
    """`liaison audit ARGS`, run in the federation folder (paths are relative to it)."""
    return warm_liaison("audit", *args, cwd=demo.root)


def last_line(run: Run) -> str:
    return run.stdout.strip().splitlines()[-1]


def assert_failed_cleanly(run: Run) -> None:
    assert run.returncode == 1, run
    assert "Traceback" not in run.stderr, run.stderr


def checkpoint_where(path: Path, position: int) -> str:
    """How `verify` names stored checkpoint ``position`` (from 1) of the ledger at ``path``."""
    with tampering(path) as conn:
        rows = conn.execute(
            "SELECT size, time_ms FROM liaison_ledger_checkpoints ORDER BY id"
        ).fetchall()
    size, time_ms = rows[position - 1]
    return f"checkpoint #{position} (size {size}, time {time_ms})"


def edit_entry(path: Path, index: int) -> None:
    """Change one character of entry ``index``, leaving its stored leaf hash as it was."""
    with tampering(path) as conn:
        (raw,) = conn.execute(
            "SELECT entry FROM liaison_ledger_entries WHERE idx = ?", (index,)
        ).fetchone()
        assert b"genovia" in raw
        conn.execute(
            "UPDATE liaison_ledger_entries SET entry = ? WHERE idx = ?",
            (raw.replace(b"genovia", b"genovix", 1), index),
        )


def delete_entries(path: Path, first: int, last: int | None = None) -> None:
    """Delete entries ``first``..``last`` (to the end when ``last`` is None)."""
    with tampering(path) as conn:
        conn.execute(
            "DELETE FROM liaison_ledger_entries WHERE idx >= ? AND idx <= ?",
            (first, last if last is not None else 2**62),
        )


def roll_back_as_insider(demo: Demo, keep: int) -> None:
    """Cut the gateway's log at ``keep`` entries and re-sign it, as its operator could.

    The checkpoints past the cut are dropped too, and the writer, given the real
    key, signs a fresh one: the ledger then verifies on its own.
    """
    path = demo.root / GATEWAY
    with tampering(path) as conn:
        conn.execute("DELETE FROM liaison_ledger_entries WHERE idx >= ?", (keep,))
        conn.execute("DELETE FROM liaison_ledger_checkpoints WHERE size > ?", (keep,))
    key = SigningKey.from_pem_file(demo.root / "gateway" / "gateway.key")
    Ledger.open(str(path), key, gateway_origin("gateway")).close()


# --- verify ------------------------------------------------------------------------------


LEDGERS = [
    pytest.param(GATEWAY, GATEWAY_PUB, GATEWAY_SIZE, id="gateway"),
    *(pytest.param(receipts(n), node_pub(n), node_size(n), id=n) for n in NODES),
]


@pytest.mark.parametrize(("ledger", "key", "size"), LEDGERS)
def test_verify_passes_on_an_untouched_ledger(
    demo: Demo, ledger: Path, key: Path, size: int
) -> None:
    run = audit(demo, "verify", ledger, "--key", key)

    assert run.returncode == 0, run
    assert run.stderr == ""
    assert last_line(run).startswith(f"{VERIFIED} checkpoint: {size} entries signed ")
    assert last_line(run).endswith(" ago); no witness, so a longer log may exist")
    assert f"entries     {size}  " in run.stdout
    assert "PROBLEM" not in run.stdout


def test_verify_json_describes_the_ledger(demo: Demo) -> None:
    run = audit(demo, "verify", GATEWAY, "--key", GATEWAY_PUB, "--json")

    assert run.returncode == 0, run
    doc = json.loads(run.stdout)
    assert doc["ok"] is True
    assert doc["entries"] == GATEWAY_SIZE
    assert doc["kinds"] == {
        "opened": 1,
        "request": QUERIES,
        "outcome": QUERIES,
        "followup": 1,
        "followup-delivery": 1,
        "followup-outcome": 1,
    }
    assert doc["checkpoints"] == 2  # one when the gateway opened the ledger, one when it closed
    assert doc["latest_checkpoint"]["size"] == GATEWAY_SIZE
    assert doc["root"] == doc["latest_checkpoint"]["root"]
    assert len(bytes.fromhex(doc["root"])) == 32
    assert doc["origin"] == "liaison.gateway/gateway"
    assert doc["problems"] == []
    assert doc["unfinished_requests"] == 0


Tamper = Callable[[Demo], tuple[Path, Path, str, str]]


def gateway_entry_edited(demo: Demo) -> tuple[Path, Path, str, str]:
    edit_entry(demo.root / GATEWAY, 3)
    return (
        GATEWAY,
        GATEWAY_PUB,
        "entry 3",
        "its bytes do not hash to its stored leaf: it was edited",
    )


def gateway_entry_deleted(demo: Demo) -> tuple[Path, Path, str, str]:
    delete_entries(demo.root / GATEWAY, 3, 3)
    return (
        GATEWAY,
        GATEWAY_PUB,
        "entry 3",
        "missing: the next stored entry is 4, so entries 3..3 were deleted",
    )


def gateway_tail_truncated(demo: Demo) -> tuple[Path, Path, str, str]:
    where = checkpoint_where(demo.root / GATEWAY, 2)
    delete_entries(demo.root / GATEWAY, GATEWAY_SIZE - 2)
    return (
        GATEWAY,
        GATEWAY_PUB,
        where,
        f"vouches for {GATEWAY_SIZE} entries but the ledger holds {GATEWAY_SIZE - 2}: entries "
        f"{GATEWAY_SIZE - 2}..{GATEWAY_SIZE - 1} were removed (truncated)",
    )


def receipt_edited(demo: Demo) -> tuple[Path, Path, str, str]:
    edit_entry(demo.root / receipts("sylvania"), 2)
    return (
        receipts("sylvania"),
        node_pub("sylvania"),
        "entry 2",
        "its bytes do not hash to its stored leaf: it was edited",
    )


def gateway_entry_edited_as_text(demo: Demo) -> tuple[Path, Path, str, str]:
    # SQL's replace() on a BLOB stores TEXT: the easiest edit with the sqlite3 shell.
    with tampering(demo.root / GATEWAY) as conn:
        conn.execute(
            "UPDATE liaison_ledger_entries SET entry = replace(entry, 'genovia', 'genovix') "
            "WHERE idx = 3"
        )
    return (
        GATEWAY,
        GATEWAY_PUB,
        "entry 3",
        "its bytes do not hash to its stored leaf: it was edited",
    )


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(gateway_entry_edited, id="entry-edited"),
        pytest.param(gateway_entry_deleted, id="entry-deleted"),
        pytest.param(gateway_tail_truncated, id="tail-truncated"),
        pytest.param(receipt_edited, id="receipt-edited"),
        pytest.param(gateway_entry_edited_as_text, id="entry-edited-as-text"),
    ],
)
def test_verify_fails_naming_the_first_tampered_place(demo: Demo, tamper: Tamper) -> None:
    # prepare
    ledger, key, where, message = tamper(demo)

    # execute
    run = audit(demo, "verify", ledger, "--key", key)

    # assert
    assert_failed_cleanly(run)
    assert f"PROBLEM  {where}: {message}" in run.stdout.splitlines()
    assert last_line(run).startswith("FAILED: ")
    assert last_line(run).endswith(f"; the first is at {where}")
    assert "VERIFIED" not in run.stdout


def test_verify_json_lists_the_problems_in_order(demo: Demo) -> None:
    delete_entries(demo.root / GATEWAY, 3, 3)

    run = audit(demo, "verify", GATEWAY, "--key", GATEWAY_PUB, "--json")

    assert_failed_cleanly(run)
    doc = json.loads(run.stdout)
    assert doc["ok"] is False
    assert doc["entries"] == GATEWAY_SIZE - 1
    assert doc["problems"][0]["where"] == "entry 3"
    assert doc["problems"][0]["index"] == 3
    # The outcome of the query whose request was deleted now has no request before it.
    assert doc["problems"][1]["where"] == "entry 4"
    assert demo.query_ids[1] in doc["problems"][1]["message"]


def test_verify_with_another_logs_key_fails(demo: Demo) -> None:
    run = audit(demo, "verify", GATEWAY, "--key", node_pub("ruritania"))

    assert_failed_cleanly(run)
    assert "PROBLEM  checkpoint #1: does not verify (note has no signature by key" in run.stdout
    assert last_line(run).endswith("the first is at checkpoint #1")


def test_a_saved_checkpoint_passes_later_and_reveals_a_rollback(demo: Demo) -> None:
    # prepare: an auditor saves the checkpoint they verified
    saved = demo.root.parent / "seen.checkpoint"
    first = audit(demo, "verify", GATEWAY, "--key", GATEWAY_PUB, "--save-checkpoint", saved)
    assert first.returncode == 0, first
    note = saved.read_text()
    assert note.startswith(f"liaison.gateway/gateway\n{GATEWAY_SIZE}\n")

    # execute: the next audit, against the same ledger
    again = audit(demo, "verify", GATEWAY, "--key", GATEWAY_PUB, "--checkpoint", saved)

    # assert
    assert again.returncode == 0, again
    assert last_line(again).startswith(VERIFIED)
    assert last_line(again).endswith("; no witness saw more")

    # prepare: the operator removes the last query and re-signs with the real key
    roll_back_as_insider(demo, keep=GATEWAY_SIZE - 2)
    alone = audit(demo, "verify", GATEWAY, "--key", GATEWAY_PUB)
    assert alone.returncode == 0, alone  # on its own, the rolled-back ledger verifies

    # execute
    caught = audit(demo, "verify", GATEWAY, "--key", GATEWAY_PUB, "--checkpoint", saved)

    # assert
    assert_failed_cleanly(caught)
    time_ms = note.splitlines()[3].split()[1]
    where = f"kept checkpoint 1 (size {GATEWAY_SIZE}, time {time_ms})"
    assert last_line(caught) == f"FAILED: 1 problem(s); the first is at {where}"
    assert (
        f"PROBLEM  {where}: you saw {GATEWAY_SIZE} entries, the ledger now holds "
        f"{GATEWAY_SIZE - 1}: entries {GATEWAY_SIZE - 1}..{GATEWAY_SIZE - 1} were removed "
        "(truncated)" in caught.stdout
    )


def test_the_real_nodes_receipts_witness_a_rollback_of_the_gateways_copy(demo: Demo) -> None:
    # prepare: a copy cut back to the gateway's first checkpoint (its `opened`
    # entry) with the sqlite3 module alone: no key needed, and it verifies alone
    with tampering(demo.root / GATEWAY) as conn:
        conn.execute("DELETE FROM liaison_ledger_entries WHERE idx >= 1")
        conn.execute("DELETE FROM liaison_ledger_checkpoints WHERE size > 1")
    alone = audit(demo, "verify", GATEWAY, "--key", GATEWAY_PUB)
    assert alone.returncode == 0, alone
    assert "WARNING  witnesses: none given" in alone.stdout

    # execute: the receipts the demo's nodes wrote hold the checkpoints they were shown
    witnesses = [a for node in NODES for a in ("--witness", str(receipts(node)))]
    run = audit(demo, "verify", GATEWAY, "--key", GATEWAY_PUB, *witnesses, "--json")

    # assert: each node saw each query's request logged past the cut, and the
    # holder the follow-up request too (its receipt holds that checkpoint)
    assert_failed_cleanly(run)
    doc = json.loads(run.stdout)
    assert len(doc["problems"]) == len(NODES) * QUERIES + 1
    assert {p["message"].split(",")[0] for p in doc["problems"]} == {
        *(f"the witness saw {1 + 2 * q + 1} entries" for q in range(QUERIES)),
        f"the witness saw {1 + 2 * QUERIES + 1} entries",
    }
    assert [w["checkpoints_verified"] for w in doc["witnesses"]] == [0] * len(NODES)
    assert doc["warnings"] == []


def test_a_failing_ledger_saves_no_checkpoint(demo: Demo) -> None:
    saved = demo.root.parent / "seen.checkpoint"
    edit_entry(demo.root / GATEWAY, 3)

    run = audit(demo, "verify", GATEWAY, "--key", GATEWAY_PUB, "--save-checkpoint", saved)

    assert_failed_cleanly(run)
    assert not saved.exists()


# --- prove and verify-proof -------------------------------------------------------------


@pytest.fixture(scope="module")
def inclusion_template(demo_template: Demo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`prove --index 3`: the proof file for the second query's request, made once."""
    out = tmp_path_factory.mktemp("proof") / "proof.json"
    run = audit(demo_template, "prove", GATEWAY, "--key", GATEWAY_PUB, "--index", "3", "--out", out)
    assert run.returncode == 0, run
    assert run.stdout.strip() == f"wrote liaison.inclusion-proof.v1 to {out}"
    return out


@pytest.fixture
def inclusion(inclusion_template: Path, demo: Demo) -> Path:
    """A private copy of the inclusion proof file, to alter freely."""
    out = demo.root.parent / "proof.json"
    shutil.copyfile(inclusion_template, out)
    return out


def test_an_inclusion_proof_verifies_offline(demo: Demo, inclusion: Path) -> None:
    run = audit(demo, "verify-proof", inclusion, "--key", GATEWAY_PUB)

    assert run.returncode == 0, run
    assert run.stdout.startswith(
        f"VERIFIED: entry 3 is in the log liaison.gateway/gateway of {GATEWAY_SIZE} entries"
    )
    entry = json.loads(json.loads(inclusion.read_text())["entry"])
    assert entry["query_id"] == demo.query_ids[1]
    assert entry["kind"] == "request"


def altered(document: dict[str, Any], what: str) -> dict[str, Any]:
    changed = dict(document)
    if what == "entry":
        assert "victim-identification" in document["entry"]
        changed["entry"] = document["entry"].replace("victim-identification", "statistics")
    elif what == "path":
        path = list(document["path"])
        path[1] = f"{int(path[1][:2], 16) ^ 1:02x}{path[1][2:]}"
        changed["path"] = path
    elif what == "index":
        changed["index"] = document["index"] + 1
    return changed


@pytest.mark.parametrize(
    ("what", "key", "fragment"),
    [
        ("entry", GATEWAY_PUB, f"inclusion proof for leaf 3 in a tree of size {GATEWAY_SIZE}"),
        ("path", GATEWAY_PUB, f"inclusion proof for leaf 3 in a tree of size {GATEWAY_SIZE}"),
        ("index", GATEWAY_PUB, f"inclusion proof for leaf 4 in a tree of size {GATEWAY_SIZE}"),
        ("nothing", node_pub("sylvania"), "note has no signature by key liaison.gateway/gateway+"),
    ],
)
def test_an_altered_proof_or_another_key_fails(
    demo: Demo, inclusion: Path, what: str, key: Path, fragment: str
) -> None:
    # prepare
    inclusion.write_text(json.dumps(altered(json.loads(inclusion.read_text()), what)))

    # execute
    run = audit(demo, "verify-proof", inclusion, "--key", key)

    # assert
    assert_failed_cleanly(run)
    assert run.stdout.startswith("FAILED: ")
    assert fragment in run.stdout
    assert "VERIFIED" not in run.stdout


def test_verify_proof_json(demo: Demo, inclusion: Path) -> None:
    good = audit(demo, "verify-proof", inclusion, "--key", GATEWAY_PUB, "--json")
    inclusion.write_text(json.dumps(altered(json.loads(inclusion.read_text()), "entry")))
    bad = audit(demo, "verify-proof", inclusion, "--key", GATEWAY_PUB, "--json")

    assert good.returncode == 0, good
    assert json.loads(good.stdout)["ok"] is True
    assert json.loads(good.stdout)["kind"] == "inclusion"
    assert_failed_cleanly(bad)
    assert json.loads(bad.stdout)["ok"] is False
    assert "leads to root" in json.loads(bad.stdout)["error"]


def test_a_consistency_proof_verifies_offline(demo: Demo) -> None:
    out = demo.root.parent / "consistency.json"
    made = audit(demo, "prove", GATEWAY, "--key", GATEWAY_PUB, "--consistency", "1", "--out", out)

    run = audit(demo, "verify-proof", out, "--key", GATEWAY_PUB)

    assert made.returncode == 0, made
    assert run.returncode == 0, run
    assert run.stdout.strip() == (
        f"VERIFIED: the log liaison.gateway/gateway of {GATEWAY_SIZE} entries extends, "
        "unchanged, the log of 1 entries"
    )


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (
            ["--index", str(GATEWAY_SIZE)],
            (f"the ledger has entries 0..{GATEWAY_SIZE - 1}; there is no entry {GATEWAY_SIZE}",),
        ),
        (["--consistency", "5"], ("no signed checkpoint of size 5",)),
    ],
)
def test_prove_what_cannot_be_proved_is_a_one_line_error(
    demo: Demo, args: list[str], fragments: tuple[str, ...]
) -> None:
    out = demo.root.parent / "proof.json"

    run = audit(demo, "prove", GATEWAY, "--key", GATEWAY_PUB, *args, "--out", out)

    assert_one_line_error(run, *fragments)
    assert not out.exists()


def test_prove_refuses_a_ledger_that_does_not_verify(demo: Demo) -> None:
    out = demo.root.parent / "proof.json"
    edit_entry(demo.root / GATEWAY, 3)

    run = audit(demo, "prove", GATEWAY, "--key", GATEWAY_PUB, "--index", "1", "--out", out)

    assert_one_line_error(run, "the ledger does not verify (entry 3: ", "would prove nothing")
    assert not out.exists()


# --- reconcile ---------------------------------------------------------------------------


def test_reconcile_the_demo_federation(demo: Demo) -> None:
    run = audit(demo, "reconcile", "--federation", ".")

    assert run.returncode == 0, run
    assert last_line(run) == RECONCILED
    rows = {line.split()[0]: line.split()[1:] for line in run.stdout.splitlines() if line}
    assert rows["gateway"] == [str(GATEWAY_SIZE), "verified"]
    for node in NODES:
        assert rows[node] == [str(node_size(node)), str(QUERIES), "verified"]


def test_reconcile_json(demo: Demo) -> None:
    run = audit(demo, "reconcile", "--federation", demo.root, "--json")

    assert run.returncode == 0, run
    doc = json.loads(run.stdout)
    assert doc["ok"] is True
    assert doc["differences"] == []
    assert doc["receipts"] == dict.fromkeys(NODES, QUERIES)
    assert doc["gateway"]["entries"] == GATEWAY_SIZE
    assert sorted(doc["nodes"]) == list(NODES)


def test_reconcile_named_ledgers(demo: Demo) -> None:
    run = audit(
        demo,
        "reconcile",
        "--gateway",
        GATEWAY,
        "--gateway-key",
        GATEWAY_PUB,
        "--node",
        "ruritania",
        receipts("ruritania"),
        node_pub("ruritania"),
        "--json",
    )

    assert run.returncode == 0, run
    doc = json.loads(run.stdout)
    assert doc["ok"] is True
    assert doc["receipts"] == {"ruritania": QUERIES}


def test_reconcile_finds_a_receipt_the_node_lost(demo: Demo) -> None:
    # prepare: ruritania's receipt for the second query is deleted
    delete_entries(demo.root / receipts("ruritania"), 2, 2)

    # execute
    run = audit(demo, "reconcile", "--federation", ".", "--json")

    # assert
    assert_failed_cleanly(run)
    doc = json.loads(run.stdout)
    assert doc["ok"] is False
    assert doc["gateway"]["ok"] is True
    assert doc["nodes"]["ruritania"]["ok"] is False
    assert doc["nodes"]["ruritania"]["problems"][0]["where"] == "entry 2"
    assert [n for n in NODES if doc["nodes"][n]["ok"]] == ["freedonia", "sylvania"]
    assert doc["receipts"]["ruritania"] == QUERIES - 1
    assert doc["differences"] == [
        {
            "node_id": "ruritania",
            "query_id": demo.query_ids[1],
            "message": "the gateway recorded this node's answer (answered) but the node holds "
            "no receipt for it",
            "problem": True,
        }
    ]


def test_reconcile_names_every_node_that_saw_the_gateways_lost_entries(demo: Demo) -> None:
    # prepare: the last query's request and outcome (and the follow-up after
    # them) are deleted from the gateway
    delete_entries(demo.root / GATEWAY, LAST_REQUEST)

    # execute
    run = audit(demo, "reconcile", "--federation", ".")

    # assert
    assert_failed_cleanly(run)
    last = demo.query_ids[-1][:8]
    lines = [" ".join(line.split()) for line in run.stdout.splitlines()]
    for node in NODES:
        assert (
            f"PROBLEM {node} {last} the gateway showed this node a ledger of "
            f"{LAST_REQUEST + 1} entries; it now holds {LAST_REQUEST}: entries were removed"
        ) in lines
    assert last_line(run).startswith("NOT RECONCILED: ")
    assert last_line(run).endswith("; a ledger fails verification")


def test_reconcile_catches_a_gateway_that_rewrote_its_history_with_its_own_key(
    demo: Demo,
) -> None:
    # prepare: the last query (and the follow-up after it) is cut and the log
    # re-signed, so the gateway ledger verifies on its own; only the
    # checkpoints nodes kept show it
    roll_back_as_insider(demo, keep=LAST_REQUEST)

    # execute
    run = audit(demo, "reconcile", "--federation", ".", "--json")

    # assert
    assert_failed_cleanly(run)
    doc = json.loads(run.stdout)
    assert doc["gateway"]["ok"] is True
    assert all(doc["nodes"][n]["ok"] for n in NODES)
    rewritten = {
        d["node_id"]
        for d in doc["differences"]
        if d["problem"]
        and d["query_id"] == demo.query_ids[-1]
        and "no longer hash to the checkpoint it gave this node" in d["message"]
    }
    assert rewritten == set(NODES)


# --- hash and show --selector ----------------------------------------------------------


SHA256 = probes().shared_sha256  # what the demo's first two queries match on
EMAIL = probes().shared_email  # what its third query looks up


@pytest.mark.parametrize("value", [SHA256, SHA256.upper()], ids=["lower", "upper"])
def test_hash_is_the_keyed_hash_of_the_canonical_value(demo: Demo, value: str) -> None:
    run = audit(demo, "hash", value, "--audit-key", AUDIT_KEY, "--field", "sha256")

    assert run.returncode == 0, run
    assert run.stdout.strip() == AuditKey.from_file(demo.root / AUDIT_KEY).hash(SHA256.lower())


def test_hash_without_a_field_hashes_the_value_as_given(demo: Demo) -> None:
    run = audit(demo, "hash", SHA256.upper(), "--audit-key", AUDIT_KEY)

    assert run.returncode == 0, run
    assert run.stdout.strip() == AuditKey.from_file(demo.root / AUDIT_KEY).hash(SHA256.upper())


def test_show_finds_the_requests_for_a_selector(demo: Demo) -> None:
    run = audit(
        demo,
        "show",
        GATEWAY,
        "--selector",
        SHA256.upper(),
        "--field",
        "sha256",
        "--audit-key",
        AUDIT_KEY,
        "--json",
    )

    assert run.returncode == 0, run
    found = json.loads(run.stdout)
    assert [(r["index"], r["kind"], r["query_id"]) for r in found] == [
        (1, "request", demo.query_ids[0]),
        (3, "request", demo.query_ids[1]),
    ]


def test_show_finds_a_nodes_receipts_for_a_selector(demo: Demo) -> None:
    run = audit(
        demo,
        "show",
        receipts("freedonia"),
        "--selector",
        SHA256,
        "--field",
        "sha256",
        "--audit-key",
        AUDIT_KEY,
    )

    assert run.returncode == 0, run
    assert last_line(run) == "2 entries"
    assert [line.split()[2] for line in run.stdout.splitlines()[2:-1]] == ["receipt", "receipt"]


def test_show_selector_without_the_audit_key_is_a_one_line_error(demo: Demo) -> None:
    run = audit(demo, "show", GATEWAY, "--selector", SHA256)

    assert_one_line_error(run, "needs the audit key (--audit-key FILE)")


def test_no_ledger_holds_a_selector_in_clear(demo: Demo) -> None:
    forms = [
        form.encode() for value in (SHA256, EMAIL) for form in (value, value.lower(), value.upper())
    ]
    forms += [bytes.fromhex(SHA256), base64.b64encode(bytes.fromhex(SHA256))]
    # Each ledger file, with any journal SQLite left beside it.
    files = [
        path
        for ledger in (GATEWAY, *(receipts(n) for n in NODES))
        for path in (demo.root / ledger).parent.glob(f"{ledger.name}*")
    ]
    assert len(files) >= 1 + len(NODES)

    for path in files:
        data = path.read_bytes()
        assert [f for f in forms if f in data] == [], path
    # ...while the keyed hash of the value is there: these are the files that logged it.
    hashed = AuditKey.from_file(demo.root / AUDIT_KEY).hash(SHA256).encode()
    assert all(
        hashed in (demo.root / ledger).read_bytes() for ledger in (GATEWAY, receipts("sylvania"))
    )


# --- show filters --------------------------------------------------------------------------


def shown(demo: Demo, ledger: Path, *filters: str) -> list[dict[str, Any]]:
    run = audit(demo, "show", ledger, *filters, "--json")
    assert run.returncode == 0, run
    rows: list[dict[str, Any]] = json.loads(run.stdout)
    return rows


def test_show_by_agency(demo: Demo) -> None:
    requests = shown(demo, GATEWAY, "--agency", "genovia", "--kind", "request")
    asked = shown(demo, GATEWAY, "--agency", "genovia")
    held = shown(demo, receipts("sylvania"), "--agency", "genovia")

    assert [(r["kind"], r["query_id"]) for r in requests] == [
        ("request", q) for q in demo.query_ids
    ]
    # And the follow-up Genovia filed: its request, delivery and decision.
    assert [r["kind"] for r in asked if r["kind"] != "request"] == [
        "followup",
        "followup-delivery",
        "followup-outcome",
    ]
    assert [(r["kind"], r["query_id"]) for r in held] == [("receipt", q) for q in demo.query_ids]
    assert shown(demo, GATEWAY, "--agency", "ruritania") == []


def test_show_by_purpose(demo: Demo) -> None:
    found = shown(demo, GATEWAY, "--purpose", "statistics")

    assert [r["query_id"] for r in found] == list(demo.query_ids[3:5])
    assert {r["purpose"] for r in found} == {"statistics"}


def test_show_by_node_kind_and_case(demo: Demo) -> None:
    asked = shown(demo, GATEWAY, "--node", "sylvania")
    outcomes = shown(demo, GATEWAY, "--kind", "outcome")
    cases = shown(demo, GATEWAY, "--case-ref", "GEN-STATS-*", "--kind", "request")

    # Every query asked sylvania: its request and its outcome both name it
    # (the follow-up went to Freedonia alone).
    assert [r["index"] for r in asked] == list(range(1, 1 + 2 * QUERIES))
    assert [r["query_id"] for r in outcomes] == list(demo.query_ids)
    assert {r["kind"] for r in outcomes} == {"outcome"}
    assert [r["query_id"] for r in cases] == list(demo.query_ids[3:5])


def test_show_since_the_future_finds_nothing(demo: Demo) -> None:
    run = audit(demo, "show", GATEWAY, "--since", "2999-01-01")

    assert run.returncode == 0, run
    assert last_line(run) == "0 entries"


def test_show_a_bad_time_is_a_one_line_error(demo: Demo) -> None:
    run = audit(demo, "show", GATEWAY, "--since", "yesterday")

    assert_one_line_error(run, "'yesterday' is not a date or time", "ISO 8601")


# --- report ---------------------------------------------------------------------------------


def test_report_prints_tables_for_an_oversight_body(demo: Demo) -> None:
    run = audit(demo, "report", GATEWAY, "--key", GATEWAY_PUB)

    assert run.returncode == 0, run
    lines = [line.split() for line in run.stdout.splitlines()]
    assert run.stdout.startswith(f"Queries from the beginning to now: {QUERIES}\n")
    assert ["agency", "queries"] in lines
    assert ["genovia", str(QUERIES)] in lines
    assert ["purpose", "queries"] in lines
    assert ["statistics", "2"] in lines
    assert ["dataset", "queries"] in lines
    assert ["node", "answered", "denied"] in lines
    assert last_line(run) == "ledger verified"


def test_report_json_adds_up(demo: Demo) -> None:
    run = audit(demo, "report", GATEWAY, "--key", GATEWAY_PUB, "--json")

    assert run.returncode == 0, run
    doc = json.loads(run.stdout)
    assert doc["verified"] is True
    assert doc["queries"] == QUERIES
    assert doc["unfinished"] == 0
    for table in ("by_agency", "by_purpose", "by_dataset"):
        assert sum(doc[table].values()) == QUERIES, table
    assert sorted(doc["by_node"]) == list(NODES)
    for node, statuses in doc["by_node"].items():
        assert sum(statuses.values()) == QUERIES, node
    assert doc["by_purpose"]["statistics"] == 2


def test_report_on_a_tampered_ledger_says_its_numbers_cannot_be_trusted(demo: Demo) -> None:
    edit_entry(demo.root / GATEWAY, 3)

    run = audit(demo, "report", GATEWAY, "--key", GATEWAY_PUB)

    assert_failed_cleanly(run)
    assert last_line(run).startswith("LEDGER FAILS VERIFICATION (entry 3: ")
    assert last_line(run).endswith("these numbers cannot be trusted")


# --- wrong paths and keys ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["verify", "nosuch.sqlite3", "--key", GATEWAY_PUB],
        ["show", "nosuch.sqlite3"],
        ["prove", "nosuch.sqlite3", "--key", GATEWAY_PUB, "--index", "0", "--out", "p.json"],
    ],
    ids=["verify", "show", "prove"],
)
def test_a_missing_ledger_is_a_one_line_error(demo: Demo, args: list[str | Path]) -> None:
    run = audit(demo, *args)

    assert_one_line_error(run, f"no ledger at {demo.root / 'nosuch.sqlite3'}; check the path")


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        (Path("nosuch.pub"), "public key file nosuch.pub does not exist"),
        (Path("gateway") / "gateway.key", "is not a PEM public key"),
    ],
    ids=["missing", "private-key"],
)
def test_a_wrong_key_file_is_a_one_line_error(demo: Demo, key: Path, fragment: str) -> None:
    run = audit(demo, "verify", GATEWAY, "--key", key)

    assert_one_line_error(run, fragment)


def test_a_file_that_is_no_database_is_a_one_line_error(demo: Demo) -> None:
    run = audit(demo, "verify", Path("gateway") / "gateway.toml", "--key", GATEWAY_PUB)

    assert_one_line_error(run, "cannot open the ledger at", "gateway.toml")
