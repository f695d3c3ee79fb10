"""A node's log never carries the selectors it was asked for, even when its database fails.

SQLAlchemy puts a failing statement's bound parameters into the exception
text, and drivers may quote values in their own messages. Each test runs a
real node as a subprocess (``liaison node serve``, debug logging) on SQLite,
PostgreSQL and MariaDB, pulls its table away mid-service, asks it for hashes,
and then reads every line the process wrote.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from liaison.keys import SigningKey
from liaison.query import Comparator, Operation, Predicate, Query
from tests.support import (
    Process,
    call_node,
    make_request,
    sign_request,
    spawn,
    terminate,
    write_local_node,
)

REPO = Path(__file__).resolve().parent.parent
NODE_ID = "quietland"
POLICY = f"""\
version = 1
agency = "{NODE_ID}"

[[rule]]
id = "investigate-media"
effect = "permit"
agencies = ["genovia"]
roles = ["investigator"]
purposes = ["csam-investigation"]
datasets = ["media"]
operations = ["match", "count", "records"]
match_fields = ["sha256", "md5", "category"]
release = ["sha256", "md5", "category"]
max_rows = 100
"""
LOCAL = sa.MetaData()
REGISTER = sa.Table(
    "quiet_register",
    LOCAL,
    sa.Column("rid", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("sha_hex", sa.String(64), nullable=False),
    sa.Column("md5_hex", sa.String(32), nullable=False),
    sa.Column("cat", sa.String(16), nullable=False),
)
MAPPING = {"media": ("quiet_register", {"sha256": "sha_hex", "md5": "md5_hex", "category": "cat"})}
# The selectors asked while the database fails: none may appear in the log.
ASKED_SHA = hashlib.sha256(b"a selector the log must not show").hexdigest()
ASKED_MD5 = hashlib.md5(
    b"another selector the log must not show", usedforsecurity=False
).hexdigest()


@contextmanager
def node_process(config: Path, run_dir: Path) -> Iterator[Process]:
    """``liaison node serve`` at debug level as a real process; yields its address and log."""
    process = spawn("node", "node", config, run_dir, "--log-level", "debug")
    try:
        yield process
    finally:
        terminate(process)


def fill(engine: sa.Engine) -> None:
    LOCAL.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            REGISTER.insert(),
            [
                {
                    "rid": i,
                    "sha_hex": hashlib.sha256(f"file {i}".encode()).hexdigest().upper(),
                    "md5_hex": hashlib.md5(f"file {i}".encode(), usedforsecurity=False).hexdigest(),
                    "cat": "A",
                }
                for i in range(20)
            ],
        )


def spellings(*values: str) -> set[str]:
    """Every way a log line could carry ``values`` (any case), and telling halves of them."""
    out = set()
    for v in values:
        out |= {v.lower(), v.upper(), v[: len(v) // 2].lower(), v[len(v) // 2 :].lower()}
    return out


def test_a_failing_database_leaves_no_selector_in_the_log(
    database_url: str, tmp_path: Path
) -> None:
    # prepare: a node serving the register, which then disappears under it
    engine = sa.create_engine(database_url)
    fill(engine)
    root = tmp_path / "federation"
    config = write_local_node(
        root, NODE_ID, database_url=database_url, mapping=MAPPING, policy_text=POLICY
    )
    gateway_key = SigningKey.from_pem_file(root / "gateway" / "gateway.key")
    queries = [
        Query("media", Operation.MATCH, (Predicate("sha256", Comparator.EQ, (ASKED_SHA,)),)),
        Query(
            "media",
            Operation.RECORDS,
            (Predicate("md5", Comparator.IN, (ASKED_MD5, ASKED_SHA[:32])),),
            fields=("sha256", "category"),
        ),
        Query("media", Operation.COUNT, (Predicate("sha256", Comparator.IN, (ASKED_SHA,)),)),
    ]

    # execute
    codes = []
    with node_process(config, tmp_path) as process:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE quiet_register"))
        for query in queries:
            signed = sign_request(gateway_key, make_request(query, audience=(NODE_ID,)))
            with pytest.raises(grpc.RpcError) as info:
                call_node(process.address, signed)
            codes.append((info.value.code(), info.value.details()))
    engine.dispose()
    lines = process.log.read_text().splitlines()

    # assert: the failure happened, was logged usefully, and nothing names a selector
    assert codes == [
        (
            grpc.StatusCode.UNAVAILABLE,
            "the agency database could not answer; the node operator's log has details",
        )
    ] * len(queries)
    leaked = [
        line
        for line in lines
        if any(s in line.lower() or s in line for s in spellings(ASKED_SHA, ASKED_MD5))
    ]
    assert leaked == []
    failures = [json.loads(line) for line in lines if '"database error"' in line]
    assert len(failures) == len(queries), lines
    for entry in failures:
        assert entry["error"] in ("OperationalError", "ProgrammingError"), entry
        assert entry.get("code"), entry
        assert "quiet_register" in entry["statement"], entry
