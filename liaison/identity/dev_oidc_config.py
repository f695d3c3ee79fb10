"""The development OpenID Connect provider's config file (``[dev_idp]``), strictly read.

Development only: see :mod:`liaison.identity.dev_oidc`. The file names
agencies (each with the Ed25519 key its tokens are signed with), clients
(the consoles that may sign people in) and users (one button each on the
sign-in page). Unknown keys are refused, so a typo is an error, not a
silently ignored setting.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liaison.config import LOOPBACK_HOSTS, TableReader, read_toml, split_listen
from liaison.errors import ConfigError
from liaison.keys import SigningKey
from liaison.tokens import dev_issuer

# An agency id becomes a URL path segment: keep it to characters that need no escaping.
_AGENCY_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
MAX_USERS = 64


@dataclass(frozen=True, slots=True)
class DevAgency:
    id: str
    key: SigningKey
    # The `iss` of access tokens (what gateways and node inboxes already trust);
    # the id token's `iss` is this provider's own URL for the agency.
    token_issuer: str


@dataclass(frozen=True, slots=True)
class DevClient:
    client_id: str
    # The `aud` of access tokens issued to this client: the gateway's or a node inbox's.
    audience: str
    # None: a public client (PKCE only); set: it must send it (client_secret_post).
    client_secret: str | None = None


@dataclass(frozen=True, slots=True)
class DevUser:
    agency: str
    subject: str
    name: str
    roles: tuple[str, ...]
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DevIdpConfig:
    host: str
    port: int
    tls_cert: Path | None
    tls_key: Path | None
    agencies: Mapping[str, DevAgency]
    clients: Mapping[str, DevClient]
    users: tuple[DevUser, ...]

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def load_dev_idp_config(path: Path) -> DevIdpConfig:
    """Read and check ``path``; every error names the file, the table and the key."""
    doc = read_toml(path)
    base = path.parent
    TableReader(doc, str(path), base).check_keys({"dev_idp"})
    table = doc.get("dev_idp")
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: a [dev_idp] table is required")
    where = f"{path} [dev_idp]"
    top = TableReader(table, where, base)
    top.check_keys({"listen", "tls_cert", "tls_key", "agency", "client", "user"})
    host, port = split_listen(top.text("listen", "127.0.0.1:0"), where)
    has_cert, has_key = "tls_cert" in table, "tls_key" in table
    if has_cert != has_key:
        raise ConfigError(f"{where}: give both `tls_cert` and `tls_key`, or neither")
    tls_cert = top.path("tls_cert") if has_cert else None
    tls_key = top.path("tls_key") if has_key else None
    if tls_cert is None and host not in LOOPBACK_HOSTS:
        raise ConfigError(
            f"{where}: without `tls_cert` and `tls_key` the development provider listens "
            f"only on loopback ({', '.join(LOOPBACK_HOSTS)}), not {host!r}; add TLS files "
            "or listen on 127.0.0.1"
        )
    agencies = _agencies(top, where)
    clients = _clients(top, where)
    users = _users(top, where, agencies)
    return DevIdpConfig(host, port, tls_cert, tls_key, agencies, clients, users)


def _agencies(top: TableReader, where: str) -> dict[str, DevAgency]:
    agencies: dict[str, DevAgency] = {}
    for i, t in enumerate(top.tables("agency")):
        r = TableReader(t, f"{where} [[dev_idp.agency]] #{i}", top.base)
        r.check_keys({"id", "key", "token_issuer"})
        agency_id = r.text("id")
        if not _AGENCY_ID.fullmatch(agency_id):
            raise ConfigError(
                f"{r.where}: `id` {agency_id!r} must be 1 to 63 lower-case letters, digits, "
                "'.', '_' or '-' (it is a URL path segment)"
            )
        if agency_id in agencies:
            raise ConfigError(f"{r.where}: agency {agency_id!r} is listed twice")
        key = SigningKey.from_pem_file(r.path("key"))
        issuer = r.text("token_issuer", dev_issuer(agency_id))
        agencies[agency_id] = DevAgency(agency_id, key, issuer)
    if not agencies:
        raise ConfigError(f"{where}: list at least one [[dev_idp.agency]]")
    return agencies


def _clients(top: TableReader, where: str) -> dict[str, DevClient]:
    clients: dict[str, DevClient] = {}
    for i, t in enumerate(top.tables("client")):
        r = TableReader(t, f"{where} [[dev_idp.client]] #{i}", top.base)
        r.check_keys({"client_id", "audience", "client_secret"})
        client_id = r.text("client_id")
        if client_id in clients:
            raise ConfigError(f"{r.where}: client {client_id!r} is listed twice")
        secret = r.text("client_secret") if "client_secret" in t else None
        clients[client_id] = DevClient(client_id, r.text("audience"), secret)
    if not clients:
        raise ConfigError(f"{where}: list at least one [[dev_idp.client]]")
    return clients


def _users(top: TableReader, where: str, agencies: Mapping[str, DevAgency]) -> tuple[DevUser, ...]:
    users: list[DevUser] = []
    seen: set[tuple[str, str]] = set()
    tables = top.tables("user")
    if len(tables) > MAX_USERS:
        raise ConfigError(f"{where}: {len(tables)} users; at most {MAX_USERS}")
    for i, t in enumerate(tables):
        r = TableReader(t, f"{where} [[dev_idp.user]] #{i}", top.base)
        r.check_keys({"agency", "subject", "name", "roles", "attributes"})
        agency = r.text("agency")
        if agency not in agencies:
            raise ConfigError(
                f"{r.where}: agency {agency!r} is not a [[dev_idp.agency]]; "
                f"listed: {', '.join(sorted(agencies))}"
            )
        subject = r.text("subject")
        if (agency, subject) in seen:
            raise ConfigError(f"{r.where}: user {subject!r} of {agency!r} is listed twice")
        seen.add((agency, subject))
        users.append(
            DevUser(
                agency=agency,
                subject=subject,
                name=r.text("name", subject),
                roles=r.str_list("roles"),
                attributes=_attributes(t.get("attributes", {}), r.where),
            )
        )
    if not users:
        raise ConfigError(f"{where}: list at least one [[dev_idp.user]]")
    return tuple(users)


def _attributes(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()
    ):
        raise ConfigError(
            f'{where}: `attributes` must be a table of strings, e.g. {{ clearance = "secret" }}'
        )
    return dict(value)
