"""Fixtures: a demo federation on disk, real servers, and the database services.

PostgreSQL and MariaDB tests use this machine's services. Where a service is
not reachable they skip with the reason, except under CI (CI=true), where a
missing service is a failure: CI must never pass by skipping them.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import settings

from liaison.demo.data import INVESTIGATOR_AGENCY, demo_agencies
from liaison.demo.federation import write_gateway_config
from liaison.demo.run import build_federation
from tests.support import RunningGateway, RunningNode, running_gateway, running_node

POSTGRES_ADMIN_URL = os.environ.get(
    "LIAISON_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MARIADB_ADMIN_URL = os.environ.get(
    "LIAISON_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/test"
)
IN_CI = os.environ.get("CI", "").lower() == "true"

# CI runs the same examples every time, so a red build is reproducible and a
# property's coverage checks cannot flake; local runs keep exploring.
settings.register_profile("ci", derandomize=True, print_blob=True)
if IN_CI:
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def federation_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo federation (keys, configs, policies, small SQLite databases), built once."""
    root = tmp_path_factory.mktemp("federation-template")
    with open(os.devnull, "w") as quiet:
        build_federation(root, media=600, accounts=300, progress=quiet)
    return root


@pytest.fixture
def federation_dir(federation_template: Path, tmp_path: Path) -> Path:
    """A private copy of the demo federation for one test (its own replay state)."""
    root = tmp_path / "federation"
    shutil.copytree(federation_template, root)
    return root


@dataclass
class Federation:
    root: Path
    nodes: dict[str, RunningNode]
    gateway: RunningGateway


def start_federation(root: Path, stack: ExitStack) -> Federation:
    nodes = {}
    for agency in demo_agencies():
        config = root / "nodes" / agency.agency_id / "node.toml"
        nodes[agency.agency_id] = stack.enter_context(running_node(config))
    write_gateway_config(
        root, [INVESTIGATOR_AGENCY], {n: node.address for n, node in nodes.items()}
    )
    gateway = stack.enter_context(running_gateway(root / "gateway" / "gateway.toml"))
    return Federation(root, nodes, gateway)


@pytest.fixture
def federation(federation_dir: Path) -> Iterator[Federation]:
    """Three demo nodes and a gateway, running in this process on loopback."""
    with ExitStack() as stack:
        yield start_federation(federation_dir, stack)


@pytest.fixture(scope="module")
def module_federation(
    federation_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Federation]:
    """Three demo nodes and a gateway shared by the tests of one module.

    Only for tests that ask questions and check the answers, never what the
    federation recorded in total (replay records, ledger sizes, rate usage from
    a start of zero): those take ``federation``, a federation of their own.
    """
    root = tmp_path_factory.mktemp("module-federation") / "federation"
    shutil.copytree(federation_template, root)
    with ExitStack() as stack:
        yield start_federation(root, stack)


def _service_database(admin_url: str, name: str) -> Iterator[str]:
    """Create a fresh database on a service for one test; yield its URL; drop it after."""
    try:
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        reason = f"{name} is not reachable at {admin_url} ({type(exc).__name__})"
        if IN_CI:
            pytest.fail(f"{reason}; under CI=true the database tests must run")
        pytest.skip(reason)
    db = f"liaison_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {db}"))
    url = sa.make_url(admin_url).set(database=db).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            if admin.dialect.name == "postgresql":
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            else:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {db}"))
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from _service_database(POSTGRES_ADMIN_URL, "PostgreSQL")


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    yield from _service_database(MARIADB_ADMIN_URL, "MariaDB")


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind the node must serve."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'agency.sqlite3'}"
    elif request.param == "postgresql":
        yield from _service_database(POSTGRES_ADMIN_URL, "PostgreSQL")
    else:
        yield from _service_database(MARIADB_ADMIN_URL, "MariaDB")
