"""``liaison gateway check``: everything a gateway needs to start, checked without serving.

The same steps as ``build_gateway`` (config, keys, issuers, TLS, ledger),
each reported on its own line. Nodes are not called: whether they answer is
for health checks of a running federation, not for a config check.
"""

from __future__ import annotations

from pathlib import Path

from liaison.checks import Attention, CheckResult, Checks, check_issuers, check_ledger, check_tls
from liaison.config import GatewayConfig, load_gateway_config
from liaison.errors import ConfigError
from liaison.keys import SigningKey, VerifyingKey
from liaison.ledger.entries import AuditKey
from liaison.tls import CertRole


def check_gateway(path: Path) -> list[CheckResult]:
    """Run every check of the gateway configured at ``path``; see the module docstring."""
    checks = Checks()
    config = checks.run("config", lambda: _config(path))
    if config is None:
        for name in (
            "signing key",
            "audit key",
            "node keys",
            "issuers",
            "tls",
            "node tls",
            "ledger",
        ):
            checks.skip(name, "the config does not load")
        return checks.results
    checks.run("signing key", lambda: _signing_key(config))
    checks.run("audit key", lambda: _audit_key(config))
    checks.run("node keys", lambda: _node_keys(config))
    checks.run("issuers", lambda: _issuers(config))
    tls, node_tls = config.tls, config.node_tls
    if tls is None:
        checks.run("tls", lambda: (None, "not configured: plaintext, for loopback only"))
    else:
        checks.run("tls", lambda: (None, check_tls(tls, CertRole.SERVER)))
    if node_tls is None:
        checks.run("node tls", lambda: (None, "not configured: plaintext to nodes"))
    else:
        checks.run("node tls", lambda: (None, check_tls(node_tls, CertRole.CLIENT)))
    checks.run("ledger", lambda: (None, check_ledger(config.ledger)))
    return checks.results


def _config(path: Path) -> tuple[GatewayConfig, str]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    config = load_gateway_config(path)
    return config, (
        f"{config.path}: gateway {config.gateway_id!r}, {len(config.nodes)} node(s), "
        f"{len(config.issuers)} issuer(s)"
    )


def _signing_key(config: GatewayConfig) -> tuple[None, str]:
    key = SigningKey.from_pem_file(config.signing_key)
    return None, f"{config.signing_key} (key id {key.key_id})"


def _audit_key(config: GatewayConfig) -> tuple[None, str]:
    if config.audit_key is None:
        raise ConfigError(f"{config.path}: set `audit_key` under [ledger]")
    AuditKey.from_file(config.audit_key)
    return None, str(config.audit_key)


def _node_keys(config: GatewayConfig) -> tuple[None, str]:
    if not config.nodes:
        return None, "no [[node]] configured: queries reach nobody"
    shown = []
    for node in config.nodes:
        key = VerifyingKey.from_pem_file(node.public_key)
        shown.append(f"{node.id} at {node.address} (key id {key.key_id})")
    return None, ", ".join(shown)


def _issuers(config: GatewayConfig) -> tuple[None, str | Attention]:
    return None, check_issuers(config.issuers, config.audience)
