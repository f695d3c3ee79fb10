"""Every file a `liaison` command takes, given wrong: one clear line, never a traceback.

Each file-taking option is run as a real subprocess with a path that does not
exist, a folder, a file that cannot be read, an empty file and binary
garbage (output options: a folder, and a file under a missing folder). The
command must fail with exit 1 or 2 and a single `error: ...` line naming the
file and what is wrong with it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from liaison.demo.federation import GATEWAY_ID
from liaison.keys import SigningKey
from liaison.ledger.log import Ledger
from liaison.ledger.logged import gateway_origin
from tests.support import assert_one_line_error, liaison

QUERY = [
    "query",
    "media",
    "--match",
    "--where",
    f"sha256={'ab' * 32}",
    "--purpose",
    "csam-investigation",
    "--case-ref",
    "X",
]
NOWHERE = "127.0.0.1:9"  # discard: never reached, the file is refused first

Args = Callable[[Path, Path], list[str | Path]]
"""(federation from `liaison init`, the bad path) -> the command line."""

READ_OPTIONS: dict[str, Args] = {
    "query --token-file": lambda _f, p: [*QUERY, "--gateway", NOWHERE, "--token-file", p],
    "query --tls-ca": lambda _f, p: [*QUERY, "--gateway", NOWHERE, "--token", "t", "--tls-ca", p],
    "query --hashes": lambda _f, p: [
        *QUERY[:3],
        *QUERY[5:],
        "--gateway",
        NOWHERE,
        "--token",
        "t",
        "--hashes",
        p,
    ],
    "token issue --key": lambda _f, p: [
        "token",
        "issue",
        "--key",
        p,
        "--agency",
        "inv",
        "--subject",
        "s",
    ],
    "node serve --config": lambda _f, p: ["node", "serve", "--config", p],
}
KIND_SAYS = {
    "missing": r"does not exist",
    "folder": r"folder|[Ii]s a directory",
    "unreadable": r"cannot be read|cannot read",
    "empty": r"empty|not an unencrypted PEM",
    "garbage": r"binary data|no PEM|not an unencrypted PEM|not valid TOML",
}


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("inputs")
    run = liaison("init", base / "fed", "--node", "a", "--agency", "inv", cwd=base)
    assert run.returncode == 0, run.stderr
    root = base / "fed"
    # A real (empty) gateway ledger, for the audit commands to open.
    key = SigningKey.from_pem_file(root / "gateway" / "gateway.key")
    Ledger.open(str(root / "gateway" / "ledger.sqlite3"), key, gateway_origin(GATEWAY_ID)).close()
    return root


def bad_path(tmp_path: Path, kind: str) -> Path:
    """A path of ``kind``: missing, folder, unreadable, empty or garbage."""
    path = tmp_path / f"bad-{kind}"
    if kind == "folder":
        path.mkdir()
    elif kind == "unreadable":
        if os.geteuid() == 0:
            # root reads any mode; a path through a file fails to open all the same.
            (tmp_path / "a-file").write_text("x\n")
            path = tmp_path / "a-file" / "inside"
        else:
            path.write_text("secret\n")
            path.chmod(0)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(bytes(range(256)) * 16)
    return path


def run_bad(federation: Path, tmp_path: Path, args: Args, path: Path) -> str:
    run = liaison(*args(federation, path), cwd=tmp_path)
    line = assert_one_line_error(run)
    assert run.returncode in (1, 2), run
    return line


@pytest.mark.parametrize("kind", list(KIND_SAYS))
@pytest.mark.parametrize("option", list(READ_OPTIONS))
def test_a_bad_input_file_is_one_line(
    federation: Path, tmp_path: Path, option: str, kind: str
) -> None:
    path = bad_path(tmp_path, kind)

    line = run_bad(federation, tmp_path, READ_OPTIONS[option], path)

    assert str(path) in line
    assert re.search(KIND_SAYS[kind], line), line


MORE: list[tuple[str, str, Args]] = [
    ("gateway serve --config", "missing", lambda _f, p: ["gateway", "serve", "--config", p]),
    ("gateway serve --config", "garbage", lambda _f, p: ["gateway", "serve", "--config", p]),
    (
        "query --federation",
        "missing",
        lambda _f, p: [*QUERY, "--federation", p],
    ),
    ("query --federation", "garbage", lambda _f, p: [*QUERY, "--federation", p]),
    ("policy check", "folder", lambda _f, p: ["policy", "check", p]),
    ("policy check", "garbage", lambda _f, p: ["policy", "check", p]),
    (
        "policy check --node-config",
        "missing",
        lambda f, p: ["policy", "check", f / "nodes" / "a" / "policy.toml", "--node-config", p],
    ),
    (
        "audit verify",
        "missing",
        lambda f, p: ["audit", "verify", p, "--key", f / "gateway" / "gateway.pub"],
    ),
    (
        "audit verify --checkpoint",
        "garbage",
        lambda f, p: [
            "audit",
            "verify",
            f / "gateway" / "ledger.sqlite3",
            "--key",
            f / "gateway" / "gateway.pub",
            "--checkpoint",
            p,
        ],
    ),
    ("audit hash --audit-key", "garbage", lambda _f, p: ["audit", "hash", "v", "--audit-key", p]),
]


@pytest.mark.parametrize(("option", "kind", "args"), MORE, ids=[f"{o} {k}" for o, k, _ in MORE])
def test_other_input_files_are_one_line(
    federation: Path, tmp_path: Path, option: str, kind: str, args: Args
) -> None:
    path = bad_path(tmp_path, kind)

    line = run_bad(federation, tmp_path, args, path)

    assert str(path) in line


def test_an_image_that_does_not_exist_asks_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-photo.jpg"

    line = run_bad(
        tmp_path,
        tmp_path,
        lambda _f, p: [*QUERY[:3], *QUERY[5:], "--gateway", NOWHERE, "--token", "t", "--image", p],
        missing,
    )

    assert "nothing was asked" in line
    assert str(missing) in line


OUTPUTS: list[tuple[str, Args]] = [
    (
        "token issue --out",
        lambda f, p: [
            "token",
            "issue",
            "--key",
            f / "idp" / "inv.key",
            "--agency",
            "inv",
            "--subject",
            "s",
            "--out",
            p,
        ],
    ),
    (
        "node serve --port-file",
        lambda f, p: [
            "node",
            "serve",
            "--config",
            f / "nodes" / "a" / "node.toml",
            "--port-file",
            p,
        ],
    ),
    ("init", lambda _f, p: ["init", p, "--node", "a"]),
]


@pytest.mark.parametrize("where", ["folder", "under a file"])
@pytest.mark.parametrize(("option", "args"), OUTPUTS, ids=[o for o, _ in OUTPUTS])
def test_an_output_that_cannot_be_written_is_one_line(
    federation: Path, tmp_path: Path, option: str, args: Args, where: str
) -> None:
    if option == "init" and where == "folder":
        path = tmp_path / "plain-file"  # init writes a folder: a file is what is wrong
        path.write_text("mine\n")
    elif where == "folder":
        path = tmp_path / "a-folder"
        path.mkdir()
    else:
        (tmp_path / "a-file").write_text("mine\n")
        path = tmp_path / "a-file" / "out"

    line = run_bad(federation, tmp_path, args, path)

    named = path.parent if option == "init" and where == "under a file" else path
    assert str(named) in line
    if where == "under a file":
        assert (tmp_path / "a-file").read_text() == "mine\n"  # left as it was
