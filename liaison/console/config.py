"""The console's config file: where it listens, who signs people in, which sides it serves.

```toml
[console]
listen = "127.0.0.1:8443"
tls_cert = "console.crt"
tls_key = "console.key"

[console.oidc]
issuer = "https://idp.example/realms/genovia"
client_id = "liaison-console"

[console.gateway]     # investigators' pages
[console.audit]       # auditors' pages
[console.node]        # duty officers' pages
```

Each side's own table is read by that side's module, so a side's settings
live beside the code that uses them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from liaison.config import LOOPBACK_HOSTS, TableReader, read_toml, split_listen
from liaison.errors import ConfigError

SIDES = ("gateway", "audit", "node")
DEFAULT_SESSION_TTL_S = 8 * 3600


@dataclass(frozen=True, slots=True)
class OidcSettings:
    issuer: str
    client_id: str
    client_secret: str | None
    ca: Path | None
    # Where the provider puts agency and roles (dotted paths, e.g. realm_access.roles).
    agency_claim: str = "agency"
    roles_claim: str = "roles"


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    path: Path
    host: str
    port: int
    tls_cert: Path
    tls_key: Path
    # The address people type, when it is not the listening one (a proxy, a name).
    public_url: str | None
    session_ttl_s: int
    oidc: OidcSettings
    # Each side's raw table, read by the side's own module; None when not served.
    sides: Mapping[str, TableReader] = field(default_factory=dict)


def load_console_config(path: Path) -> ConsoleConfig:
    doc = read_toml(path)
    base = path.parent
    top = TableReader(doc, str(path), base)
    top.check_keys({"console"})
    table = doc.get("console")
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: a [console] table is required")
    r = TableReader(table, f"{path} [console]", base)
    r.check_keys({"listen", "tls_cert", "tls_key", "public_url", "session_ttl_s", "oidc", *SIDES})
    host, port = split_listen(r.text("listen", "127.0.0.1:0"), r.where)
    public_url = r.text("public_url") if "public_url" in table else None
    if public_url is not None and not public_url.startswith("https://"):
        raise ConfigError(f"{r.where}: `public_url` must start with https://")
    oidc_table = table.get("oidc")
    if not isinstance(oidc_table, dict):
        raise ConfigError(
            f"{path}: a [console.oidc] table is required (issuer and client_id of the "
            "agency's OpenID Connect provider)"
        )
    o = TableReader(oidc_table, f"{path} [console.oidc]", base)
    o.check_keys({"issuer", "client_id", "client_secret_file", "ca", "agency_claim", "roles_claim"})
    issuer = o.text("issuer").rstrip("/")
    if not issuer.startswith("https://") and not any(
        issuer.startswith(f"http://{h}") for h in LOOPBACK_HOSTS
    ):
        raise ConfigError(f"{o.where}: `issuer` must be an https:// URL")
    secret_file = o.path("client_secret_file") if "client_secret_file" in oidc_table else None
    secret = None
    if secret_file is not None:
        try:
            secret = secret_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{o.where}: cannot read client_secret_file ({exc})") from exc
    sides = {}
    for side in SIDES:
        if side in table:
            t = table[side]
            if not isinstance(t, dict):
                raise ConfigError(f"{r.where}: `{side}` must be a table ([console.{side}])")
            sides[side] = TableReader(t, f"{path} [console.{side}]", base)
    if not sides:
        raise ConfigError(
            f"{path}: serve at least one side: [console.gateway] (investigators), "
            "[console.audit] (auditors) or [console.node] (duty officers)"
        )
    return ConsoleConfig(
        path=path,
        host=host,
        port=port,
        tls_cert=r.path("tls_cert"),
        tls_key=r.path("tls_key"),
        public_url=public_url.rstrip("/") if public_url else None,
        session_ttl_s=r.integer("session_ttl_s", DEFAULT_SESSION_TTL_S, 60, 7 * 24 * 3600),
        oidc=OidcSettings(
            issuer=issuer,
            client_id=o.text("client_id"),
            client_secret=secret,
            ca=o.path("ca") if "ca" in oidc_table else None,
            agency_claim=o.text("agency_claim", "agency"),
            roles_claim=o.text("roles_claim", "roles"),
        ),
        sides=sides,
    )
