"""``liaison node check``: everything a node needs to start, checked without serving.

The same steps as ``build_node`` (config, keys, policy, database, mapping,
state, receipts ledger), each reported on its own line, so one run shows
every problem rather than the first. The database is opened exactly as the
node opens it (read-only session) and the check confirms the session is
read-only; nothing in the agency database is written.
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from liaison.catalog import CATALOG_V1, Catalog
from liaison.checks import Attention, CheckResult, Checks, check_issuers, check_ledger, check_tls
from liaison.config import NodeConfig, load_node_config
from liaison.databases import masked
from liaison.errors import BackendError, ConfigError
from liaison.keys import SigningKey, VerifyingKey
from liaison.tls import CertRole
from node.database import MappedDataset, bind_schema, connect, open_read_only
from node.transform_key import read_transform_key, require_if_used
from policies.load import load_policy_and_text
from policies.model import Effect, Policy

# A check must finish: a host that drops packets fails after this, not never.
CONNECT_TIMEOUT_S = 10


def check_node(path: Path, catalog: Catalog = CATALOG_V1) -> list[CheckResult]:
    """Run every check of the node configured at ``path``; see the module docstring."""
    checks = Checks()
    config = checks.run("config", lambda: _config(path, catalog))
    if config is None:
        for name in (
            "signing key",
            "trusted gateways",
            "policy",
            "transform key",
            "tls",
            "database",
            "mapping",
            "state folder",
            "receipts ledger",
            "inbox",
        ):
            checks.skip(name, "the config does not load")
        return checks.results
    checks.run("signing key", lambda: _signing_key(config))
    checks.run("trusted gateways", lambda: _trusted(config))
    policy = checks.run("policy", lambda: _policy(config, catalog))
    checks.run("transform key", lambda: _transform_key(config, policy))
    if config.tls is None:
        checks.run("tls", lambda: (None, "not configured: plaintext, for loopback only"))
    else:
        tls = config.tls
        checks.run("tls", lambda: (None, check_tls(tls, CertRole.SERVER)))
    engine = checks.run("database", lambda: _database(config))
    if engine is None:
        checks.skip("mapping", "the database cannot be used")
    else:
        try:
            checks.run("mapping", lambda: _mapping(engine, config, catalog))
        finally:
            engine.dispose()
    checks.run("state folder", lambda: (None, _writable_folder(config.state_dir)))
    checks.run("receipts ledger", lambda: (None, check_ledger(config.receipts)))
    checks.run("inbox", lambda: (None, _inbox(config, policy)))
    return checks.results


def _inbox(config: NodeConfig, policy: Policy | None) -> str | Attention:
    """Who can decide follow-up requests here: the inbox's issuers, and the policy's officers."""
    inbox = config.inbox
    officers = sorted(
        {
            r
            for rule in (policy.rules if policy else ())
            if rule.effect is Effect.APPROVE
            for r in rule.officers
        }
    )
    if inbox is None:
        if officers:
            return Attention(
                "not configured, but the policy has approve rules: follow-up requests are "
                "taken in and nobody can decide them; add [inbox] with [[inbox.issuer]]"
            )
        return "not configured: follow-up requests are refused by the policy (no approve rule)"
    checked = check_issuers(inbox.issuers, inbox.audience)
    issuers = checked.detail if isinstance(checked, Attention) else checked
    if not officers:
        return Attention(
            f"{inbox.listen}: {issuers}; but no approve rule names officers, so nobody can open it"
        )
    line = f"{inbox.listen}, audience {inbox.audience!r}, officers {', '.join(officers)}: {issuers}"
    return Attention(line) if isinstance(checked, Attention) else line


def _config(path: Path, catalog: Catalog) -> tuple[NodeConfig, str]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    config = load_node_config(path, catalog)
    return config, f"{config.path}: node {config.node_id!r}, {len(config.datasets)} dataset(s)"


def _signing_key(config: NodeConfig) -> tuple[None, str]:
    key = SigningKey.from_pem_file(config.signing_key)
    return None, f"{config.signing_key} (key id {key.key_id})"


def _trusted(config: NodeConfig) -> tuple[None, str]:
    shown = []
    for gateway in config.trusted_gateways:
        key = VerifyingKey.from_pem_file(gateway.public_key)
        shown.append(f"{gateway.id} (key id {key.key_id})")
    return None, ", ".join(shown)


def _policy(config: NodeConfig, catalog: Catalog) -> tuple[Policy, str]:
    policy, _text = load_policy_and_text(config.policy, catalog)
    return policy, f"{config.policy}: {len(policy.permits)} permit rule(s), loads against catalog"


def _transform_key(config: NodeConfig, policy: Policy | None) -> tuple[None, str]:
    secret = read_transform_key(config.transform_key)
    if policy is not None:
        require_if_used(policy, secret)
    if not secret:
        return None, "none configured (the policy needs none)"
    return None, f"{config.transform_key} ({len(secret)} bytes)"


def _database(config: NodeConfig) -> tuple[Engine, str]:
    engine = open_read_only(config.database_url, connect_timeout_s=CONNECT_TIMEOUT_S)
    try:
        with connect(engine) as conn:
            if not _session_is_read_only(conn):
                raise BackendError(
                    f"the session at {masked(engine.url)} is not read-only; the node would "
                    "refuse no writes (report this as a bug)"
                )
    except BaseException:
        engine.dispose()
        raise
    return engine, f"{masked(engine.url)}: reachable, session read-only"


def _session_is_read_only(conn: sa.Connection) -> bool:
    """Ask the database whether this session refuses writes, in its own words."""
    dialect = conn.dialect.name
    if dialect == "sqlite":
        return bool(conn.execute(sa.text("PRAGMA query_only")).scalar())
    if dialect == "postgresql":
        return str(conn.execute(sa.text("SHOW transaction_read_only")).scalar()) == "on"
    # MySQL 8 names it transaction_read_only; MariaDB (before 11.1) tx_read_only.
    mariadb = getattr(conn.dialect, "is_mariadb", False)
    variable = "tx_read_only" if mariadb else "transaction_read_only"
    return bool(conn.execute(sa.text(f"SELECT @@session.{variable}")).scalar())


def _mapping(engine: Engine, config: NodeConfig, catalog: Catalog) -> tuple[None, str]:
    bound: dict[str, MappedDataset] = bind_schema(engine, config.datasets, catalog)
    tables = {m.dataset: m.table for m in config.datasets}
    shown = [
        f"{name} -> {tables[name]} ({mapped.relation}, {len(mapped.columns)} column(s))"
        for name, mapped in bound.items()
    ]
    return None, "; ".join(shown)


def _writable_folder(folder: Path) -> str:
    """``folder`` exists and is writable, or can be created."""
    if folder.exists():
        if not folder.is_dir():
            raise ConfigError(f"state_dir {folder} is not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"state_dir {folder} is not writable by this user")
        return f"{folder} (writable)"
    parent = folder.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"state_dir {folder} does not exist and {parent} is not writable")
    return f"{folder} will be created at first start"
