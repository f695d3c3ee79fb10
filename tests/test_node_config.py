"""A node refuses to start on a wrong config, and says exactly what is wrong.

Each test writes one real node folder (keys, policy, a SQLite database with
Ruritania's own schema) and a config that differs from a working one in one
place, then loads and builds it the way ``liaison node`` does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from liaison.catalog import CATALOG_V1
from liaison.config import NodeConfig, load_node_config
from liaison.demo.data import demo_agencies, populate
from liaison.demo.federation import write_gateway_keys
from liaison.demo.run import POLICY_DIR
from liaison.errors import ConfigError, PolicyError
from liaison.keys import SigningKey
from node.answering import NodeCore, close_core
from node.server import build_node
from policies import load_policy

RURITANIA_TABLES = "dossiers, hash_register, online_ids"
MEDIA_FIELDS = "sha256, md5, pdq, pdq_distance, category, first_seen, case_ref, victim_identified"
NODE_KEYS = (
    "clock_skew_s, database_password_env, database_password_file, database_url, default_limit, "
    "drain_s, id, listen, max_request_age_s, metrics_listen, pdq_refresh_s, policy, signing_key, "
    "state_dir, transform_key"
)

NODE = """\
[node]
id = "ruritania"
database_url = "sqlite:///agency.sqlite3"
policy = "policy.toml"
signing_key = "node.key"
"""
TRUSTED = """\
[[trusted_gateway]]
id = "gateway"
public_key = "../gateway/gateway.pub"
"""
MEDIA = """\
[datasets.media]
table = "hash_register"
[datasets.media.fields]
sha256 = "sha256_hex"
md5 = "md5_hex"
category = "cat"
first_seen = "seen_first"
"""
ACCOUNTS = """\
[datasets.accounts]
table = "online_ids"
[datasets.accounts.fields]
email = "mail"
handle = "username"
"""


POLICY_HEAD = 'version = 1\nagency = "ruritania"\n\n'
PERMIT = """\
[[rule]]
id = "hash-hits"
effect = "permit"
agencies = ["*"]
roles = ["investigator"]
purposes = ["csam-investigation"]
datasets = ["media"]
operations = ["match", "records"]
match_fields = ["sha256"]
release = ["category"]
"""
FORBID = """\
[[rule]]
id = "no-statistics"
effect = "forbid"
agencies = ["*"]
roles = ["*"]
purposes = ["statistics"]
datasets = ["*"]
operations = ["*"]
"""


@dataclass
class Site:
    """A node folder beside a gateway folder; the config is written per test."""

    folder: Path
    config: Path

    def write(self, *sections: str) -> Path:
        self.config.write_text("\n".join(sections))
        return self.config.resolve()

    def write_policy(self, text: str) -> Path:
        path = self.folder / "policy.toml"
        path.write_text(text)
        return path.resolve()


@pytest.fixture(scope="module")
def agency_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("agency") / "agency.sqlite3"
    engine = sa.create_engine(f"sqlite:///{path}")
    populate(demo_agencies()[0], engine, media=20, accounts=10, cases=5)
    engine.dispose()
    return path


@pytest.fixture
def site(tmp_path: Path, agency_database: Path) -> Site:
    root = tmp_path / "federation"
    write_gateway_keys(root)
    folder = root / "node"
    SigningKey.generate().write(folder / "node.key", folder / "node.pub")
    (folder / "agency.sqlite3").write_bytes(agency_database.read_bytes())
    (folder / "policy.toml").write_text((POLICY_DIR / "ruritania.toml").read_text())
    return Site(folder, folder / "node.toml")


def load(path: Path) -> NodeConfig:
    return load_node_config(path, CATALOG_V1)


@pytest.fixture
def built() -> Iterator[list[NodeCore]]:
    """Cores built by a test, closed after it."""
    cores: list[NodeCore] = []
    yield cores
    for core in cores:
        close_core(core)


# --- the working config every other test departs from ------------------------------


def test_working_config_builds_a_node(site: Site, built: list[NodeCore]) -> None:
    # prepare
    path = site.write(NODE, TRUSTED, MEDIA, ACCOUNTS)

    # execute
    core = build_node(load(path))
    built.append(core)

    # assert
    assert core.node_id == "ruritania"
    assert sorted(core.schema) == ["accounts", "media"]
    assert core.schema["media"].provided_fields == ("sha256", "md5", "category", "first_seen")
    assert [t.gateway_id for t in core.trusted.values()] == ["gateway"]
    assert core.limits.max_request_age_s == 300
    assert (site.folder / "state" / "receipts.sqlite3").exists()


def test_relative_paths_are_relative_to_the_config_file(
    site: Site, built: list[NodeCore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # prepare: start from somewhere else entirely
    path = site.write(NODE, TRUSTED, MEDIA)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    # execute
    config = load(path)
    built.append(build_node(config))

    # assert
    assert config.database_url == f"sqlite:///{site.folder.resolve() / 'agency.sqlite3'}"
    assert config.policy == site.folder.resolve() / "policy.toml"
    assert config.state_dir == site.folder.resolve() / "state"
    assert not any(elsewhere.iterdir())


# --- the mapping onto the agency's own schema ---------------------------------------


def test_mapping_to_a_missing_table_names_the_table(site: Site) -> None:
    # prepare
    path = site.write(NODE, TRUSTED, MEDIA.replace('"hash_register"', '"hash_registry"'))
    config = load(path)

    # execute / assert
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "dataset 'media' maps to table 'hash_registry', which does not exist in the "
            f"database; tables there: {RURITANIA_TABLES}"
        ),
    ):
        build_node(config)


def test_mapping_to_a_missing_column_names_the_column(site: Site) -> None:
    # prepare
    path = site.write(NODE, TRUSTED, MEDIA.replace('category = "cat"', 'category = "category"'))
    config = load(path)

    # execute / assert
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "field media.category maps to column hash_register.category, which does not "
            "exist; columns of hash_register: entry_id, sha256_hex, md5_hex, pdq_hex, cat, "
            "seen_first, dossier, victim_known"
        ),
    ):
        build_node(config)


def test_mapping_of_an_unknown_dataset_names_it(site: Site) -> None:
    # prepare
    path = site.write(NODE, TRUSTED, MEDIA, ACCOUNTS.replace("accounts", "profiles"))

    # execute / assert
    with pytest.raises(
        ConfigError,
        match=re.escape(
            f"{path} [datasets.profiles]: unknown dataset 'profiles'; "
            "the catalog has: media, accounts, cases"
        ),
    ):
        load(path)


def test_mapping_of_an_unknown_field_names_it(site: Site) -> None:
    # prepare
    path = site.write(NODE, TRUSTED, MEDIA + 'colour = "cat"\n')

    # execute / assert
    with pytest.raises(
        ConfigError,
        match=re.escape(
            f"{path} [datasets.media]: dataset 'media' has no field 'colour'; "
            f"its fields are: {MEDIA_FIELDS}"
        ),
    ):
        load(path)


def test_field_mapped_to_a_non_string_is_refused(site: Site) -> None:
    # prepare
    path = site.write(NODE, TRUSTED, MEDIA.replace('category = "cat"', "category = 5"))

    # execute / assert
    with pytest.raises(
        ConfigError,
        match=re.escape(f"{path} [datasets.media]: field 'category' must map to a column name"),
    ):
        load(path)


def test_no_mapped_dataset_is_refused(site: Site) -> None:
    # prepare
    path = site.write(NODE, TRUSTED)

    # execute / assert
    with pytest.raises(
        ConfigError,
        match=re.escape(f"{path}: map at least one catalog dataset under [datasets.<name>]"),
    ):
        load(path)


# --- unknown and missing keys ---------------------------------------------------------


@pytest.mark.parametrize(
    ("sections", "where", "unknown", "allowed"),
    [
        ((NODE, TRUSTED, MEDIA, "[logging]\nlevel = 'debug'\n"), "", "logging", None),
        (
            (NODE + 'database = "sqlite:///x"\n', TRUSTED, MEDIA),
            " [node]",
            "database",
            NODE_KEYS,
        ),
        (
            (NODE, TRUSTED + 'key_id = "abc"\n', MEDIA),
            " [[trusted_gateway]] #1",
            "key_id",
            "id, public_key",
        ),
        (
            (NODE, TRUSTED, MEDIA.replace("table =", "tabel =")),
            " [datasets.media]",
            "tabel",
            "fields, hex_case, key, table",
        ),
    ],
    ids=["top-level", "node", "trusted-gateway", "dataset"],
)
def test_unknown_keys_are_named_with_the_allowed_ones(
    site: Site, sections: tuple[str, ...], where: str, unknown: str, allowed: str | None
) -> None:
    # prepare
    path = site.write(*sections)
    allowed_text = allowed or "datasets, inbox, ledger, node, tls, trusted_gateway"

    # execute / assert
    with pytest.raises(
        ConfigError,
        match=re.escape(f"{path}{where}: unknown keys {unknown}; allowed: {allowed_text}"),
    ):
        load(path)


def test_dataset_key_column_is_read(site: Site) -> None:
    # prepare: a view or table without a single integer primary key names its row key
    path = site.write(
        NODE,
        TRUSTED,
        MEDIA.replace('table = "hash_register"\n', 'table = "hash_register"\nkey = "rowid"\n'),
    )

    # execute
    config = load(path)

    # assert
    assert [m.key for m in config.datasets] == ["rowid"]


@pytest.mark.parametrize("value", ['""', "5"])
def test_dataset_key_column_that_is_not_a_name_is_refused(site: Site, value: str) -> None:
    # prepare
    path = site.write(
        NODE,
        TRUSTED,
        MEDIA.replace('table = "hash_register"\n', f'table = "hash_register"\nkey = {value}\n'),
    )

    # execute / assert
    with pytest.raises(
        ConfigError, match=re.escape("[datasets.media]: `key` must be a non-empty string")
    ):
        load(path)


def test_missing_trusted_gateway_is_refused(site: Site) -> None:
    # prepare
    path = site.write(NODE, MEDIA)

    # execute / assert
    with pytest.raises(
        ConfigError,
        match=re.escape(f"{path}: at least one [[trusted_gateway]] with a public_key is needed"),
    ):
        load(path)


def test_trusted_gateway_as_a_single_table_is_refused(site: Site) -> None:
    # prepare: [trusted_gateway] where [[trusted_gateway]] is meant
    path = site.write(NODE, TRUSTED.replace("[[trusted_gateway]]", "[trusted_gateway]"), MEDIA)

    # execute / assert
    with pytest.raises(
        ConfigError,
        match=re.escape(
            f"{path}: `trusted_gateway` must be an array of tables ([[trusted_gateway]])"
        ),
    ):
        load(path)


def test_trusted_gateway_without_a_key_is_refused(site: Site) -> None:
    # prepare
    path = site.write(NODE, '[[trusted_gateway]]\nid = "gateway"\n', MEDIA)

    # execute / assert
    with pytest.raises(
        ConfigError,
        match=re.escape(f"{path} [[trusted_gateway]] #1: `public_key` is required"),
    ):
        load(path)


@pytest.mark.parametrize("key", ["id", "database_url", "policy", "signing_key"])
def test_missing_node_key_is_named(site: Site, key: str) -> None:
    # prepare
    node = "\n".join(line for line in NODE.splitlines() if not line.startswith(f"{key} ="))
    path = site.write(node + "\n", TRUSTED, MEDIA)

    # execute / assert
    with pytest.raises(ConfigError, match=re.escape(f"{path} [node]: `{key}` is required")):
        load(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("max_request_age_s = 0", "`max_request_age_s` must be a whole number in 1..3600"),
        ("clock_skew_s = true", "`clock_skew_s` must be a whole number in 0..600"),
        ("default_limit = 20000", "`default_limit` must be a whole number in 1..10000"),
        ('listen = ""', "`listen` must be a non-empty string"),
    ],
    ids=["age", "skew", "limit", "listen"],
)
def test_out_of_range_node_setting_is_named(site: Site, line: str, message: str) -> None:
    # prepare
    path = site.write(NODE + line + "\n", TRUSTED, MEDIA)

    # execute / assert
    with pytest.raises(ConfigError, match=re.escape(f"{path} [node]: {message}")):
        load(path)


def test_config_that_is_not_toml_is_refused(site: Site) -> None:
    # prepare
    path = site.write(NODE, "[[trusted_gateway]\n")

    # execute / assert
    with pytest.raises(ConfigError, match=re.escape(f"{path}: not valid TOML (")):
        load(path)


def test_config_not_in_utf8_is_a_config_error(site: Site) -> None:
    # prepare: saved as Latin-1 by an editor, with an accent in a comment
    site.config.write_bytes(("# Sûreté nationale\n" + NODE + TRUSTED + MEDIA).encode("latin-1"))
    path = site.config.resolve()

    # execute / assert
    with pytest.raises(ConfigError, match=re.escape(str(path)) + "(?i:.*utf-8)"):
        load(path)


def test_policy_not_in_utf8_is_a_policy_error(site: Site) -> None:
    # prepare
    policy = site.folder / "policy.toml"
    policy.write_bytes(("# Sûreté nationale\n" + POLICY_HEAD + PERMIT).encode("latin-1"))
    config = load(site.write(NODE, TRUSTED, MEDIA))

    # execute / assert
    with pytest.raises(PolicyError, match=re.escape(str(policy.resolve())) + "(?i:.*utf-8)"):
        build_node(config)


def test_key_path_naming_a_folder_is_a_config_error(site: Site) -> None:
    # prepare: signing_key pointing at the node's folder instead of its key file
    path = site.write(NODE.replace('"node.key"', '"."'), TRUSTED, MEDIA)
    config = load(path)

    # execute / assert
    with pytest.raises(ConfigError, match=re.escape(str(config.signing_key))):
        build_node(config)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    # prepare
    path = (tmp_path / "absent.toml").resolve()

    # execute / assert
    with pytest.raises(ConfigError, match=re.escape(f"config file {path} does not exist")):
        load(path)


# --- keys, database and policy, found only when the node is built -------------------


def test_missing_signing_key_file_is_named(site: Site) -> None:
    # prepare
    path = site.write(NODE.replace('"node.key"', '"absent.key"'), TRUSTED, MEDIA)
    config = load(path)

    # execute / assert
    with pytest.raises(
        ConfigError,
        match=re.escape(
            f"signing key file {site.folder.resolve() / 'absent.key'} does not exist; "
            "create keys with `liaison init`"
        ),
    ):
        build_node(config)


def test_missing_gateway_key_file_is_named(site: Site) -> None:
    # prepare
    path = site.write(NODE, TRUSTED.replace("gateway.pub", "gateway-old.pub"), MEDIA)
    config = load(path)
    expected = site.folder.resolve() / ".." / "gateway" / "gateway-old.pub"

    # execute / assert
    with pytest.raises(
        ConfigError,
        match=re.escape(f"public key file {expected} does not exist; check the path"),
    ):
        build_node(config)


def test_private_key_as_trusted_gateway_key_is_refused(site: Site) -> None:
    # prepare: the node's own private key where the gateway's public key belongs
    path = site.write(NODE, TRUSTED.replace("../gateway/gateway.pub", "node.key"), MEDIA)
    config = load(path)

    # execute / assert
    with pytest.raises(
        ConfigError,
        match=re.escape(f"{site.folder.resolve() / 'node.key'} is not a PEM public key ("),
    ):
        build_node(config)


def test_database_url_without_a_driver_is_refused(site: Site) -> None:
    # prepare
    path = site.write(
        NODE.replace("sqlite:///agency.sqlite3", "oracle+nosuchdriver://u@db/agency"),
        TRUSTED,
        MEDIA,
    )
    config = load(path)

    # execute / assert
    with pytest.raises(ConfigError, match=re.escape("cannot use database_url (")):
        build_node(config)


def test_database_url_that_is_not_a_url_is_refused(site: Site) -> None:
    # prepare
    path = site.write(NODE.replace("sqlite:///agency.sqlite3", "agency.sqlite3"), TRUSTED, MEDIA)

    # execute / assert
    with pytest.raises(
        ConfigError,
        match=re.escape("database_url 'agency.sqlite3' is not a SQLAlchemy URL ("),
    ):
        load(path)


def test_missing_policy_file_is_named(site: Site) -> None:
    # prepare
    path = site.write(NODE.replace('"policy.toml"', '"polcy.toml"'), TRUSTED, MEDIA)
    config = load(path)

    # execute / assert
    with pytest.raises(
        PolicyError,
        match=re.escape(
            f"policy file {site.folder.resolve() / 'polcy.toml'} does not exist; "
            "check the node config"
        ),
    ):
        build_node(config)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (
            PERMIT.replace('datasets = ["media"]', 'datasets = ["media", "images"]'),
            "rule 'hash-hits': unknown dataset 'images'; the catalog has: media, accounts, cases",
        ),
        (
            FORBID.replace('datasets = ["*"]', 'datasets = ["account"]'),
            "rule 'no-statistics': unknown dataset 'account'; the catalog has: media, accounts, "
            "cases",
        ),
        (
            PERMIT.replace('release = ["category"]', 'release = ["category", "colour"]'),
            f"rule 'hash-hits': `release`: dataset 'media' has no field 'colour'; "
            f"its fields are: {MEDIA_FIELDS}",
        ),
        (
            PERMIT.replace('match_fields = ["sha256"]', 'match_fields = ["sha265"]'),
            f"rule 'hash-hits': `match_fields`: dataset 'media' has no field 'sha265'; "
            f"its fields are: {MEDIA_FIELDS}",
        ),
    ],
    ids=["permit-dataset", "forbid-dataset", "release-field", "match-field"],
)
def test_policy_naming_what_the_catalog_lacks_stops_the_node(
    site: Site, policy: str, message: str
) -> None:
    # prepare
    policy_path = site.write_policy(POLICY_HEAD + policy)
    config = load(site.write(NODE, TRUSTED, MEDIA))

    # execute / assert
    with pytest.raises(PolicyError, match=re.escape(f"{policy_path}: {message}")):
        build_node(config)
    with pytest.raises(PolicyError, match=re.escape(f"{policy_path}: {message}")):
        load_policy(policy_path, CATALOG_V1)
    assert not (site.folder / "state").exists()
