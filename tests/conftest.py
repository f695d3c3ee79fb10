"""Fixtures: a demo federation on disk, real servers, and the database services.

PostgreSQL and MariaDB tests use this machine's services. Where a service is
not reachable they skip with the reason, except under CI (CI=true), where a
missing service is a failure: CI must never pass by skipping them.
"""

from __future__ import annotations

import atexit
import json
import locale
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
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

# The web consoles' test bed and browser: one each per test session (per xdist
# worker), shared by every console test module, since starting them costs seconds.
from tests.console_support import browser, console_bed  # noqa: F401 (fixtures)
from tests.support import (
    COMMAND_TIMEOUT_S,
    REPO,
    STOP_TIMEOUT_S,
    Run,
    RunningGateway,
    RunningNode,
    running_gateway,
    running_node,
)

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


# --- `liaison` commands, started warm ----------------------------------------------------

# The zygote: a Python that has imported the command line once, then forks a
# child per command. The child takes the caller's stdio, working folder and
# environment, and runs `liaison/__main__.py` as `python -m liaison` would
# (runpy, as `-m` does), then exits through the normal interpreter shutdown.
_ZYGOTE = """\
import json, os, runpy, socket, struct, sys
import liaison.cli.main  # the costly part of every start, done once
channel = socket.socket(fileno=int(sys.argv[1]))
while True:
    message, fds, _, _ = socket.recv_fds(channel, 1 << 20, 3)
    if not message:
        sys.exit(0)
    request = json.loads(message)
    pid = os.fork()
    if pid == 0:
        channel.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path[0] = request["cwd"]
        sys.argv = ["-m", *request["args"]]
        runpy.run_module("liaison", run_name="__main__", alter_sys=True)
        sys.exit(0)
    for fd in fds:
        os.close(fd)
    channel.sendall(struct.pack("!q", pid))
    _, status = os.waitpid(pid, 0)
    channel.sendall(struct.pack("!q", os.waitstatus_to_exitcode(status)))
"""


class WarmLiaison:
    """``python -m liaison ARGS`` in a fresh process, without paying for its imports each time.

    Importing the command line costs most of a second of CPU, and these tests
    run it hundreds of times. Each command still runs in a process of its own,
    with its own stdio, exit status, working folder and environment; only the
    imports were done before it was forked. What that cannot catch (a broken
    ``__main__``, an import that fails in a fresh interpreter) the tests that run
    a plain ``tests.support.liaison`` still do.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._zygote: subprocess.Popen[bytes] | None = None
        self._channel: socket.socket | None = None

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self._zygote = subprocess.Popen(
                [sys.executable, "-c", _ZYGOTE, str(theirs.fileno())],
                cwd=REPO,
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        self._channel = ours
        atexit.register(self.close)
        return ours

    def close(self) -> None:
        """Stop the zygote: it exits when its channel closes."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._zygote is not None:
            try:
                self._zygote.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._zygote.kill()  # the zygote this object started, stuck on a child
                self._zygote.wait()
            self._zygote = None

    def __call__(
        self, *args: str | Path, cwd: Path = REPO, timeout_s: float = COMMAND_TIMEOUT_S
    ) -> Run:
        with self._lock:
            return self._run([str(a) for a in args], cwd, timeout_s)

    def _run(self, args: list[str], cwd: Path, timeout_s: float) -> Run:
        channel = self._channel or self._start()
        request = json.dumps({"args": args, "cwd": str(cwd), "env": dict(os.environ)})
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        stdin = os.open(os.devnull, os.O_RDONLY)
        try:
            socket.send_fds(channel, [request.encode()], [stdin, out_w, err_w])
        finally:
            for fd in (stdin, out_w, err_w):
                os.close(fd)
        pid = self._receive(channel)
        captured = self._read_until_eof({out_r: bytearray(), err_r: bytearray()}, timeout_s)
        if captured is None:
            os.kill(pid, signal.SIGKILL)  # the child this call started
            self._receive(channel)
            raise subprocess.TimeoutExpired(["liaison", *args], timeout_s)
        code = self._receive(channel)
        return Run(code, _text(captured[out_r]), _text(captured[err_r]))

    @staticmethod
    def _receive(channel: socket.socket) -> int:
        data = channel.recv(8)
        if len(data) != 8:
            raise RuntimeError("the warm `liaison` zygote stopped; its stderr says why")
        (value,) = struct.unpack("!q", data)
        return int(value)

    @staticmethod
    def _read_until_eof(
        pipes: dict[int, bytearray], timeout_s: float
    ) -> dict[int, bytearray] | None:
        """Everything written to ``pipes`` until each is closed; None past the deadline."""
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as selector:
            for fd in pipes:
                selector.register(fd, selectors.EVENT_READ)
            try:
                while selector.get_map():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    for key, _ in selector.select(left):
                        chunk = os.read(key.fd, 1 << 16)
                        if chunk:
                            pipes[key.fd] += chunk
                        else:
                            selector.unregister(key.fd)
            finally:
                for fd in pipes:
                    os.close(fd)
        return pipes


def _text(data: bytes | bytearray) -> str:
    """Decode as ``subprocess.run(text=True)`` does: locale encoding, universal newlines."""
    text = data.decode("utf-8" if sys.flags.utf8_mode else locale.getencoding())
    return text.replace("\r\n", "\n").replace("\r", "\n")


warm_liaison = WarmLiaison()
