"""The demo's web consoles and the development OpenID Connect provider they sign in with.

One console beside the gateway (Genovia's investigators and auditors) and one
beside Freedonia's node (its duty officers); both sign people in through the
development provider, which vouches for the demo's people under the same
development keys the gateway and the node already trust.
"""

from __future__ import annotations

from pathlib import Path

from liaison.config import node_inbox_audience
from liaison.demo.data import INVESTIGATOR_AGENCY
from liaison.demo.federation import AUDIENCE, AUDIT_KEY, PKI_DIR, _toml_list, _toml_str
from liaison.demo.followup import HOLDER, OFFICER
from liaison.demo.processes import Service, start_service

GATEWAY_CONSOLE = "console-gateway"
NODE_CONSOLE = f"console-{HOLDER}"
IDP = "dev-idp"
# Who one can sign in as on the development provider: (agency, subject, name, roles).
PEOPLE = (
    (INVESTIGATOR_AGENCY, "inv.alice", "Alice Moreau (investigator)", ("investigator",)),
    (INVESTIGATOR_AGENCY, "aud.ann", "Ann Keller (auditor)", ("auditor",)),
    (INVESTIGATOR_AGENCY, "inv.nobody", "Nora Trainee (no console role)", ("trainee",)),
    (HOLDER, OFFICER, "Fred Lamar (duty officer)", ("duty-officer",)),
    (HOLDER, "fre.bob", "Bob Anders (investigator)", ("investigator",)),
)
DEMO_ATTRIBUTES = {"clearance": "secret", "unit": "victim-identification"}


def write_dev_idp_config(root: Path) -> Path:
    folder = root / "idp"
    path = folder / "dev-idp.toml"
    pki = f"../{PKI_DIR}"
    lines = [
        "# Development OpenID Connect provider: demos and tests only, never production.",
        "[dev_idp]",
        'listen = "127.0.0.1:0"',
        f"tls_cert = {_toml_str(f'{pki}/dev-idp.crt')}",
        f"tls_key = {_toml_str(f'{pki}/dev-idp.key')}",
    ]
    for agency in (INVESTIGATOR_AGENCY, HOLDER):
        lines += ["", "[[dev_idp.agency]]", f"id = {_toml_str(agency)}", f'key = "{agency}.key"']
    for client_id, audience in (
        (GATEWAY_CONSOLE, AUDIENCE),
        (NODE_CONSOLE, node_inbox_audience(HOLDER)),
    ):
        lines += [
            "",
            "[[dev_idp.client]]",
            f"client_id = {_toml_str(client_id)}",
            f"audience = {_toml_str(audience)}",
        ]
    for agency, subject, name, roles in PEOPLE:
        lines += [
            "",
            "[[dev_idp.user]]",
            f"agency = {_toml_str(agency)}",
            f"subject = {_toml_str(subject)}",
            f"name = {_toml_str(name)}",
            f"roles = {_toml_list(roles)}",
        ]
        if agency == INVESTIGATOR_AGENCY:
            attrs = ", ".join(f"{k} = {_toml_str(v)}" for k, v in DEMO_ATTRIBUTES.items())
            lines.append(f"attributes = {{ {attrs} }}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_console_configs(root: Path, gateway: str, idp: str) -> tuple[Path, Path]:
    """The gateway's console (investigators, auditors) and Freedonia's (duty officers)."""
    folder = root / "console"
    folder.mkdir(parents=True, exist_ok=True)
    pki = f"../{PKI_DIR}"
    head = [
        "[console]",
        'listen = "127.0.0.1:0"',
        f"tls_cert = {_toml_str(f'{pki}/console.crt')}",
        f"tls_key = {_toml_str(f'{pki}/console.key')}",
        "",
    ]
    gateway_console = folder / "gateway-console.toml"
    gateway_console.write_text(
        "\n".join(
            [
                "# The console beside the gateway: investigators and auditors.",
                *head,
                "[console.oidc]",
                f"issuer = {_toml_str(f'https://{idp}/{INVESTIGATOR_AGENCY}')}",
                f"client_id = {_toml_str(GATEWAY_CONSOLE)}",
                f"ca = {_toml_str(f'{pki}/ca.pem')}",
                "",
                "[console.gateway]",
                f"address = {_toml_str(gateway)}",
                "# The demo's gateway serves investigators on loopback without TLS; name its",
                "# CA here (ca = ...) when it serves TLS.",
                "# The agencies' public keys: every answer is checked against its agency's key.",
                'node_keys = ".."',
                "",
                "[console.audit]",
                'federation = ".."',
                f"audit_key = {_toml_str(f'../{AUDIT_KEY}')}",
            ]
        )
        + "\n"
    )
    node_console = folder / f"{HOLDER}-console.toml"
    node_console.write_text(
        "\n".join(
            [
                f"# The console beside {HOLDER}'s node: its duty officers.",
                *head,
                "[console.oidc]",
                f"issuer = {_toml_str(f'https://{idp}/{HOLDER}')}",
                f"client_id = {_toml_str(NODE_CONSOLE)}",
                f"ca = {_toml_str(f'{pki}/ca.pem')}",
                "",
                "[console.node]",
                f"node_config = {_toml_str(f'../nodes/{HOLDER}/node.toml')}",
                f"ca = {_toml_str(f'{pki}/ca.pem')}",
            ]
        )
        + "\n"
    )
    return gateway_console, node_console


def start_consoles(root: Path, gateway: str, run: Path, *, detach: bool = False) -> list[Service]:
    """Start the development provider and both consoles; the first is the provider."""
    idp = start_service(IDP, "dev-idp", write_dev_idp_config(root), run, detach=detach)
    services = [idp]
    gateway_console, node_console = write_console_configs(root, gateway, idp.address)
    for name, config in ((GATEWAY_CONSOLE, gateway_console), (NODE_CONSOLE, node_console)):
        services.append(start_service(name, "console", config, run, detach=detach))
    return services


def console_urls(services: list[Service]) -> dict[str, str]:
    return {s.name: f"https://{s.address}" for s in services}
