"""Loading node and gateway config files (TOML) into checked dataclasses.

Relative paths in a config file are relative to the file itself, so a
federation folder can be moved or copied as a whole.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from liaison.catalog import Catalog, Dataset, FieldType
from liaison.databases import parse_url, with_password
from liaison.errors import CatalogError, ConfigError
from liaison.ledger.store import LedgerTimeouts
from liaison.messages import DEFAULT_CLOCK_SKEW_S, DEFAULT_MAX_REQUEST_AGE_S
from liaison.secret_sources import password_from
from liaison.tls import TlsFiles

DEFAULT_CHECKPOINT_INTERVAL_S = 30
# Long enough for a load balancer polling health every few seconds to move away.
DEFAULT_DRAIN_S = 5


class HexCase(StrEnum):
    """How a hex column spells its letters, so a node asks for hashes as they are stored.

    ``detect`` (the default) samples the column when the node starts; ``mixed``
    asks for both the lower- and the upper-case spelling of every hash.
    """

    LOWER = "lower"
    UPPER = "upper"
    MIXED = "mixed"
    DETECT = "detect"


@dataclass(frozen=True, slots=True)
class DatasetMapping:
    """Where a catalog dataset lives in the agency's own schema."""

    dataset: str
    table: str
    columns: Mapping[str, str]  # catalog field -> local column
    # catalog hex field -> how its column spells hex; unlisted hex fields: DETECT
    hex_case: Mapping[str, HexCase] = field(default_factory=dict)
    # The column naming one row (a unique integer), for tables and views
    # without a single integer primary key: the PDQ index fetches by it.
    key: str | None = None


@dataclass(frozen=True, slots=True)
class TrustedKey:
    id: str
    public_key: Path
    # The TLS identity this gateway connects with: the SHA-256 (hex) of its
    # certificate's public key (SubjectPublicKeyInfo), and/or DNS or URI
    # subjectAltNames it carries. Required with [tls]; every key given must match.
    tls_spki_sha256: tuple[str, ...] = ()
    tls_san: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeConfig:
    path: Path
    node_id: str
    listen: str
    # May hold the password (inline, or from database_password_env/_file): never shown.
    database_url: str = field(repr=False)
    policy: Path
    signing_key: Path
    state_dir: Path
    trusted_gateways: tuple[TrustedKey, ...]
    datasets: tuple[DatasetMapping, ...]
    max_request_age_s: int = DEFAULT_MAX_REQUEST_AGE_S
    clock_skew_s: int = DEFAULT_CLOCK_SKEW_S
    default_limit: int = 100
    # Mutual TLS towards the gateway; None serves plaintext (loopback demos).
    tls: TlsFiles | None = None
    # Secret for keyed-hash transforms (32+ random bytes, hex); None if unused.
    transform_key: Path | None = None
    # The node's receipts ledger: a SQLite path or a SQLAlchemy URL (never shown:
    # it may hold a password).
    receipts: str = field(default="", repr=False)
    checkpoint_interval_s: int = DEFAULT_CHECKPOINT_INTERVAL_S
    # How often the PDQ index is rebuilt from the database: a deleted hash
    # stops matching within this (plus the build).
    pdq_refresh_s: int = 30
    # After SIGTERM: seconds of NOT_SERVING while still answering, then stop.
    drain_s: int = DEFAULT_DRAIN_S
    # Where /metrics is served (HOST:PORT, port 0: any); None: not served.
    metrics_listen: str | None = None
    # How long the receipts ledger waits on its database before it reports NOT_SERVING.
    ledger_timeouts: LedgerTimeouts = field(default_factory=LedgerTimeouts)
    # The duty officers' inbox (follow-up requests, hit notices): where it is
    # served (None: not served), the audience their tokens must name, and the
    # agency's identity providers that vouch for them.
    inbox: InboxConfig | None = None


@dataclass(frozen=True, slots=True)
class InboxConfig:
    listen: str
    audience: str
    issuers: tuple[Issuer, ...]


DEFAULT_JWKS_REFRESH_S = 600
DEFAULT_JWKS_MIN_REFRESH_S = 30


@dataclass(frozen=True, slots=True)
class ClaimMapping:
    """Which of an identity provider's claims carry agency, roles, subject and attributes.

    Names may be dotted paths into nested objects (``realm_access.roles``); a
    claim whose own name contains dots (Auth0's ``https://x.example/agency``)
    wins over the path. ``agency_value`` fixes the agency for providers that
    cannot emit one (the issuer is then the agency's own tenant).
    """

    agency: str = "agency"
    agency_value: str | None = None
    roles: str = "roles"
    subject: str = "sub"
    # One claim holding an object of attributes, or attribute name -> claim name.
    attributes: str | Mapping[str, str] = "attributes"


@dataclass(frozen=True, slots=True)
class Issuer:
    issuer: str
    agencies: frozenset[str]
    public_keys: tuple[Path, ...]
    algorithms: tuple[str, ...]
    # A JSON Web Key Set on disk and/or at an HTTPS URL; keys matched by `kid`.
    jwks_file: Path | None = None
    jwks_url: str | None = None
    jwks_refresh_s: int = DEFAULT_JWKS_REFRESH_S
    # An unknown `kid` refetches the URL at most once per this many seconds.
    jwks_min_refresh_s: int = DEFAULT_JWKS_MIN_REFRESH_S
    claims: ClaimMapping = field(default_factory=ClaimMapping)
    # When set, the token's `azp` (the client it was issued to) must be one of these.
    authorized_parties: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class NodeEndpoint:
    id: str
    address: str
    public_key: Path


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    path: Path
    gateway_id: str
    listen: str
    signing_key: Path
    audience: str
    issuers: tuple[Issuer, ...]
    nodes: tuple[NodeEndpoint, ...]
    default_deadline_ms: int = 2000
    max_deadline_ms: int = 30_000
    # TLS for investigators' connections (client_ca optional).
    tls: TlsFiles | None = None
    # Client certificate and CA for connections to nodes (mutual TLS).
    node_tls: TlsFiles | None = None
    # The federation ledger: a SQLite path or a SQLAlchemy URL (PostgreSQL); never
    # shown, as it may hold a password.
    ledger: str = field(default="", repr=False)
    # HMAC key under which selectors are logged; auditors hold a copy.
    audit_key: Path | None = None
    checkpoint_interval_s: int = DEFAULT_CHECKPOINT_INTERVAL_S
    # How long the ledger waits on its database before it reports NOT_SERVING.
    ledger_timeouts: LedgerTimeouts = field(default_factory=LedgerTimeouts)
    # One of several replicas of this gateway writing one PostgreSQL ledger.
    ledger_shared: bool = False
    # After SIGTERM: seconds of NOT_SERVING while still answering, then stop.
    drain_s: int = DEFAULT_DRAIN_S
    # Where /metrics is served (HOST:PORT, port 0: any); None: not served.
    metrics_listen: str | None = None


ALLOWED_JWT_ALGORITHMS = ("EdDSA", "ES256", "RS256", "PS256")


class TableReader:
    """Typed access to a TOML table that names the file and key in every error."""

    def __init__(self, table: Mapping[str, Any], where: str, base: Path) -> None:
        self.table = table
        self.where = where
        self.base = base

    def _get(self, key: str, default: object = ...) -> object:
        if key not in self.table:
            if default is ...:
                raise ConfigError(f"{self.where}: `{key}` is required")
            return default
        return self.table[key]

    def text(self, key: str, default: object = ...) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.where}: `{key}` must be a non-empty string")
        return value

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self._get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ConfigError(f"{self.where}: `{key}` must be a whole number in {lo}..{hi}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.where}: `{key}` must be true or false")
        return value

    def path(self, key: str, default: object = ...) -> Path:
        p = Path(self.text(key, default))
        return p if p.is_absolute() else (self.base / p)

    def str_list(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v for v in value)
        ):
            raise ConfigError(f"{self.where}: `{key}` must be a non-empty list of strings")
        return tuple(value)

    def tables(self, key: str) -> list[Mapping[str, Any]]:
        value = self._get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(f"{self.where}: `{key}` must be an array of tables ([[{key}]])")
        return value

    def check_keys(self, allowed: set[str]) -> None:
        unknown = set(self.table) - allowed
        if unknown:
            raise ConfigError(
                f"{self.where}: unknown keys {', '.join(sorted(unknown))}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )


def _tls(
    doc: Mapping[str, Any], key: str, ca_key: str, path: Path, *, ca_required: bool
) -> TlsFiles | None:
    if key not in doc:
        return None
    table = doc[key]
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{key}] must be a table")
    r = TableReader(table, f"{path} [{key}]", path.parent)
    r.check_keys({"certificate", "private_key", ca_key})
    ca = r.path(ca_key) if ca_required or ca_key in table else None
    return TlsFiles(r.path("certificate"), r.path("private_key"), ca)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc}); save it as UTF-8") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path} ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc


def resolve_database_url(
    url: str, base: Path, *, password: str | None = None, what: str = "database_url"
) -> str:
    """The URL to connect with, from the URL as written in a config file.

    A bare ``postgres://``, ``postgresql://``, ``mysql://`` or ``mariadb://`` gets
    the driver Liaison installs; a relative SQLite path becomes relative to the
    config file, not the cwd; ``password`` (from the environment or a file) is
    put into the URL. The result holds the password: show it only masked.
    """
    parsed = parse_url(url, what)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        db = Path(parsed.database or "")
        if not db.is_absolute():
            parsed = parsed.set(database=str(base / db))
    if password is not None:
        parsed = with_password(parsed, password, what)
    return parsed.render_as_string(hide_password=False)


def _node_database_url(node: TableReader) -> str:
    """``[node] database_url``, its password from database_password_env/_file if given."""
    password = password_from(
        node.table, node.where, node.base, "database_password_env", "database_password_file"
    )
    return resolve_database_url(node.text("database_url"), node.base, password=password)


def load_node_config(path: Path, catalog: Catalog) -> NodeConfig:
    path = path.resolve()
    doc = read_toml(path)
    base = path.parent
    top = TableReader(doc, str(path), base)
    top.check_keys({"node", "trusted_gateway", "datasets", "tls", "ledger", "inbox"})
    node = TableReader(doc.get("node", {}), f"{path} [node]", base)
    node.check_keys(
        {
            "id",
            "listen",
            "database_url",
            "database_password_env",
            "database_password_file",
            "policy",
            "signing_key",
            "state_dir",
            "max_request_age_s",
            "clock_skew_s",
            "default_limit",
            "transform_key",
            "pdq_refresh_s",
            "drain_s",
            "metrics_listen",
        }
    )
    trusted = []
    for i, t in enumerate(top.tables("trusted_gateway"), start=1):
        r = TableReader(t, f"{path} [[trusted_gateway]] #{i}", base)
        r.check_keys({"id", "public_key", "tls_spki_sha256", "tls_san"})
        trusted.append(
            TrustedKey(
                r.text("id"),
                r.path("public_key"),
                _spki_pins(r) if "tls_spki_sha256" in t else (),
                r.str_list("tls_san") if "tls_san" in t else (),
            )
        )
    if not trusted:
        raise ConfigError(f"{path}: at least one [[trusted_gateway]] with a public_key is needed")
    _check_gateway_identities(path, trusted, tls="tls" in doc)
    raw_datasets = doc.get("datasets", {})
    if not isinstance(raw_datasets, dict) or not raw_datasets:
        raise ConfigError(f"{path}: map at least one catalog dataset under [datasets.<name>]")
    mappings = []
    for name, table in raw_datasets.items():
        where = f"{path} [datasets.{name}]"
        try:
            dataset = catalog.dataset(name)
        except CatalogError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        if not isinstance(table, dict):
            raise ConfigError(
                f'{where}: must be a table with `table = "..."` and a [datasets.{name}.fields] '
                "mapping"
            )
        r = TableReader(table, where, base)
        r.check_keys({"table", "fields", "hex_case", "key"})
        fields = table.get("fields", {})
        if not isinstance(fields, dict) or not fields:
            raise ConfigError(f"{where}: map catalog fields to columns under `fields`")
        for field_name, column in fields.items():
            try:
                dataset.field(field_name)
            except CatalogError as exc:
                raise ConfigError(f"{where}: {exc}") from exc
            if not isinstance(column, str) or not column:
                raise ConfigError(f"{where}: field {field_name!r} must map to a column name")
        key = r.text("key") if "key" in table else None
        mappings.append(
            DatasetMapping(
                name,
                r.text("table"),
                dict(fields),
                _hex_case(table, fields, dataset, where),
                key=key,
            )
        )
    return NodeConfig(
        path=path,
        node_id=node.text("id"),
        listen=node.text("listen", "127.0.0.1:0"),
        database_url=_node_database_url(node),
        policy=node.path("policy"),
        signing_key=node.path("signing_key"),
        state_dir=node.path("state_dir", "state"),
        trusted_gateways=tuple(trusted),
        datasets=tuple(mappings),
        max_request_age_s=node.integer("max_request_age_s", DEFAULT_MAX_REQUEST_AGE_S, 1, 3600),
        clock_skew_s=node.integer("clock_skew_s", DEFAULT_CLOCK_SKEW_S, 0, 600),
        default_limit=node.integer("default_limit", 100, 1, 10_000),
        pdq_refresh_s=node.integer("pdq_refresh_s", 30, 1, 60),
        drain_s=node.integer("drain_s", DEFAULT_DRAIN_S, 0, 300),
        metrics_listen=_metrics_listen(node),
        tls=_tls(doc, "tls", "client_ca", path, ca_required=True),
        transform_key=node.path("transform_key") if "transform_key" in node.table else None,
        receipts=_ledger_location(
            doc, path, str(node.path("state_dir", "state") / "receipts.sqlite3"), _NODE_LEDGER_KEYS
        ),
        checkpoint_interval_s=_checkpoint_interval(doc, path),
        ledger_timeouts=_ledger_timeouts(doc, path, _NODE_LEDGER_KEYS),
        inbox=_inbox(doc, path, node.text("id")),
    )


# Where a running node publishes its inbox's address, in its state folder.
INBOX_ADDRESS_FILE = "inbox.addr"


def node_inbox_audience(node_id: str) -> str:
    """The audience a duty officer's token names for ``node_id``'s inbox, by default."""
    return f"liaison-node/{node_id}"


def _inbox(doc: Mapping[str, Any], path: Path, node_id: str) -> InboxConfig | None:
    if "inbox" not in doc:
        return None
    table = doc["inbox"]
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [inbox] must be a table")
    where = f"{path} [inbox]"
    r = TableReader(table, where, path.parent)
    r.check_keys({"listen", "audience", "issuer"})
    issuers = [
        _issuer(TableReader(t, f"{where} [[inbox.issuer]] #{i}", path.parent))
        for i, t in enumerate(r.tables("issuer"), start=1)
    ]
    if not issuers:
        raise ConfigError(
            f"{where}: name the identity provider that vouches for your duty officers with "
            "[[inbox.issuer]] (the same keys as a gateway's [[issuer]])"
        )
    return InboxConfig(
        listen=r.text("listen", "127.0.0.1:0"),
        audience=r.text("audience", node_inbox_audience(node_id)),
        issuers=tuple(issuers),
    )


def _hex_case(
    table: Mapping[str, Any], fields: Mapping[str, Any], dataset: Dataset, where: str
) -> dict[str, HexCase]:
    """The optional ``[datasets.<name>.hex_case]`` table: field -> lower, upper, mixed, detect."""
    raw = table.get("hex_case", {})
    if not isinstance(raw, dict):
        raise ConfigError(f'{where}: `hex_case` must be a table of field = "lower"|"upper"|...')
    allowed = ", ".join(c.value for c in HexCase)
    cases = {}
    for field_name, value in raw.items():
        if field_name not in fields:
            raise ConfigError(
                f"{where}: hex_case names field {field_name!r}, which is not mapped under `fields`"
            )
        if dataset.field(field_name).type not in (FieldType.HEX256, FieldType.HEX128):
            raise ConfigError(
                f"{where}: hex_case applies to hex fields only; {field_name!r} is "
                f"{dataset.field(field_name).type.value}"
            )
        if value not in tuple(HexCase):
            raise ConfigError(
                f"{where}: hex_case for {field_name!r} must be one of {allowed}, got {value!r}"
            )
        cases[field_name] = HexCase(value)
    return cases


def _spki_pins(r: TableReader) -> tuple[str, ...]:
    pins = tuple(p.lower().replace(":", "") for p in r.str_list("tls_spki_sha256"))
    for pin in pins:
        if len(pin) != 64 or any(c not in "0123456789abcdef" for c in pin):
            raise ConfigError(
                f"{r.where}: `tls_spki_sha256` entries must be 64 hex digits (the SHA-256 of "
                f"the gateway certificate's public key), got {pin!r}"
            )
    return pins


def _check_gateway_identities(path: Path, trusted: list[TrustedKey], *, tls: bool) -> None:
    """With TLS every trusted gateway is bound to its certificate; without, none can be."""
    for i, t in enumerate(trusted, start=1):
        bound = bool(t.tls_spki_sha256 or t.tls_san)
        where = f"{path} [[trusted_gateway]] #{i}"
        if tls and not bound:
            raise ConfigError(
                f"{where}: with [tls] the node must know the gateway's TLS identity, or any "
                "holder of a certificate from client_ca could replay requests to it; add "
                "`tls_spki_sha256 = [...]` (SHA-256 of the gateway certificate's public key) "
                "or `tls_san = [...]` (a DNS name or URI its certificate carries)"
            )
        if bound and not tls:
            raise ConfigError(
                f"{where}: `tls_spki_sha256`/`tls_san` need [tls] with client_ca (mutual TLS), "
                "or the node could not check them; add [tls] or remove them"
            )


def _ledger_reader(doc: Mapping[str, Any], path: Path, allowed: set[str]) -> TableReader:
    table = doc.get("ledger", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [ledger] must be a table")
    reader = TableReader(table, f"{path} [ledger]", path.parent)
    reader.check_keys({*allowed, "checkpoint_interval_s", "password_env", "password_file"})
    return reader


def _ledger_location(doc: Mapping[str, Any], path: Path, default: str, allowed: set[str]) -> str:
    """A ledger URL as given, or a SQLite path resolved against the config file."""
    reader = _ledger_reader(doc, path, allowed)
    location = reader.text("location", default)
    if "://" not in location:
        if "password_env" in reader.table or "password_file" in reader.table:
            raise ConfigError(
                f"{reader.where}: a SQLite ledger has no password; remove "
                "password_env/password_file"
            )
        return str(path.parent / location)
    password = password_from(
        reader.table, reader.where, reader.base, "password_env", "password_file"
    )
    what = f"{reader.where} `location`"
    return resolve_database_url(location, path.parent, password=password, what=what)


def _checkpoint_interval(doc: Mapping[str, Any], path: Path) -> int:
    reader = TableReader(doc.get("ledger", {}), f"{path} [ledger]", path.parent)
    return reader.integer("checkpoint_interval_s", DEFAULT_CHECKPOINT_INTERVAL_S, 1, 3600)


_ISSUER_KEYS = {
    "issuer",
    "agencies",
    "public_keys",
    "algorithms",
    "jwks_file",
    "jwks_url",
    "jwks_refresh_s",
    "jwks_min_refresh_s",
    "claims",
    "authorized_parties",
}
# Hosts a JWKS URL may reach over plain http: nothing crosses a network.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def jwks_url_problem(url: str) -> str | None:
    """Why ``url`` may not be fetched for keys (None if it may): HTTPS, or http on loopback."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        pass
    elif parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        pass  # a provider on this host, or a test; nothing crosses a network
    else:
        return f"{url!r} is not an https:// URL (plain http is only allowed to 127.0.0.1)"
    if parts.username is not None or parts.password is not None:
        return f"{parts.scheme}://{parts.hostname}: credentials do not belong in a JWKS URL"
    return None


def _issuer(r: TableReader) -> Issuer:
    """One ``[[issuer]]`` table: who may vouch for which agencies, with which keys."""
    r.check_keys(_ISSUER_KEYS)
    algorithms = r.str_list("algorithms")
    bad = [a for a in algorithms if a not in ALLOWED_JWT_ALGORITHMS]
    if bad:
        raise ConfigError(
            f"{r.where}: algorithms {bad} are not allowed; use {list(ALLOWED_JWT_ALGORITHMS)}"
        )
    keys = (
        tuple(Path(p) if Path(p).is_absolute() else r.base / p for p in r.str_list("public_keys"))
        if "public_keys" in r.table
        else ()
    )
    jwks_url = r.text("jwks_url") if "jwks_url" in r.table else None
    problem = jwks_url_problem(jwks_url) if jwks_url else None
    if problem:
        raise ConfigError(f"{r.where}: `jwks_url` {problem}")
    jwks_file = r.path("jwks_file") if "jwks_file" in r.table else None
    if not keys and jwks_file is None and jwks_url is None:
        raise ConfigError(
            f"{r.where}: name the issuer's signing keys with `jwks_url` (the provider's JWKS "
            "endpoint), `jwks_file` or `public_keys` (PEM files)"
        )
    refresh = r.integer("jwks_refresh_s", DEFAULT_JWKS_REFRESH_S, 60, 86_400)
    agencies = frozenset(r.str_list("agencies"))
    return Issuer(
        r.text("issuer"),
        agencies,
        keys,
        algorithms,
        jwks_file=jwks_file,
        jwks_url=jwks_url,
        jwks_refresh_s=refresh,
        jwks_min_refresh_s=r.integer("jwks_min_refresh_s", DEFAULT_JWKS_MIN_REFRESH_S, 1, refresh),
        claims=_claim_mapping(r, agencies),
        authorized_parties=(
            frozenset(r.str_list("authorized_parties"))
            if "authorized_parties" in r.table
            else frozenset()
        ),
    )


MAX_MAPPED_ATTRIBUTES = 16


def _claim_mapping(issuer: TableReader, agencies: frozenset[str]) -> ClaimMapping:
    """The optional ``[issuer.claims]`` table; what it leaves out keeps Liaison's names."""
    table = issuer.table.get("claims", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{issuer.where}: `claims` must be a table ([issuer.claims])")
    r = TableReader(table, f"{issuer.where} [issuer.claims]", issuer.base)
    r.check_keys({"agency", "agency_value", "roles", "subject", "attributes"})
    default = ClaimMapping()
    if "agency" in table and "agency_value" in table:
        raise ConfigError(f"{r.where}: set `agency` (a claim) or `agency_value`, not both")
    agency_value = r.text("agency_value") if "agency_value" in table else None
    if agency_value is not None and agency_value not in agencies:
        raise ConfigError(
            f"{r.where}: agency_value {agency_value!r} is not one of the issuer's agencies "
            f"{sorted(agencies)}"
        )
    raw = table.get("attributes", default.attributes)
    attributes: str | dict[str, str]
    if isinstance(raw, str) and raw:
        attributes = raw
    elif (
        isinstance(raw, dict)
        and len(raw) <= MAX_MAPPED_ATTRIBUTES
        and all(
            0 < len(k) <= 64 and k.isprintable() and isinstance(v, str) and v
            for k, v in raw.items()
        )
    ):
        attributes = dict(raw)
    else:
        raise ConfigError(
            f"{r.where}: `attributes` must name one claim holding an object, or be a table "
            f'of at most {MAX_MAPPED_ATTRIBUTES} attribute = "claim" pairs, e.g. '
            '{ clearance = "ext_clearance" }'
        )
    return ClaimMapping(
        agency=r.text("agency", default.agency),
        agency_value=agency_value,
        roles=r.text("roles", default.roles),
        subject=r.text("subject", default.subject),
        attributes=attributes,
    )


def load_gateway_config(path: Path) -> GatewayConfig:
    path = path.resolve()
    doc = read_toml(path)
    base = path.parent
    top = TableReader(doc, str(path), base)
    top.check_keys({"gateway", "issuer", "node", "tls", "node_tls", "ledger"})
    gw = TableReader(doc.get("gateway", {}), f"{path} [gateway]", base)
    gw.check_keys(
        {
            "id",
            "listen",
            "signing_key",
            "audience",
            "default_deadline_ms",
            "max_deadline_ms",
            "drain_s",
            "metrics_listen",
        }
    )
    issuers = [
        _issuer(TableReader(t, f"{path} [[issuer]] #{i}", base))
        for i, t in enumerate(top.tables("issuer"), start=1)
    ]
    if not issuers:
        raise ConfigError(f"{path}: trust at least one identity provider with [[issuer]]")
    names = [i.issuer for i in issuers]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        # The later table would silently replace the earlier one's keys and agencies.
        raise ConfigError(f"{path}: issuers {twice} appear in more than one [[issuer]]; merge them")
    nodes = []
    for i, t in enumerate(top.tables("node"), start=1):
        r = TableReader(t, f"{path} [[node]] #{i}", base)
        r.check_keys({"id", "address", "public_key"})
        nodes.append(NodeEndpoint(r.text("id"), r.text("address"), r.path("public_key")))
    ids = [n.id for n in nodes]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: node ids must be unique, got {ids}")
    default_deadline = gw.integer("default_deadline_ms", 2000, 50, 600_000)
    ledger = _ledger_location(doc, path, "ledger.sqlite3", _GATEWAY_LEDGER_KEYS)
    return GatewayConfig(
        path=path,
        gateway_id=gw.text("id"),
        listen=gw.text("listen", "127.0.0.1:0"),
        signing_key=gw.path("signing_key"),
        audience=gw.text("audience", "liaison-gateway"),
        issuers=tuple(issuers),
        nodes=tuple(nodes),
        default_deadline_ms=default_deadline,
        max_deadline_ms=gw.integer("max_deadline_ms", 30_000, default_deadline, 600_000),
        tls=_tls(doc, "tls", "client_ca", path, ca_required=False),
        node_tls=_tls(doc, "node_tls", "ca", path, ca_required=True),
        ledger=ledger,
        ledger_shared=_ledger_shared(doc, path, ledger),
        audit_key=_audit_key(doc, path),
        checkpoint_interval_s=_checkpoint_interval(doc, path),
        ledger_timeouts=_ledger_timeouts(doc, path),
        drain_s=gw.integer("drain_s", DEFAULT_DRAIN_S, 0, 300),
        metrics_listen=_metrics_listen(gw),
    )


_GATEWAY_LEDGER_KEYS = {
    "location",
    "shared",
    "audit_key",
    "connect_timeout_s",
    "write_timeout_s",
    "statement_timeout_s",
}


# A node's receipts ledger takes the same timeouts as the gateway's ledger.
_NODE_LEDGER_KEYS = {"location", "connect_timeout_s", "write_timeout_s", "statement_timeout_s"}


def _ledger_timeouts(
    doc: Mapping[str, Any], path: Path, allowed: set[str] = _GATEWAY_LEDGER_KEYS
) -> LedgerTimeouts:
    reader = _ledger_reader(doc, path, allowed)
    default = LedgerTimeouts()
    return LedgerTimeouts(
        connect_s=reader.integer("connect_timeout_s", default.connect_s, 1, 60),
        write_s=reader.integer("write_timeout_s", int(default.write_s), 1, 60),
        statement_s=reader.integer("statement_timeout_s", default.statement_s, 1, 3600),
    )


def _ledger_shared(doc: Mapping[str, Any], path: Path, location: str) -> bool:
    """``shared = true``: replicas of this gateway write one ledger, which must be PostgreSQL."""
    reader = _ledger_reader(doc, path, _GATEWAY_LEDGER_KEYS)
    shared = reader.boolean("shared", False)
    if shared and ("://" not in location or parse_url(location).get_backend_name() != "postgresql"):
        raise ConfigError(
            f"{reader.where}: `shared = true` lets several gateway replicas write one ledger, "
            "which needs PostgreSQL (a SQLite file has one writer); set "
            '`location = "postgresql://..."`, or remove `shared`'
        )
    return shared


def _audit_key(doc: Mapping[str, Any], path: Path) -> Path:
    reader = _ledger_reader(doc, path, _GATEWAY_LEDGER_KEYS)
    if "audit_key" not in reader.table:
        raise ConfigError(
            f"{path}: the gateway logs selectors as keyed hashes and needs "
            '`audit_key = "audit.key"` under [ledger] (a file of 32 random bytes in hex, '
            "as `liaison init` writes)"
        )
    return reader.path("audit_key")


def _metrics_listen(reader: TableReader) -> str | None:
    """The optional ``metrics_listen = "HOST:PORT"`` (port 0: any free port)."""
    if "metrics_listen" not in reader.table:
        return None
    listen = reader.text("metrics_listen")
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            f'{reader.where}: `metrics_listen` must be HOST:PORT, e.g. "127.0.0.1:9464" '
            f"(port 0 for any free port), got {listen!r}"
        )
    return listen


def split_listen(listen: str, where: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:0`` for IPv6) as (host, port); ConfigError if malformed."""
    host, sep, port_text = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(
            f"{where}: `listen` must be HOST:PORT (port 0 for any free port), got {listen!r}"
        )
    return host, int(port_text)
