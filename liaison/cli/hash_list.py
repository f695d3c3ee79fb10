"""`liaison query media --hashes FILE|-`: a device's hashes, asked in batches.

The list is one hash a line (blank lines and ``#`` comments ignored), or the
JSON that `liaison hash --json` prints. Every value is checked here, before
anything is sent: a line that is not a hash of the chosen kind stops the
command with its line number (exit 2). The values then go out as ``--image``
sends its hashes, in chunks (``liaison.cli.batch``), up to 100,000 of them.

Which field a value is asked as: ``--hash-field`` names it; otherwise a line's
length says (64 hex digits: SHA-256, 32: MD5). PDQ hashes are 64 hex digits
too, so they are asked for only with ``--hash-field pdq`` (near-duplicates,
within ``--distance`` bits). From `liaison hash --json` the default is
``sha256``; with ``pdq``, only hashes marked usable are taken.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from liaison.catalog import CATALOG_V1, Field, FieldType
from liaison.cli.batch import MAX_BATCH_VALUES, BatchResult, batch_to_dict
from liaison.cli.exits import ExitCode
from liaison.cli.inputs import read_text
from liaison.errors import CatalogError, UsageError
from liaison.messages import SearchInput
from liaison.query import DEFAULT_NEAR_DISTANCE, Comparator, Operation, Predicate

OPTION = "--hashes"
BY_LENGTH = {64: "sha256", 32: "md5"}
"""Field of a hash by its length in hex digits, when --hash-field does not say."""
JSON_DEFAULT_FIELD = "sha256"


@dataclass(slots=True)
class HashList:
    """Canonical values by field, each with the line (or JSON item) it came from."""

    source: str
    values: dict[str, dict[str, int]] = field(default_factory=dict)
    # JSON input: entries without a usable value for the field (no PDQ, low quality).
    skipped: int = 0

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.values.values())

    def add(self, name: str, value: str, line: int) -> None:
        self.values.setdefault(name, {}).setdefault(value, line)


def hash_field(name: str, dataset: str) -> Field:
    """The hash field ``name`` of ``dataset``; UsageError if it is not one."""
    try:
        found = CATALOG_V1.dataset(dataset).field(name)
    except CatalogError as exc:
        raise UsageError(f"--hash-field: {exc}") from exc
    if found.type not in (FieldType.HEX256, FieldType.HEX128) or found.computed_from:
        raise UsageError(f"--hash-field {name!r} is not a hash field of {dataset}")
    return found


def _where(source: str, line: int, json_input: bool) -> str:
    return f"{OPTION} {source}, {'item' if json_input else 'line'} {line}"


def _canonical(f: Field, text: str, where: str) -> str:
    try:
        return f.canonical(text)
    except CatalogError as exc:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise UsageError(f"{where}: {shown!r} is not a {f.name} hash: {exc}") from exc


def _from_lines(text: str, out: HashList, chosen: Field | None, dataset: str) -> None:
    for number, raw in enumerate(text.splitlines(), start=1):
        value = raw.split("#", 1)[0].strip()
        if not value:
            continue
        where = _where(out.source, number, json_input=False)
        f = chosen
        if f is None:
            name = BY_LENGTH.get(len(value))
            if name is None:
                shown = value if len(value) <= 80 else value[:77] + "..."
                raise UsageError(
                    f"{where}: {shown!r} is not a hash: expected 64 hex digits (SHA-256) or "
                    "32 (MD5); for PDQ hashes add --hash-field pdq"
                )
            f = hash_field(name, dataset)
        out.add(f.name, _canonical(f, value, where), number)
        _check_size(out)


def _from_json(text: str, out: HashList, chosen: Field | None, dataset: str) -> None:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{OPTION} {out.source}, line {exc.lineno}: not valid JSON ({exc.msg}); "
            "give one hash a line, or the output of `liaison hash --json`"
        ) from None
    if not isinstance(document, list):
        raise UsageError(
            f"{OPTION} {out.source}: expected the list `liaison hash --json` prints, "
            f"got a JSON {type(document).__name__}"
        )
    f = chosen or hash_field(JSON_DEFAULT_FIELD, dataset)
    for number, item in enumerate(document, start=1):
        where = _where(out.source, number, json_input=True)
        if not isinstance(item, dict) or not isinstance(item.get("path", ""), str):
            raise UsageError(f"{where}: expected an object of `liaison hash --json`")
        value = item.get(f.name)
        if value is None or (f.near and item.get("usable") is not True):
            out.skipped += 1
            continue
        if not isinstance(value, str):
            raise UsageError(f"{where}: {f.name} is not a string")
        out.add(f.name, _canonical(f, value, where), number)
        _check_size(out)


def _check_size(out: HashList) -> None:
    if out.total > MAX_BATCH_VALUES:
        raise UsageError(
            f"{OPTION} {out.source} holds more than {MAX_BATCH_VALUES:,} distinct hashes; "
            "split the list"
        )


def read_hash_list(path: Path, dataset: str, field_name: str | None) -> HashList:
    """Read and check every hash of ``path`` (``-``: standard input) before anything is sent."""
    chosen = hash_field(field_name, dataset) if field_name else None
    text = read_text(path, OPTION)
    out = HashList("(standard input)" if str(path) == "-" else str(path))
    if text.lstrip().startswith("["):
        _from_json(text, out, chosen, dataset)
    else:
        _from_lines(text, out, chosen, dataset)
    if not out.total:
        raise UsageError(f"{OPTION} {out.source} holds no hash to ask about")
    return out


def batch_predicate(f: Field, values: Sequence[str], distance: int | None) -> Predicate:
    """How a batch of ``f`` values is asked: near-duplicates for PDQ, exact otherwise."""
    if f.near:
        d = DEFAULT_NEAR_DISTANCE if distance is None else distance
        return Predicate(f.name, Comparator.NEAR, tuple(values), d)
    return Predicate(f.name, Comparator.IN, tuple(values))


def with_field(template: SearchInput, name: str) -> SearchInput:
    """Records come back with the hash they matched, so that they name the list's lines."""
    query = template.query
    if query.operation is not Operation.RECORDS or name in query.fields:
        return template
    return replace(template, query=replace(query, fields=(name, *query.fields)))


@dataclass(frozen=True, slots=True)
class HashTriage:
    hashes: HashList
    batches: dict[str, BatchResult]

    def matched(self, node: str) -> list[tuple[str, str, int]]:
        """(field, value, line) of every listed hash ``node`` released a record for."""
        found = []
        for name, result in self.batches.items():
            triage = result.nodes.get(node)
            if triage is None:
                continue
            listed = self.hashes.values[name]
            if result.comparator is Comparator.NEAR:
                # A near record carries the stored hash, not the asked one.
                held = sorted(triage.matched(name))
                found += [(name, v, 0) for v in held]
                continue
            held_exact = triage.matched(name) & listed.keys()
            found += [(name, v, listed[v]) for v in sorted(held_exact, key=listed.__getitem__)]
        return found

    @property
    def nodes(self) -> list[str]:
        return sorted({n for b in self.batches.values() for n in b.nodes})

    def exit_code(self) -> ExitCode:
        from liaison.cli.image_query import exit_code

        return exit_code(*self.batches.values())


def render_hash_triage(triage: HashTriage) -> str:
    from liaison.cli.image_query import chunk_state
    from liaison.cli.render import table

    names = list(triage.batches)
    rows = []
    for node in triage.nodes:
        cells = [chunk_state(triage.batches[n].nodes.get(node)) for n in names]
        reasons = dict.fromkeys(
            r for n in names if (t := triage.batches[n].nodes.get(node)) for r in t.reasons
        )
        rows.append([node, *cells, "; ".join(reasons)])
    h = triage.hashes
    head = f"{h.total:,} hash(es) from {h.source}: " + ", ".join(
        f"{len(v):,} {n}" for n, v in h.values.items()
    )
    if h.skipped:
        head += f" ({h.skipped} entries without a usable value skipped)"
    out = [head, "", table(["agency", *(f"{n} (chunks)" for n in names), "why not"], rows)]
    for node in triage.nodes:
        matched = triage.matched(node)
        if matched:
            out += ["", f"{node} holds:"]
            out += [
                f"  {value}  ({name}{f', line {line}' if line else ', near-duplicate'})"
                for name, value, line in matched
            ]
    return "\n".join(out)


def hash_triage_to_dict(triage: HashTriage) -> dict[str, Any]:
    """`liaison query --hashes --json` (the "hashes" kind of query-output.schema.json)."""
    from liaison.cli.image_query import batch_verification

    h = triage.hashes
    return {
        "kind": "hashes",
        "verification": batch_verification(*triage.batches.values()),
        "source": h.source,
        "values": {name: len(v) for name, v in h.values.items()},
        "skipped": h.skipped,
        "batches": {name: batch_to_dict(b) for name, b in triage.batches.items()},
        "matched": {
            node: [
                {"field": name, "value": value, "line": line or None}
                for name, value, line in triage.matched(node)
            ]
            for node in triage.nodes
        },
    }
