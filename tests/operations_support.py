"""What the operations tests share: a small node and gateway as real processes, and probes.

A node here keeps a register of a few file hashes and PDQ hashes in a SQLite
table of its own, under a policy with one plain permit, one rate-limited
permit, and default deny for everything else.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from liaison.demo.data import INVESTIGATOR_AGENCY
from liaison.demo.federation import write_dev_idp, write_gateway_config
from liaison.messages import SearchInput
from liaison.query import Comparator, Operation, Predicate, Query
from tests.support import Process, write_local_node

T = TypeVar("T")

NODE_POLICY = """\
version = 1
agency = "{node_id}"

[[rule]]
id = "hash-hits"
effect = "permit"
agencies = ["genovia"]
roles = ["investigator"]
purposes = ["csam-investigation"]
datasets = ["media"]
operations = ["match"]
match_fields = ["sha256"]

[[rule]]
id = "limited-hits"
effect = "permit"
agencies = ["genovia"]
roles = ["investigator"]
purposes = ["victim-identification"]
datasets = ["media"]
operations = ["match"]
match_fields = ["sha256"]
rate_limit = {{ investigator = "2/hour" }}
"""
ROWS = 5
MAPPING = {"media": ("ops_register", {"sha256": "sha_hex", "pdq": "pdq_hex", "category": "cat"})}


def stored_sha(i: int) -> str:
    return hashlib.sha256(f"stored file {i}".encode()).hexdigest()


def write_register(database_url: str) -> None:
    engine = sa.create_engine(database_url)
    meta = sa.MetaData()
    table = sa.Table(
        "ops_register",
        meta,
        sa.Column("rid", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("sha_hex", sa.String(64), nullable=False),
        sa.Column("pdq_hex", sa.String(64), nullable=False),
        sa.Column("cat", sa.String(8), nullable=False),
    )
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            table.insert(),
            [
                {
                    "rid": i,
                    "sha_hex": stored_sha(i),
                    "pdq_hex": hashlib.sha256(f"pdq {i}".encode()).hexdigest(),
                    "cat": "A",
                }
                for i in range(ROWS)
            ],
        )
    engine.dispose()


def set_keys(config: Path, table: str, **values: object) -> None:
    """Set ``key = value`` lines in ``[table]`` of a generated config (replacing any there)."""
    lines = config.read_text().splitlines()
    start = lines.index(f"[{table}]")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    for key, value in values.items():
        rendered = f"{key} = {json.dumps(value)}"
        found = [i for i in range(start + 1, end) if lines[i].startswith(f"{key} = ")]
        if found:
            lines[found[0]] = rendered
        else:
            lines.insert(start + 1, rendered)
            end += 1
    config.write_text("\n".join(lines) + "\n")


def make_node(
    root: Path, node_id: str, *, database_url: str = "", serve_from: str = "", **node_keys: object
) -> Path:
    """A node over its own register, written as `liaison init` would; its config.

    The register is a SQLite file in ``root`` unless ``database_url`` names a
    database; the node reaches it at ``serve_from`` if given (a proxy).
    """
    root.mkdir(parents=True, exist_ok=True)
    database_url = database_url or f"sqlite:///{root / f'{node_id}.sqlite3'}"
    write_register(database_url)
    config = write_local_node(
        root,
        node_id,
        database_url=serve_from or database_url,
        mapping=MAPPING,
        policy_text=NODE_POLICY.format(node_id=node_id),
    )
    if node_keys:
        set_keys(config, "node", **node_keys)
    return config


def make_gateway(root: Path, nodes: dict[str, str], **gateway_keys: object) -> Path:
    """A gateway config of its own knowing ``nodes`` (id -> address), trusting genovia's IdP."""
    if not (root / "idp" / f"{INVESTIGATOR_AGENCY}.key").exists():
        write_dev_idp(root, INVESTIGATOR_AGENCY)
    tag = uuid.uuid4().hex[:8]
    config = write_gateway_config(
        root, [INVESTIGATOR_AGENCY], nodes, ledger=f"ledger-{tag}.sqlite3", name=f"gw-{tag}.toml"
    )
    if gateway_keys:
        set_keys(config, "gateway", **gateway_keys)
    return config


def free_port() -> int:
    """A loopback port nothing listens on (for a node that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hash_match(i: int = 0, purpose: str = "csam-investigation", **fields: Any) -> SearchInput:
    query = Query("media", Operation.MATCH, (Predicate("sha256", Comparator.EQ, (stored_sha(i),)),))
    return SearchInput(query, purpose, "GEN-OPS-1", **fields)


def hash_count(i: int = 0, **fields: Any) -> SearchInput:
    """A count: no rule permits it, so every node denies it (default-deny)."""
    query = Query("media", Operation.COUNT, (Predicate("sha256", Comparator.EQ, (stored_sha(i),)),))
    return SearchInput(query, "csam-investigation", "GEN-OPS-1", **fields)


def health_status(address: str, service: str = "", timeout_s: float = 2) -> str:
    """The health service's answer at ``address`` (SERVING, NOT_SERVING), or the call's failure."""
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            return f"failed: {exc.code().name}"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def wait_for(check: Callable[[], T | None], timeout_s: float, what: str, step_s: float = 0.05) -> T:
    """Poll ``check`` until it returns neither None nor False; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(step_s)


def log_events(process: Process) -> list[dict[str, Any]]:
    """Every line the process wrote so far; each must be one JSON object."""
    events = []
    for line in process.log.read_text().splitlines():
        event = json.loads(line)
        assert isinstance(event, dict), line
        events.append(event)
    return events


def metrics_address(process: Process) -> str:
    """Where the process serves /metrics, from its "serving" log line."""

    def logged() -> str | None:
        for event in log_events(process):
            if event["msg"].endswith(" serving") and "metrics_address" in event:
                return str(event["metrics_address"])
        return None

    return wait_for(logged, 10, f"{process.name} logging its metrics address")


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(address: str) -> Samples:
    """GET http://ADDRESS/metrics and parse the Prometheus text format."""
    with socket.create_connection(_split(address), timeout=5) as conn:
        conn.sendall(f"GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
        raw = b""
        while chunk := conn.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b"\r\n", 1)[0].split()[1] == b"200", head
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 for a series not yet shown."""
    return samples.get((name, frozenset(labels.items())), 0.0)
