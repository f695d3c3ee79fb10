"""The auditors' ledgers: which ledgers, verifying and reconciling them (live or uploaded
copies), finding entries, and making proofs, for the pages in :mod:`liaison.console.auditor`.

Everything here calls the same library functions as `liaison audit`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.responses import Response

from liaison.config import TableReader
from liaison.errors import (
    CheckpointError,
    ConfigError,
    InvalidQuery,
    LedgerError,
    NotFound,
    ProofError,
)
from liaison.keys import VerifyingKey
from liaison.ledger.checkpoint import Checkpoint, open_checkpoint, parse_unverified
from liaison.ledger.entries import EntryKind
from liaison.ledger.proofs import consistency_proof, inclusion_proof
from liaison.ledger.reconcile import (
    LedgerFiles,
    ReconcileReport,
    describe_followups,
    federation_ledgers,
    reconcile_files,
)
from liaison.ledger.store import LedgerStore
from liaison.ledger.verify import Finding, VerifyReport, Witness, describe_age, verify_ledger
from liaison.ledger.views import Filters, Row, format_time, parse_time, rows

# The entries page shows at most this many (the newest), to stay quick.
MAX_ROWS = 200
SQLITE_MAGIC = b"SQLite format 3\x00"
KINDS = tuple(kind.value for kind in EntryKind)
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

    def _newest_signed(
        self, name: str, wanted: tuple[int, int] | None = None
    ) -> tuple[int, int, str] | None:
        """The live ledger's newest checkpoint its key signed (or the one of ``wanted``
        size and time): (size, time_ms, note). Newest first, and only the one
        returned has its signature checked: a ledger holds a checkpoint per interval.
        """
        files = self.named(name)
        key = VerifyingKey.from_pem_file(files.key)
        store = LedgerStore(files.location, create=False)
        try:
            origin = store.get_meta("origin") or None
            stored = store.checkpoints()
        finally:
            store.close()
        for row in reversed(stored):
            try:
                if wanted is not None:
                    claimed = parse_unverified(row.note)
                    if (claimed.size, claimed.time_ms) != wanted:
                        continue
                cp = open_checkpoint(row.note, key, origin=origin)
            except CheckpointError:
                continue
            return cp.size, cp.time_ms, row.note
        return None

    def newest_checkpoint(self, name: str) -> Witness | None:
        """A witness for a *copy* of ``name``: the newer of the live ledger's newest signed
        checkpoint and the newest this console has verified the live ledger at.

        Reading it changes nothing remembered: only a live check that passes does.
        """
        live = self._newest_signed(name)
        with self._lock:
            seen = self._seen.get(name)
        notes = [n for n in (live, seen) if n is not None]
        if not notes:
            return None
        where = f"the live {name} ledger's newest checkpoint"
        return Witness(f"the live {name} ledger", tuple((where, n[2]) for n in notes), kept=True)

    def seen_checkpoint(self, name: str) -> Witness | None:
        """The newest checkpoint this console verified the live ledger ``name`` at, if any."""
        with self._lock:
            seen = self._seen.get(name)
        if seen is None:
            return None
        where = f"the {name} ledger's checkpoint this console verified before"
        return Witness(f"the live {name} ledger, as seen before", ((where, seen[2]),), kept=True)

    def remember(self, name: str, latest: Checkpoint | None) -> None:
        """After a live check of ``name`` passed: hold the ledger to ``latest`` from now on.

        Never lowered: a later check that fails (a rollback, a fork) leaves the
        bar where it was, so the failure stays until the ledger is put right.
        """
        if latest is None:
            return
        found = self._newest_signed(name, (latest.size, latest.time_ms))
        if found is None:
            return
        with self._lock:
            seen = self._seen.get(name)
            if seen is None or found[:2] > seen[:2]:
                self._seen[name] = found


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
        unsigned=report.size - covered_entries(report),
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
    # Each ledger is held to the newest checkpoint this console verified it at
    # before: one rolled back or rewritten since then fails, and keeps failing.
    seen = {}
    for files in (gateway, *nodes):
        witness = ledgers.seen_checkpoint(files.name)
        if witness is not None:
            seen[files.name] = [witness]
    report = reconcile_files(gateway, list(nodes), allow_unsigned_tail=True, witnesses=seen)
    checked = {gateway.name: report.gateway, **report.nodes}
    for name, ledger in checked.items():
        require_signed(ledger, covered=False)
        if ledger.ok:
            ledgers.remember(name, ledger.latest)
    return reconcile_result("the live ledgers", report, started)


def require_signed(report: VerifyReport, *, covered: bool) -> None:
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
    elif covered and covered_entries(report) == 0:
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


def covered_entries(report: VerifyReport) -> int:
    """How many entries a verified signature covers: a checkpoint of its own, or a witness's."""
    sizes = [c.size for c in (report.latest, report.witnessed) if c is not None]
    return min(max(sizes, default=0), report.size)


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
