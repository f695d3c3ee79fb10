"""The auditors' ledgers: which ledgers, verifying and reconciling them (live or uploaded
copies), finding entries, and making proofs, for the pages in :mod:`liaison.console.auditor`.

Everything here calls the same library functions as `liaison audit`.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

from starlette.responses import Response

from liaison.config import TableReader
from liaison.errors import (
    CheckpointError,
    ConfigError,
    InvalidQuery,
    LedgerError,
    LedgerUnavailable,
    LiaisonError,
    NotFound,
    ProofError,
)
from liaison.keys import VerifyingKey
from liaison.ledger.checkpoint import open_checkpoint
from liaison.ledger.proofs import consistency_proof, inclusion_proof
from liaison.ledger.reconcile import (
    LedgerFiles,
    ReconcileReport,
    describe_followups,
    federation_ledgers,
    reconcile_files,
)
from liaison.ledger.store import LedgerStore
from liaison.ledger.store import metadata as ledger_metadata
from liaison.ledger.verify import Finding, VerifyReport, Witness, describe_age, verify_ledger
from liaison.ledger.views import Filters, Row, format_time, parse_time, rows

# The entries page shows at most this many (the newest), to stay quick.
MAX_ROWS = 200
SQLITE_MAGIC = b"SQLite format 3\x00"
KINDS = (
    "request",
    "outcome",
    "receipt",
    "opened",
    "followup",
    "followup-delivery",
    "followup-outcome",
    "followup-receipt",
    "followup-decision",
)
PLOTS = {
    "queries-by-agency": "Queries per agency over time",
    "queries-by-purpose": "Queries per purpose over time",
    "denials-by-rule": "Denials by rule",
    "latency-by-node": "Answer latency per node",
}


# -- where the ledgers are -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """The `[console.audit]` table, read."""

    federation: Path | None
    gateway: LedgerFiles | None
    nodes: tuple[LedgerFiles, ...]
    audit_key: Path | None


def _location(r: TableReader, key: str) -> str:
    text = r.text(key)
    # A database URL as it is; a file relative to the console's config.
    return text if "://" in text else str(r.path(key))


def read_settings(table: TableReader) -> AuditSettings:
    table.check_keys({"federation", "audit_key", "gateway_ledger", "gateway_key", "node", "role"})
    t = table.table
    federation = table.path("federation") if "federation" in t else None
    if federation is not None and not (federation / "gateway" / "gateway.toml").is_file():
        raise ConfigError(
            f"{table.where}: `federation` {federation} is not a federation folder (it has no "
            "gateway/gateway.toml); name the folder `liaison init` or `liaison demo --workdir` made"
        )
    gateway = None
    if "gateway_ledger" in t or "gateway_key" in t:
        gateway = LedgerFiles(
            "gateway", _location(table, "gateway_ledger"), table.path("gateway_key")
        )
    nodes = []
    for i, node_table in enumerate(table.tables("node"), 1):
        r = TableReader(node_table, f"{table.where} node #{i}", table.base)
        r.check_keys({"id", "receipts", "key"})
        nodes.append(LedgerFiles(r.text("id"), _location(r, "receipts"), r.path("key")))
    if federation is None and gateway is None:
        raise ConfigError(
            f"{table.where}: name the ledgers to audit: `federation = DIR` (a federation "
            "folder), or `gateway_ledger` and `gateway_key` with [[console.audit.node]] tables"
        )
    return AuditSettings(
        federation=federation,
        gateway=gateway,
        nodes=tuple(nodes),
        audit_key=table.path("audit_key") if "audit_key" in t else None,
    )


@dataclass(slots=True)
class Ledgers:
    """The ledgers the settings name; a federation folder's configs are read once."""

    settings: AuditSettings
    _found: tuple[LedgerFiles, tuple[LedgerFiles, ...]] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Per ledger: the newest live checkpoint seen (size, time_ms, signed note).
    _seen: dict[str, tuple[int, int, str]] = field(default_factory=dict)

    def all(self) -> tuple[LedgerFiles, tuple[LedgerFiles, ...]]:
        with self._lock:
            if self._found is None:
                s = self.settings
                nodes: dict[str, LedgerFiles] = {}
                gateway = s.gateway
                if s.federation is not None:
                    fed_gateway, fed_nodes = federation_ledgers(s.federation)
                    gateway = gateway or fed_gateway
                    nodes = {n.name: n for n in fed_nodes}
                # Explicit tables win over the folder's, node by node.
                nodes.update((n.name, n) for n in s.nodes)
                assert gateway is not None  # read_settings requires one or the other
                self._found = (gateway, tuple(nodes[k] for k in sorted(nodes)))
            return self._found

    def named(self, name: str) -> LedgerFiles:
        gateway, nodes = self.all()
        for ledger in (gateway, *nodes):
            if ledger.name == name:
                return ledger
        raise NotFound(f"no ledger named {name!r} here; choose gateway or a node's id")

    def names(self) -> list[str]:
        gateway, nodes = self.all()
        return [gateway.name, *(n.name for n in nodes)]

    def newest_checkpoint(self, name: str) -> Witness | None:
        """The live ledger's newest checkpoint its key signed, as a witness for a copy of it.

        The newest this console has seen is remembered, so a live ledger
        rolled back since does not lower the bar. None when it has none yet.
        """
        files = self.named(name)
        key = VerifyingKey.from_pem_file(files.key)
        store = LedgerStore(files.location, create=False)
        try:
            origin = store.get_meta("origin") or None
            stored = store.checkpoints()
        finally:
            store.close()
        found = None
        # Newest first; only a signature is checked (the copy's tree is what it is held to).
        for row in reversed(stored):
            try:
                cp = open_checkpoint(row.note, key, origin=origin)
            except CheckpointError:
                continue
            found = (cp.size, cp.time_ms, row.note)
            break
        with self._lock:
            seen = self._seen.get(name)
            if found is not None and (seen is None or found[:2] > seen[:2]):
                self._seen[name] = seen = found
        if seen is None:
            return None
        where = f"the live {name} ledger's newest checkpoint"
        return Witness(f"the live {name} ledger", ((where, seen[2]),), kept=True)


# -- results, as the pages show them -------------------------------------------


@dataclass(frozen=True, slots=True)
class LedgerResult:
    name: str
    entries: int
    receipts: int | None
    checkpoints: int
    newest: str
    ok: bool
    problem: str
    problems: int
    warnings: tuple[str, ...]
    # Entries no verified signature covers (a live ledger's newest, or an allowed tail).
    unsigned: int = 0


@dataclass(frozen=True, slots=True)
class Difference:
    problem: bool
    node: str
    query: str
    message: str


@dataclass(frozen=True, slots=True)
class AuditResult:
    what: str
    checked_at: str
    seconds: float
    ledgers: tuple[LedgerResult, ...]
    # None when there was nothing to reconcile (a single copy).
    reconciled: bool | None = None
    differences: tuple[Difference, ...] = ()
    followups: str = ""
    # Uploads refused before any check (not a ledger, unreadable): name and reason.
    refused: tuple[tuple[str, str], ...] = ()

    @property
    def unsigned(self) -> int:
        """Entries, over every ledger, that no verified signature covers."""
        return sum(r.unsigned for r in self.ledgers)

    @property
    def ok(self) -> bool:
        return (
            not self.refused
            and all(r.ok for r in self.ledgers)
            and self.reconciled is not False
            and bool(self.ledgers)
        )


def ledger_result(name: str, report: VerifyReport, receipts: int | None = None) -> LedgerResult:
    latest = report.latest
    newest = (
        "none yet"
        if latest is None
        else f"{latest.size:,} entries, signed {format_time(latest.time_ms)} "
        f"({describe_age(report.checked_at_ms - latest.time_ms)} ago)"
    )
    first = report.first_problem
    return LedgerResult(
        name=name,
        entries=report.size,
        receipts=receipts,
        checkpoints=report.checkpoints,
        newest=newest,
        ok=report.ok,
        problem=str(first) if first else "",
        problems=len(report.problems),
        warnings=tuple(str(w) for w in report.warnings),
        unsigned=report.size - _covered(report),
    )


def reconcile_result(what: str, report: ReconcileReport, started: float) -> AuditResult:
    ledgers = [ledger_result("gateway", report.gateway)]
    ledgers += [
        ledger_result(node, r, report.receipts.get(node, 0))
        for node, r in sorted(report.nodes.items())
    ]
    ordered = sorted(report.differences, key=lambda d: not d.problem)
    return AuditResult(
        what=what,
        checked_at=format_time(report.gateway.checked_at_ms),
        seconds=time.monotonic() - started,
        ledgers=tuple(ledgers),
        reconciled=report.ok,
        differences=tuple(
            Difference(
                d.problem,
                d.node_id,
                d.query_id[:8],
                f"follow-up {d.followup_id[:8]}: {d.message}" if d.followup_id else d.message,
            )
            for d in ordered
        ),
        followups=describe_followups(report),
    )


def audit_live(ledgers: Ledgers) -> AuditResult:
    """`liaison audit reconcile` on the live ledgers (a live tail is a warning)."""
    started = time.monotonic()
    gateway, nodes = ledgers.all()
    report = reconcile_files(gateway, list(nodes), allow_unsigned_tail=True)
    for verified in (report.gateway, *report.nodes.values()):
        _require_signed(verified, covered=False)
    return reconcile_result("the live ledgers", report, started)


def _require_signed(report: VerifyReport, *, covered: bool) -> None:
    """Fail a ledger whose entries nothing signed vouches for, even with the tail allowed.

    Allowing an unsigned tail is for a live ledger's newest few entries; on a
    ledger with no checkpoint it would let anyone rewrite every entry and its
    leaf hash (no key needed) and still pass. A writer signs a checkpoint when
    it starts, so a live ledger always has one. ``covered`` asks more of a
    copy: some checkpoint (its own, or the live ledger's) must cover an entry.
    """
    if report.size == 0 or any(f.where == "checkpoints" for f in report.problems):
        return
    if report.latest is None:
        why = "it holds no checkpoint that verifies"
    elif covered and _covered(report) == 0:
        why = "no checkpoint that verifies covers any of them"
    else:
        return
    report.problems.append(
        Finding(
            "checkpoints",
            f"{report.size:,} entries but {why}: nothing signed vouches for a single entry, "
            "and anyone can rewrite entries and their hashes without the key (checkpoints "
            "removed, or a forged copy); ask the ledger's operator for a copy with its "
            "checkpoints",
            0,
        )
    )


def _covered(report: VerifyReport) -> int:
    """How many entries a verified signature covers: a checkpoint of its own, or a witness's."""
    sizes = [c.size for c in (report.latest, report.witnessed) if c is not None]
    return min(max(sizes, default=0), report.size)


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
            _require_signed(report, covered=True)
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


# -- entries -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntryQuery:
    ledger: str = "gateway"
    agency: str = ""
    subject: str = ""
    purpose: str = ""
    case_ref: str = ""
    node: str = ""
    kind: str = ""
    outcome: str = ""
    since: str = ""
    until: str = ""

    @classmethod
    def of(cls, get: Callable[[str], str]) -> EntryQuery:
        return cls(**{name: get(name).strip() for name in cls.__dataclass_fields__})

    def filters(self, selector_hash: str = "") -> Filters:
        if self.kind and self.kind not in KINDS:
            raise InvalidQuery(f"no entry kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        return Filters(
            agency=self.agency,
            subject=self.subject,
            purpose=self.purpose,
            case_ref=self.case_ref,
            node=self.node,
            kind=self.kind,
            selector_hash=selector_hash,
            since_ms=parse_time(self.since) if self.since else None,
            until_ms=parse_time(self.until) if self.until else None,
        )


@dataclass(frozen=True, slots=True)
class EntryLine:
    index: int
    time: str
    kind: str
    query: str
    who: str
    purpose: str
    case: str
    asked: str
    nodes: str


def _line(r: Row) -> EntryLine:
    if r.followup_id:
        asked = f"follow-up {r.followup_id[:8]}" + (f": {', '.join(r.fields)}" if r.fields else "")
        asked += f" ({r.detail})" if r.detail else ""
        nodes = f"{','.join(r.nodes)} {r.outcome}".strip()
    else:
        asked = f"{r.dataset} {r.operation}".strip()
        nodes = r.outcome or ",".join(r.nodes)
    return EntryLine(
        index=r.index,
        time=format_time(r.time_ms),
        kind=r.kind,
        query=r.query_id[:8],
        who=f"{r.agency}/{r.subject}" if r.agency else "",
        purpose=r.purpose,
        case=r.case_ref,
        asked=asked,
        nodes=nodes,
    )


@dataclass(frozen=True, slots=True)
class Found:
    total: int
    shown: tuple[EntryLine, ...]
    # Entries below this index are covered by a signed checkpoint, so provable.
    signed: int = 0


def find_entries(files: LedgerFiles, query: EntryQuery, selector_hash: str = "") -> Found:
    filters = query.filters(selector_hash)
    wanted = query.outcome.lower()
    store = LedgerStore(files.location, create=False)
    try:
        found = [
            r
            for r in rows(store)
            if filters.match(r) and (not wanted or wanted in r.outcome.lower())
        ]
        signed = max((c.size for c in store.checkpoints()), default=0)
    finally:
        store.close()
    newest = found[-MAX_ROWS:][::-1]
    return Found(len(found), tuple(_line(r) for r in newest), signed)


def selector_hash(value: str, field_name: str, audit_key: Path) -> str:
    """The keyed hash a ledger holds for ``value``, as `liaison audit hash` computes it."""
    from liaison.ledger.entries import AuditKey
    from liaison.ledger.views import selector_hash as keyed

    return keyed(value, field_name, AuditKey.from_file(audit_key))


def catalog_fields() -> list[str]:
    from liaison.catalog import CATALOG_V1

    return sorted({f for d in CATALOG_V1.datasets for f in d.field_names})


# -- proofs --------------------------------------------------------------------


def _verified(store: LedgerStore, files: LedgerFiles) -> Any:
    report, tree = verify_ledger(
        store, VerifyingKey.from_pem_file(files.key), allow_unsigned_tail=True, processes=1
    )
    if not report.ok:
        raise InvalidQuery(
            f"the {files.name} ledger does not verify ({report.problems[0]}); a proof from it "
            "would prove nothing. Verify the ledgers for details"
        )
    return tree


def make_inclusion(files: LedgerFiles, index: int) -> dict[str, Any]:
    store = LedgerStore(files.location, create=False)
    try:
        tree = _verified(store, files)
        if not 0 <= index < tree.size:
            raise InvalidQuery(
                f"the {files.name} ledger has entries 0..{tree.size - 1}; there is no entry {index}"
            )
        with _asked_wrongly():
            return inclusion_proof(store, tree, index)
    finally:
        store.close()


def make_consistency(files: LedgerFiles, old: int, new: int | None) -> dict[str, Any]:
    """A consistency proof from ``old`` entries to ``new`` (default: the newest checkpoint)."""
    store = LedgerStore(files.location, create=False)
    try:
        tree = _verified(store, files)
        if new is None:
            # A live ledger's tail is not signed yet: prove up to what is.
            new = max((c.size for c in store.checkpoints()), default=0)
        with _asked_wrongly():
            return consistency_proof(store, tree, old, new)
    finally:
        store.close()


@contextmanager
def _asked_wrongly() -> Iterator[None]:
    """A proof the ledger cannot give (no checkpoint of that size) is a question to ask again."""
    try:
        yield
    except (ProofError, CheckpointError):
        raise
    except LedgerError as exc:
        raise InvalidQuery(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class CheckpointLine:
    size: int
    time: str


def checkpoint_lines(files: LedgerFiles) -> list[CheckpointLine]:
    store = LedgerStore(files.location, create=False)
    try:
        found = {c.size: c.time_ms for c in store.checkpoints()}
    finally:
        store.close()
    return [CheckpointLine(size, format_time(t)) for size, t in sorted(found.items())]


def proof_file(document: dict[str, Any], filename: str) -> Response:
    # Byte for byte what `liaison audit prove` writes (liaison.ledger.proofs.write_proof).
    body = json.dumps(document, indent=2, sort_keys=True) + "\n"
    return Response(
        body,
        media_type="application/json",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


def whole_number(text: str, what: str) -> int:
    if not text.strip().isdigit():
        raise InvalidQuery(f"{what} must be a whole number of entries, e.g. 12")
    return int(text)


# -- plots ---------------------------------------------------------------------
