"""Laying out a federation in a folder: keys, node configs, gateway config.

Layout (every path inside the configs is relative, so the folder can move):

    DIR/gateway/gateway.toml  gateway.key  gateway.pub
    DIR/idp/<agency>.key .pub         development identity providers
    DIR/nodes/<id>/node.toml  node.key  node.pub  policy.toml  <data>
    DIR/audit/audit.key                 the HMAC key selectors are logged under

Ledgers appear when the processes first run: DIR/gateway/ledger.sqlite3 and
DIR/nodes/<id>/state/receipts.sqlite3.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liaison.errors import ConfigError
from liaison.keys import SigningKey
from liaison.tokens import dev_issuer

GATEWAY_ID = "gateway"
AUDIENCE = "liaison-gateway"


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_toml_str(v) for v in values) + "]"


@dataclass(frozen=True, slots=True)
class NodeLayout:
    node_id: str
    folder: Path
    database_url: str
    # dataset -> (table, {catalog field: local column})
    mapping: Mapping[str, tuple[str, Mapping[str, str]]]
    policy_text: str
    listen: str = "127.0.0.1:0"
    # Serve the duty officers' inbox, trusting a development identity
    # provider of the agency's own (idp/<node id>.key, made if missing).
    # None: when the policy has an approve rule, i.e. someone can decide there.
    inbox: bool | None = None

    @property
    def serves_inbox(self) -> bool:
        if self.inbox is not None:
            return self.inbox
        return any(
            line.replace(" ", "") == 'effect="approve"' for line in self.policy_text.splitlines()
        )

    @property
    def config(self) -> Path:
        return self.folder / "node.toml"

    @property
    def public_key(self) -> Path:
        return self.folder / "node.pub"


PKI_DIR = "pki"
WEB_CERTS = ("console", "dev-idp")
AUDIT_KEY = "audit/audit.key"


def write_private_text(path: Path, text: str) -> None:
    """Write ``text`` owner-only (0600), also over an existing file with a wider mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def write_secret(path: Path) -> None:
    """32 random bytes in hex, owner-only."""
    write_private_text(path, secrets.token_hex(32) + "\n")


def write_pki(root: Path, node_ids: Sequence[str]) -> None:
    """A development CA and certificates for the gateway and every node (mutual TLS).

    Each certificate carries only the key usage of its role: nodes serve
    (serverAuth), the gateway connects (clientAuth).
    """
    from liaison.tls import CertRole, write_dev_pki

    roles = {GATEWAY_ID: [CertRole.CLIENT], **{n: [CertRole.SERVER] for n in node_ids}}
    # The web consoles and the development identity provider serve HTTPS.
    roles.update({name: [CertRole.SERVER] for name in WEB_CERTS})
    write_dev_pki(root / PKI_DIR, roles)


# Written into every config: no load balancer watches a loopback federation's health.
_DRAIN_LINES = (
    "# After SIGTERM, seconds to report NOT_SERVING while still answering, so a load",
    "# balancer moves away before the port closes (5 if unset). Here: none to wait for.",
    "drain_s = 0",
)


def write_node(layout: NodeLayout, gateway_public_key: Path, *, tls: bool = False) -> None:
    """Write a node's key pair, policy and config; with ``tls``, serve mutual TLS from pki/."""
    folder = layout.folder
    folder.mkdir(parents=True, exist_ok=True)
    SigningKey.generate().write(folder / "node.key", folder / "node.pub")
    write_secret(folder / "transform.key")
    (folder / "policy.toml").write_text(layout.policy_text)
    gw_rel = Path("..", "..", gateway_public_key.relative_to(folder.parent.parent))
    lines = [
        f"# Node of agency {layout.node_id}: written by `liaison init`; edit freely.",
        "[node]",
        f"id = {_toml_str(layout.node_id)}",
        f"listen = {_toml_str(layout.listen)}",
        f"database_url = {_toml_str(layout.database_url)}",
        'policy = "policy.toml"',
        'signing_key = "node.key"',
        "# The node's own secret for keyed-hash transforms: never share it.",
        'transform_key = "transform.key"',
        'state_dir = "state"',
        *_DRAIN_LINES,
        "",
        "# Receipts of every request this node answers: a tamper-evident Merkle log.",
        "[ledger]",
        'location = "state/receipts.sqlite3"',
        "checkpoint_interval_s = 30",
        "",
        "[[trusted_gateway]]",
        f"id = {_toml_str(GATEWAY_ID)}",
        f"public_key = {_toml_str(gw_rel.as_posix())}",
    ]
    if tls:
        from liaison.tls import certificate_identity

        pin = certificate_identity(folder.parent.parent / PKI_DIR / f"{GATEWAY_ID}.crt")
        lines += [
            "# Only a TLS peer with this gateway's certificate key may ask (SHA-256 of its",
            "# public key); a co-member's certificate from the same CA gets PERMISSION_DENIED.",
            f"tls_spki_sha256 = {_toml_list([pin.spki_sha256])}",
        ]
    for dataset, (table, columns) in layout.mapping.items():
        lines += [
            "",
            f"[datasets.{dataset}]",
            f"table = {_toml_str(table)}",
            f"[datasets.{dataset}.fields]",
        ]
        lines += [f"{field} = {_toml_str(column)}" for field, column in columns.items()]
    if layout.serves_inbox:
        root = folder.parent.parent
        if not (root / "idp" / f"{layout.node_id}.pub").exists():
            write_dev_idp(root, layout.node_id)
        lines += [
            "",
            "# Where the agency's duty officers decide follow-up requests (a port of its",
            "# own, for the agency's network), and who vouches for them.",
            "[inbox]",
            'listen = "127.0.0.1:0"',
            "",
            "# Development identity provider: replace with the agency's real one.",
            "[[inbox.issuer]]",
            f"issuer = {_toml_str(dev_issuer(layout.node_id))}",
            f"agencies = {_toml_list([layout.node_id])}",
            f"public_keys = {_toml_list([f'../../idp/{layout.node_id}.pub'])}",
            'algorithms = ["EdDSA"]',
        ]
    if tls:
        pki = f"../../{PKI_DIR}"
        lines += [
            "",
            "# Mutual TLS: only clients with a certificate from this CA may connect.",
            "[tls]",
            f"certificate = {_toml_str(f'{pki}/{layout.node_id}.crt')}",
            f"private_key = {_toml_str(f'{pki}/{layout.node_id}.key')}",
            f"client_ca = {_toml_str(f'{pki}/ca.pem')}",
        ]
    layout.config.write_text("\n".join(lines) + "\n")


def write_gateway_keys(root: Path) -> Path:
    folder = root / "gateway"
    folder.mkdir(parents=True, exist_ok=True)
    SigningKey.generate().write(folder / "gateway.key", folder / "gateway.pub")
    return folder / "gateway.pub"


def write_dev_idp(root: Path, agency: str) -> Path:
    """Create a development identity provider key for ``agency``; return its private key path."""
    folder = root / "idp"
    SigningKey.generate().write(folder / f"{agency}.key", folder / f"{agency}.pub")
    return folder / f"{agency}.key"


def write_gateway_config(
    root: Path,
    agencies: Sequence[str],
    nodes: Mapping[str, str],
    listen: str = "127.0.0.1:0",
    *,
    tls: bool = False,
    checkpoint_interval_s: int = 30,
    ledger: str = "ledger.sqlite3",
    name: str = "gateway.toml",
    deadline_ms: int = 2000,
) -> Path:
    """Write gateway.toml trusting the dev IdPs of ``agencies`` and knowing ``nodes``.

    ``nodes`` maps node id to address.
    """
    folder = root / "gateway"
    audit_key = root / AUDIT_KEY
    if not audit_key.exists():
        audit_key.parent.mkdir(parents=True, exist_ok=True)
        write_secret(audit_key)
    lines = [
        "# Federation gateway: written by `liaison init`; edit freely.",
        "[gateway]",
        f"id = {_toml_str(GATEWAY_ID)}",
        f"listen = {_toml_str(listen)}",
        'signing_key = "gateway.key"',
        f"audience = {_toml_str(AUDIENCE)}",
        f"default_deadline_ms = {deadline_ms}",
        *_DRAIN_LINES,
        "",
        "# The federation ledger: every request is logged here before any node is asked.",
        "# Use a PostgreSQL URL to share it between gateway replicas' hosts.",
        "[ledger]",
        f"location = {_toml_str(ledger)}",
        f"audit_key = {_toml_str(f'../{AUDIT_KEY}')}",
        f"checkpoint_interval_s = {checkpoint_interval_s}",
    ]
    for agency in agencies:
        lines += [
            "",
            "# Development identity provider: replace with the agency's real one.",
            "[[issuer]]",
            f"issuer = {_toml_str(dev_issuer(agency))}",
            f"agencies = {_toml_list([agency])}",
            f"public_keys = {_toml_list([f'../idp/{agency}.pub'])}",
            'algorithms = ["EdDSA"]',
        ]
    for node_id, address in nodes.items():
        lines += [
            "",
            "[[node]]",
            f"id = {_toml_str(node_id)}",
            f"address = {_toml_str(address)}",
            f"public_key = {_toml_str(f'../nodes/{node_id}/node.pub')}",
        ]
    if tls:
        lines += [
            "",
            "# Mutual TLS towards nodes: our client certificate, and the CA nodes' come from.",
            "[node_tls]",
            f"certificate = {_toml_str(f'../{PKI_DIR}/{GATEWAY_ID}.crt')}",
            f"private_key = {_toml_str(f'../{PKI_DIR}/{GATEWAY_ID}.key')}",
            f"ca = {_toml_str(f'../{PKI_DIR}/ca.pem')}",
        ]
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


STARTER_POLICY = """\
# Policy of node {node_id}. Default deny: nothing is released until a rule
# permits it. See the README, "Writing a policy".
version = 1
agency = {node_id_toml}

[[rule]]
id = "hash-hits"
effect = "permit"
description = "Any agency may learn whether we hold a file hash (hit/no-hit)."
agencies = ["*"]
roles = ["investigator"]
purposes = ["csam-investigation", "victim-identification"]
datasets = ["media"]
operations = ["match"]
match_fields = ["sha256", "md5"]
"""


def create_catalog_schema(database_url: str) -> None:
    """Create empty tables named and shaped exactly as the catalog, for a new node."""
    import sqlalchemy as sa

    from liaison.catalog import CATALOG_V1, FieldType

    types: dict[FieldType, sa.types.TypeEngine[Any]] = {
        FieldType.DATE: sa.Date(),
        FieldType.BOOL: sa.Boolean(),
        FieldType.INT: sa.BigInteger(),
    }
    metadata = sa.MetaData()
    for d in CATALOG_V1.datasets:
        sa.Table(
            d.name,
            metadata,
            sa.Column("id", sa.Integer, primary_key=True),
            *(
                sa.Column(f.name, types.get(f.type, sa.String(256)), index=f.selector)
                for f in d.fields
                if not f.computed_from
            ),
        )
    engine = sa.create_engine(database_url)
    metadata.create_all(engine)
    engine.dispose()


def init_federation(
    root: Path,
    node_ids: Sequence[str],
    agencies: Sequence[str],
    base_port: int = 50060,
    *,
    tls: bool = True,
) -> None:
    """Create a new federation folder with catalog-shaped, empty SQLite nodes.

    The gateway listens on ``base_port`` and node ``i`` on ``base_port + 1 + i``.
    """
    from liaison.catalog import CATALOG_V1

    if root.exists() and any(root.iterdir()):
        raise ConfigError(f"{root} is not empty; choose a new folder for the federation")
    if not node_ids:
        raise ConfigError("name at least one node (--node ID)")
    if not 1024 <= base_port <= 65535 - len(node_ids):
        raise ConfigError(
            f"base port {base_port} does not leave room for the gateway and {len(node_ids)} "
            f"node(s); choose one in 1024..{65535 - len(node_ids)}"
        )
    gateway_pub = write_gateway_keys(root)
    if tls:
        write_pki(root, node_ids)
    for agency in agencies:
        write_dev_idp(root, agency)
    addresses = {}
    for i, node_id in enumerate(node_ids, start=1):
        # Computed fields (pdq_distance) have no column: nodes compute them.
        mapping = {
            d.name: (d.name, {f.name: f.name for f in d.fields if not f.computed_from})
            for d in CATALOG_V1.datasets
        }
        folder = root / "nodes" / node_id
        addresses[node_id] = f"127.0.0.1:{base_port + i}"
        write_node(
            NodeLayout(
                node_id=node_id,
                folder=folder,
                database_url="sqlite:///data.sqlite3",
                mapping=mapping,
                policy_text=STARTER_POLICY.format(node_id=node_id, node_id_toml=_toml_str(node_id)),
                listen=addresses[node_id],
            ),
            gateway_pub,
            tls=tls,
        )
        create_catalog_schema(f"sqlite:///{folder / 'data.sqlite3'}")
    write_gateway_config(root, agencies, addresses, listen=f"127.0.0.1:{base_port}", tls=tls)
