"""Checking uploaded ledger copies: a file from the party being audited is opened only
once its schema is Liaison's own, one set at a time, and checked against the live
ledger's newest signed checkpoint.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from liaison.console.audit_ledgers import (
    SQLITE_MAGIC,
    AuditResult,
    Ledgers,
    ledger_result,
    reconcile_result,
    require_signed,
)
from liaison.errors import (
    InvalidQuery,
    LedgerError,
    LedgerUnavailable,
    LiaisonError,
)
from liaison.keys import VerifyingKey
from liaison.ledger.reconcile import (
    LedgerFiles,
    reconcile_files,
)
from liaison.ledger.store import LedgerStore
from liaison.ledger.store import metadata as ledger_metadata
from liaison.ledger.verify import Finding, VerifyReport, Witness, verify_ledger
from liaison.ledger.views import format_time

# -- uploaded copies -----------------------------------------------------------

# Checking a copy takes a CPU and a worker thread for as long as the copy is
# big, and the copies come from the party being audited: one at a time.
_CHECKING = threading.Semaphore(1)
BUSY_WAIT_S = 10.0
# A sound ledger file of a few hundred MB passes SQLite's quick_check in seconds.
SCHEMA_CHECK_S = 60.0
COPY_CHUNK = 1024 * 1024
# The tables the verifier reads: each must be a plain table, not a view.
LEDGER_TABLES = frozenset(t.name for t in ledger_metadata.sorted_tables)


class CopiesBusy(LedgerUnavailable):
    """Another auditor's copies are being checked; the console checks one set at a time."""


@dataclass(frozen=True, slots=True)
class Upload:
    """A ledger copy as uploaded: the ledger it claims to be, the browser's file name, its bytes."""

    name: str
    filename: str
    source: BinaryIO


def check_copies(
    uploads: Sequence[Upload],
    ledgers: Ledgers,
    *,
    allow_unsigned_tail: bool = False,
    wait_s: float = BUSY_WAIT_S,
) -> AuditResult:
    """Verify uploaded copies against the configured public keys; reconcile when there are both.

    Each copy must extend the newest checkpoint of the live ledger of its
    name (a witness the copy's maker cannot change), so a copy cut short or
    rolled back fails. The copies go to a private folder of their own,
    removed when the check ends. One set of copies is checked at a time:
    :class:`CopiesBusy` when another set is still being checked after ``wait_s``.
    """
    if not _CHECKING.acquire(timeout=wait_s):
        raise CopiesBusy(
            "another set of ledger copies is being checked on this console right now; "
            "try again in a minute (or check a big copy with `liaison audit verify`)"
        )
    try:
        return _check_copies(uploads, ledgers, allow_unsigned_tail)
    finally:
        _CHECKING.release()


def _check_copies(
    uploads: Sequence[Upload], ledgers: Ledgers, allow_unsigned_tail: bool
) -> AuditResult:
    started = time.monotonic()
    refused: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="liaison-audit-") as folder:
        kept: list[LedgerFiles] = []
        for upload in uploads:
            shown = f"{upload.name} copy ({upload.filename or 'unnamed file'})"
            # Our own name in our own folder: the browser's file name is never a path here.
            path = Path(folder) / f"{upload.name}.sqlite3"
            try:
                _save(upload.source, path)
                check_schema(path)
            except LiaisonError as exc:
                refused.append((shown, _cleaned(str(exc), folder)))
                continue
            kept.append(LedgerFiles(upload.name, str(path), ledgers.named(upload.name).key))
        try:
            reports = {
                files.name: _verify_file(
                    files, allow_unsigned_tail, _live_witness(ledgers, files.name)
                )
                for files in kept
            }
        except LiaisonError as exc:
            refused.append(("the copies", _cleaned(str(exc), folder)))
            reports = {}
        for report in reports.values():
            require_signed(report, covered=True)
        gateway = [f for f in kept if f.name == "gateway"]
        nodes = [f for f in kept if f.name != "gateway"]
        if reports and gateway and nodes:
            try:
                reconciled = reconcile_files(
                    gateway[0], nodes, allow_unsigned_tail=allow_unsigned_tail
                )
            except LiaisonError as exc:
                refused.append(("the copies", _cleaned(str(exc), folder)))
            else:
                # Each ledger's verdict is the one checked against its live witness.
                reconciled.gateway = reports["gateway"]
                reconciled.nodes = {n.name: reports[n.name] for n in nodes}
                result = reconcile_result("the uploaded copies", reconciled, started)
                return _with_refused(result, refused)
    return AuditResult(
        what="the uploaded copies",
        checked_at=format_time(time.time_ns() // 1_000_000),
        seconds=time.monotonic() - started,
        ledgers=tuple(ledger_result(name, report) for name, report in reports.items()),
        refused=tuple(refused),
    )


def _save(source: BinaryIO, path: Path) -> None:
    """Stream ``source`` to ``path`` (never whole in memory), refusing what is not SQLite."""
    if source.seekable():
        source.seek(0)
    head = source.read(len(SQLITE_MAGIC))
    if head != SQLITE_MAGIC:
        raise InvalidQuery("not a SQLite ledger file; upload the .sqlite3 file")
    with path.open("xb") as out:
        path.chmod(0o600)
        out.write(head)
        shutil.copyfileobj(source, out, COPY_CHUNK)


def check_schema(path: Path, deadline_s: float = SCHEMA_CHECK_S) -> None:
    """Refuse a file that is not a plain, sound ledger before anything reads it as one.

    A copy comes from the party being audited. SQLite runs whatever a file's
    schema says when it is read: a view or trigger in a table's place (a
    recursive view never ends), a generated column, a virtual table. Only
    plain tables and their indexes are allowed, the ledger's tables must be
    tables, and the file must pass ``PRAGMA quick_check``.
    """
    deadline = time.monotonic() + deadline_s
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open the copy as a SQLite file ({exc})") from exc
    try:
        conn.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
        conn.execute("PRAGMA trusted_schema=OFF")
        schema = conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
        _check_schema_rows(schema)
        for table in sorted(LEDGER_TABLES):
            columns = conn.execute(f"PRAGMA table_xinfo({table})").fetchall()
            # hidden 2 and 3 are generated columns: an expression run on every read.
            if any(c[6] != 0 for c in columns):
                raise LedgerError(f"its table {table} has generated columns: not a Liaison ledger")
        found = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        if found != ["ok"]:
            raise LedgerError(
                f"the file is damaged (SQLite's quick_check: {'; '.join(map(str, found))}); "
                "copy the ledger again, with SQLite's backup (`sqlite3 ledger.sqlite3 "
                "'.backup copy.sqlite3'`)"
            )
    except sqlite3.Error as exc:
        if time.monotonic() > deadline:
            raise LedgerError(
                f"checking the file took over {deadline_s:g} s; check it with "
                "`liaison audit verify`"
            ) from exc
        raise LedgerError(f"not a readable SQLite ledger ({exc})") from exc
    finally:
        conn.close()


def _check_schema_rows(schema: Sequence[tuple[str, str, str | None]]) -> None:
    kinds = {name: kind for kind, name, _sql in schema}
    for kind, name, sql in schema:
        if kind not in ("table", "index"):
            raise LedgerError(
                f"it holds a {kind} ({name!r}); a ledger holds only tables and indexes, "
                "and a copy with views or triggers is not read here"
            )
        if not (
            name.startswith(("liaison_", "ix_liaison_", "sqlite_autoindex_liaison_"))
            or name in ("sqlite_sequence", "sqlite_stat1", "sqlite_stat4")
        ):
            raise LedgerError(f"it holds a {kind} {name!r} that no Liaison ledger has")
        if kind == "table" and (sql or "").lstrip().upper().startswith("CREATE VIRTUAL"):
            raise LedgerError(f"its table {name!r} is a virtual table: not a Liaison ledger")
    missing = sorted(t for t in LEDGER_TABLES if kinds.get(t) != "table")
    if missing:
        raise LedgerError(f"it holds no Liaison ledger (no table {', '.join(missing)})")


def _live_witness(ledgers: Ledgers, name: str) -> Witness | str:
    """The witness for a copy of ``name``, or why there is none."""
    try:
        witness = ledgers.newest_checkpoint(name)
    except LiaisonError as exc:
        # The live ledger being unreadable must not hide what the copy shows.
        return f"could not be read ({exc})"
    return witness or "has no signed checkpoint yet"


def _with_refused(result: AuditResult, refused: list[tuple[str, str]]) -> AuditResult:
    if not refused:
        return result
    return replace(result, refused=tuple(refused))


def _cleaned(message: str, folder: str) -> str:
    # The private folder's path means nothing to the auditor.
    return message.replace(f"sqlite:///{folder}/", "").replace(f"{folder}/", "")


def _verify_file(
    files: LedgerFiles, allow_unsigned_tail: bool, witness: Witness | str = ""
) -> VerifyReport:
    store = LedgerStore(files.location, create=False)
    try:
        report, _tree = verify_ledger(
            store,
            VerifyingKey.from_pem_file(files.key),
            witnesses=(witness,) if isinstance(witness, Witness) else (),
            allow_unsigned_tail=allow_unsigned_tail,
            processes=1,
        )
    finally:
        store.close()
    if isinstance(witness, str) and witness:
        report.warnings.append(
            Finding(
                f"the live {files.name} ledger",
                f"{witness}, so this copy was not compared with its newest checkpoint: "
                "a copy cut short or rolled back would verify too",
            )
        )
    return report
