"""``node check`` and ``gateway check``: every problem of a deployment, found without serving.

Each test writes a real node or gateway (keys, policy, database, ledger) and
runs the check as a user would, in a subprocess (``python -m
liaison.cli.check``, the functions ``liaison node check`` and ``liaison
gateway check`` call), then reads its table or its JSON and its exit code.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from liaison.demo.data import INVESTIGATOR_AGENCY
from liaison.demo.federation import write_dev_idp, write_gateway_config, write_gateway_keys
from liaison.demo.run import build_federation
from liaison.tls import CertRole, certificate_identity, write_dev_pki
from liaison.tokens import dev_issuer
from tests.support import REPO, Run
from tests.test_db_errors import SECRET, Account, fill, node_config
from tests.test_db_errors import mariadb_account as mariadb_account
from tests.test_identity_providers import jwk, serving_jwks

NODE_CHECKS = [
    "config",
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
]
GATEWAY_CHECKS = [
    "config",
    "signing key",
    "audit key",
    "node keys",
    "issuers",
    "tls",
    "node tls",
    "ledger",
]


def check(role: str, config: Path, *options: str, env: dict[str, str] | None = None) -> Run:
    done = subprocess.run(
        [sys.executable, "-m", "liaison.cli.check", role, str(config), *options],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
        env={**os.environ, **(env or {})},
    )
    return Run(done.returncode, done.stdout, done.stderr)


def statuses(run: Run) -> dict[str, tuple[str, str]]:
    """name -> (status, detail), from the --json output."""
    document = run.json()
    return {c["name"]: (c["status"], c["detail"]) for c in document["checks"]}


def sqlite_node(tmp_path: Path) -> Path:
    url = f"sqlite:///{tmp_path / 'agency.sqlite3'}"
    fill(url)
    return node_config(tmp_path / "federation", url)


# --- node ------------------------------------------------------------------------------


def test_a_sound_node_passes_every_check(database_url: str, tmp_path: Path) -> None:
    # prepare
    fill(database_url)
    config = node_config(tmp_path / "federation", database_url)

    # execute
    table = check("node", config)
    as_json = check("node", config, "--json")

    # assert
    assert (table.returncode, as_json.returncode) == (0, 0), table.stdout + table.stderr
    lines = table.stdout.splitlines()
    assert [line.split("  ")[0].strip() for line in lines[:-1]] == NODE_CHECKS
    assert all("  ok  " in line for line in lines[:-1]), table.stdout
    assert lines[-1] == f"all {len(NODE_CHECKS)} checks passed"
    found = statuses(as_json)
    assert as_json.json()["ok"] is True
    assert {name: status for name, (status, _) in found.items()} == dict.fromkeys(NODE_CHECKS, "ok")
    assert found["database"][1].endswith(": reachable, session read-only")
    assert found["mapping"][1] == "media -> seized_files (table, 2 column(s))"
    # Its starter policy has no approve rule: nobody decides follow-ups here.
    assert found["inbox"][1].startswith("not configured: follow-up requests are refused")


def test_every_broken_part_is_reported_at_once(tmp_path: Path) -> None:
    # prepare: a missing column, a signing key gone, a policy naming an unknown field
    config = sqlite_node(tmp_path)
    folder = config.parent
    config.write_text(config.read_text().replace('category = "cat"', 'category = "kat"'))
    (folder / "node.key").unlink()
    policy = folder / "policy.toml"
    policy.write_text(policy.read_text().replace('"category"]', '"colour"]', 1))

    # execute
    run = check("node", config, "--json")

    # assert
    assert run.returncode == 1
    found = statuses(run)
    failed = {name for name, (status, _) in found.items() if status == "FAILED"}
    assert failed == {"signing key", "policy", "mapping"}
    assert found["signing key"][1] == (
        f"signing key file {folder / 'node.key'} does not exist; create keys with `liaison init`"
    )
    assert "colour" in found["policy"][1]
    assert found["mapping"][1].startswith(
        "field media.category maps to column seized_files.kat, which does not exist; "
        "columns of seized_files: id, sha, cat"
    )


def test_an_unreachable_database_fails_and_skips_the_mapping(tmp_path: Path) -> None:
    # prepare
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        url = f"postgresql+psycopg://liaison:{SECRET}@127.0.0.1:{port}/agency"
        config = node_config(tmp_path / "federation", url)

        # execute
        table = check("node", config)
        as_json = check("node", config, "--json")

    # assert
    assert (table.returncode, as_json.returncode) == (1, 1)
    found = statuses(as_json)
    assert found["database"][0] == "FAILED"
    assert found["database"][1].startswith(
        f"cannot reach the agency database at 127.0.0.1:{port}: connection refused"
    )
    assert found["mapping"] == ("skipped", "the database cannot be used")
    assert table.stdout.splitlines()[-1] == f"1 failed, 1 skipped of {len(NODE_CHECKS)} checks"
    assert SECRET not in table.stdout + table.stderr + as_json.stdout + as_json.stderr


def test_a_wrong_password_is_reported_without_it(mariadb_account: Account, tmp_path: Path) -> None:
    # prepare: the password comes from the environment, and it is the wrong one
    fill(mariadb_account.database_url)
    url = sa.make_url(mariadb_account.url())
    bare = sa.URL.create(url.drivername, url.username, None, url.host, url.port, url.database)
    config = node_config(tmp_path / "federation", bare.render_as_string(hide_password=False))
    text = config.read_text().replace(
        "database_url = ", 'database_password_env = "LIAISON_CHECK_PW"\ndatabase_url = '
    )
    config.write_text(text)

    # execute
    wrong = check("node", config, "--json", env={"LIAISON_CHECK_PW": SECRET})
    right = check("node", config, "--json", env={"LIAISON_CHECK_PW": mariadb_account.password})

    # assert
    assert (wrong.returncode, right.returncode) == (1, 0)
    status, detail = statuses(wrong)["database"]
    assert status == "FAILED"
    assert detail.startswith(
        f"the agency database refused the login of user {mariadb_account.user!r}"
    )
    assert "authentication failed, code 1045" in detail
    assert SECRET not in wrong.stdout + wrong.stderr
    assert mariadb_account.password not in right.stdout + right.stderr


@pytest.mark.parametrize(
    ("certificate", "key", "expected"),
    [
        ("node", "gateway", "does not belong to the certificate"),
        (
            "gateway",
            "gateway",
            "may not be used as a server (its extended key usage lacks serverAuth)",
        ),
    ],
)
def test_inconsistent_tls_files_fail(
    certificate: str, key: str, expected: str, tmp_path: Path
) -> None:
    # prepare: mutual TLS from a development CA, with a mismatched part
    config = sqlite_node(tmp_path)
    pki = tmp_path / "pki"
    write_dev_pki(pki, {"node": [CertRole.SERVER], "gateway": [CertRole.CLIENT]})
    pin = certificate_identity(pki / "gateway.crt").spki_sha256
    text = config.read_text().replace(
        "[[trusted_gateway]]", f'[[trusted_gateway]]\ntls_spki_sha256 = ["{pin}"]'
    )
    text += (
        f'\n[tls]\ncertificate = "{pki / (certificate + ".crt")}"\n'
        f'private_key = "{pki / (key + ".key")}"\nclient_ca = "{pki / "ca.pem"}"\n'
    )
    config.write_text(text)

    # execute
    run = check("node", config, "--json")

    # assert
    assert run.returncode == 1
    status, detail = statuses(run)["tls"]
    assert status == "FAILED"
    assert expected in detail


def test_a_config_that_does_not_parse_skips_the_rest(tmp_path: Path) -> None:
    config = sqlite_node(tmp_path)
    config.write_text(config.read_text() + "\n[node\n")

    run = check("node", config)

    assert run.returncode == 1
    lines = run.stdout.splitlines()
    assert lines[0].startswith("config ")
    assert "FAILED" in lines[0]
    assert "not valid TOML" in lines[0]
    assert all(" skipped " in line for line in lines[1:-1])


def test_a_missing_config_file_is_a_usage_error(tmp_path: Path) -> None:
    run = check("node", tmp_path / "nowhere.toml")

    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr == f"error: --config {tmp_path / 'nowhere.toml'}: no such file\n"


# --- gateway ---------------------------------------------------------------------------


def gateway_config(root: Path, ledger: str = "ledger.sqlite3") -> Path:
    write_gateway_keys(root)
    write_dev_idp(root, INVESTIGATOR_AGENCY)
    return write_gateway_config(root, [INVESTIGATOR_AGENCY], {}, ledger=ledger)


def test_a_sound_gateway_passes_every_check(tmp_path: Path) -> None:
    config = gateway_config(tmp_path)

    run = check("gateway", config, "--json")

    assert run.returncode == 0, run.stdout + run.stderr
    found = statuses(run)
    assert list(found) == GATEWAY_CHECKS
    assert {status for status, _ in found.values()} == {"ok"}
    assert found["ledger"][1] == (
        f"{tmp_path / 'gateway' / 'ledger.sqlite3'} will be created at first start "
        f"({tmp_path / 'gateway'} is writable)"
    )


def test_a_gateway_ledger_on_postgresql_with_its_password_from_the_environment(
    postgres_url: str, tmp_path: Path
) -> None:
    # prepare: spelled postgres://, password from the environment
    bare = sa.make_url(postgres_url).set(drivername="postgres")
    config = gateway_config(tmp_path, bare.render_as_string(hide_password=False))
    config.write_text(
        config.read_text().replace("[ledger]\n", '[ledger]\npassword_env = "LIAISON_LEDGER_PW"\n')
    )

    run = check("gateway", config, "--json", env={"LIAISON_LEDGER_PW": SECRET})

    assert run.returncode == 0, run.stdout + run.stderr
    detail = statuses(run)["ledger"][1]
    shown = sa.make_url(postgres_url).set(password=SECRET).render_as_string(hide_password=True)
    assert detail == f"{shown}: no ledger yet; this account may create it at first start"
    assert SECRET not in run.stdout + run.stderr


def test_a_missing_issuer_key_fails_the_issuers_check(tmp_path: Path) -> None:
    config = gateway_config(tmp_path)
    (tmp_path / "idp" / f"{INVESTIGATOR_AGENCY}.pub").unlink()

    run = check("gateway", config)

    assert run.returncode == 1
    line = next(line for line in run.stdout.splitlines() if line.startswith("issuers "))
    assert "FAILED" in line
    assert f"{INVESTIGATOR_AGENCY}.pub" in line


def keycloak_issuer(config: Path, jwks_url: str, jwks: list[dict[str, object]]) -> None:
    """Trust a second provider by JWKS URL and a saved JWKS file next to ``config``."""
    (config.parent / "keycloak-jwks.json").write_text(json.dumps({"keys": jwks}))
    with config.open("a") as f:
        f.write(
            "\n[[issuer]]\n"
            'issuer = "https://sso.genovia.invalid/realms/police"\n'
            'agencies = ["genovia"]\n'
            'algorithms = ["EdDSA", "RS256"]\n'
            f'jwks_url = "{jwks_url}"\n'
            'jwks_file = "keycloak-jwks.json"\n'
        )


def test_issuers_report_their_usable_keys(tmp_path: Path) -> None:
    config = gateway_config(tmp_path)
    with serving_jwks() as idp:
        idp.publish(jwk(ed25519.Ed25519PrivateKey.generate(), "from-url"))
        keycloak_issuer(config, idp.url, [jwk(ed25519.Ed25519PrivateKey.generate(), "saved")])

        run = check("gateway", config, "--json")

    assert run.returncode == 0, run.stdout + run.stderr
    assert statuses(run)["issuers"] == (
        "ok",
        f"{dev_issuer(INVESTIGATOR_AGENCY)}: 1 usable key(s) | "
        "https://sso.genovia.invalid/realms/police: 2 usable key(s)",
    )


def test_a_failed_jwks_fetch_and_skipped_kids_are_a_warning_with_reasons(
    tmp_path: Path,
) -> None:
    # prepare: the provider's URL answers 503; its saved file has a signing key,
    # the realm's encryption key and an RSA key too weak to use
    config = gateway_config(tmp_path)
    weak = rsa.generate_private_key(65537, 1024)  # noqa: S505  # refused on purpose
    saved = [
        jwk(ed25519.Ed25519PrivateKey.generate(), "sig-1"),
        jwk(rsa.generate_private_key(65537, 2048), "enc-1", use="enc"),
        jwk(weak, "legacy"),
    ]
    with serving_jwks() as idp:
        idp.status = 503
        keycloak_issuer(config, idp.url, saved)

        # execute
        as_json = check("gateway", config, "--json")
        table = check("gateway", config)

    # assert: the gateway would start (exit 0), and the check says what is missing
    assert (as_json.returncode, table.returncode) == (0, 0), table.stdout + table.stderr
    status, detail = statuses(as_json)["issuers"]
    assert status == "warning"
    assert detail == (
        f"{dev_issuer(INVESTIGATOR_AGENCY)}: 1 usable key(s) | "
        "https://sso.genovia.invalid/realms/police: 1 usable key(s); "
        f"jwks_url {idp.url} failed (HTTP 503); only the keys of its other sources are in use; "
        "kid 'enc-1' skipped: `use` is 'enc', not 'sig'; "
        "kid 'legacy' skipped: RSA key of 1024 bits; at least 2048 are needed"
    )
    assert as_json.json()["ok"] is True
    line = next(line for line in table.stdout.splitlines() if line.startswith("issuers "))
    assert line.split()[1] == "warning"
    assert table.stdout.splitlines()[-1] == (
        f"all {len(GATEWAY_CHECKS)} checks passed, 1 with a warning"
    )


def test_the_inbox_check_names_its_officers_and_warns_when_nobody_can_decide(
    tmp_path: Path,
) -> None:
    # prepare: Freedonia's demo node (an approve rule, an inbox), then one
    # whose policy lost its approve rule
    root = tmp_path / "federation"
    with open(os.devnull, "w") as quiet:
        build_federation(root, media=50, accounts=20, progress=quiet)
    config = root / "nodes" / "freedonia" / "node.toml"
    sound = check("node", config, "--json")
    policy = root / "nodes" / "freedonia" / "policy.toml"
    rules = policy.read_text().split("[[rule]]")
    policy.write_text("[[rule]]".join(r for r in rules if 'effect = "approve"' not in r))
    orphaned = check("node", config, "--json")

    # assert
    status, detail = statuses(sound)["inbox"]
    assert status == "ok"
    assert "audience 'liaison-node/freedonia', officers duty-officer" in detail
    assert f"{dev_issuer('freedonia')}: 1 usable key(s)" in detail
    assert statuses(orphaned)["policy"][0] == "ok", statuses(orphaned)["policy"]
    status, detail = statuses(orphaned)["inbox"]
    assert status == "warning", detail
    assert detail.endswith("no approve rule names officers, so nobody can open it")
