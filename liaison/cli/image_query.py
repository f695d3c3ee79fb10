"""`liaison query media --image FILE|DIR`: hash here, ask everyone, name the files that matched.

Images are hashed on the investigator's machine; only their SHA-256 and
PDQ hashes leave it, in chunks (see ``liaison.cli.batch``). Files that cannot be
read, and PDQ hashes of quality 49 or below (Meta's rule: too little detail
to compare), are reported and not sent.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from liaison.cli.batch import CHUNK, BatchResult, NodeTriage, batch_search
from liaison.errors import InvalidQuery
from liaison.messages import SearchInput
from liaison.query import DEFAULT_NEAR_DISTANCE, Comparator, Operation, Predicate


@dataclass(frozen=True, slots=True)
class ImageTriage:
    files: list[Any]  # liaison.hashing.FileHashes, imported lazily (numpy, Pillow)
    refused: list[tuple[Path, str]]
    exact: BatchResult | None
    near: BatchResult | None
    distance: int


def _with_field(template: SearchInput, name: str) -> SearchInput:
    """Records come back with the hash they matched, so they can be tied to files."""
    query = template.query
    if query.operation is not Operation.RECORDS or name in query.fields:
        return template
    return replace(template, query=replace(query, fields=(name, *query.fields)))


def run_image_query(
    address: str,
    token: str,
    template: SearchInput,
    paths: Sequence[Path],
    *,
    distance: int | None,
    tls_ca: Path | None,
    chunk_size: int = CHUNK,
    progress: TextIO = sys.stderr,
) -> ImageTriage:
    from liaison.hashing.files import PDQ_MIN_QUALITY, hash_paths

    if template.query.dataset != "media":
        raise InvalidQuery("--image asks the media dataset: liaison query media --image ...")
    files = list(hash_paths(list(paths)))
    refused: list[tuple[Path, str]] = []
    exact: list[str] = []
    near: list[str] = []
    for h in files:
        if not h.readable:
            refused.append((h.path, h.error or "unreadable"))
            continue
        exact.append(h.sha256)
        if h.pdq is None:
            refused.append((h.path, f"no PDQ ({h.error or 'not an image'}); asked by SHA-256 only"))
        elif h.quality is None or h.quality < PDQ_MIN_QUALITY:
            refused.append(
                (
                    h.path,
                    f"PDQ quality {h.quality} is below {PDQ_MIN_QUALITY}: too little detail to "
                    "compare, asked by SHA-256 only",
                )
            )
        else:
            near.append(h.pdq)
    print(
        f"hashed {len(files)} file(s) here: {len(exact)} by SHA-256, {len(near)} by PDQ",
        file=progress,
    )

    def reporter(label: str) -> Any:
        def report(done: int, total: int) -> None:
            print(f"  {label}: {done:,}/{total:,} hashes asked", file=progress)

        return report

    exact_result = (
        batch_search(
            address,
            token,
            _with_field(template, "sha256"),
            Predicate("sha256", Comparator.IN, tuple(exact)),
            on_progress=reporter("exact"),
            chunk_size=chunk_size,
            tls_ca=tls_ca,
        )
        if exact
        else None
    )
    t = DEFAULT_NEAR_DISTANCE if distance is None else distance
    near_result = (
        batch_search(
            address,
            token,
            _with_field(template, "pdq"),
            Predicate("pdq", Comparator.NEAR, tuple(near), t),
            on_progress=reporter(f"near-duplicates within {t} bits"),
            chunk_size=chunk_size,
            tls_ca=tls_ca,
        )
        if near
        else None
    )
    return ImageTriage(files, refused, exact_result, near_result, t)


def _matched_files(triage: ImageTriage, node: str) -> list[tuple[Path, str]]:
    """Files a node's released rows tie to, with how they matched."""
    from liaison.hashing.files import pdq_distance

    found: list[tuple[Path, str]] = []
    exact = triage.exact.nodes.get(node) if triage.exact else None
    near = triage.near.nodes.get(node) if triage.near else None
    held_sha = exact.matched("sha256") if exact else set()
    held_pdq = near.matched("pdq") if near else set()
    for h in triage.files:
        if h.readable and h.sha256 in held_sha:
            found.append((h.path, "identical file"))
        elif h.pdq is not None and held_pdq:
            best = min(pdq_distance(h.pdq, other) for other in held_pdq)
            if best <= triage.distance:
                found.append((h.path, f"near-duplicate, {best} bits"))
    return found


def _state(t: NodeTriage | None) -> str:
    if t is None:
        return "-"
    parts = [f"{t.chunks_answered} answered"]
    if t.hits:
        parts.append(f"{t.hits} with a hit")
    if t.chunks_denied:
        parts.append(f"{t.chunks_denied} denied")
    if t.chunks_failed:
        parts.append(f"{t.chunks_failed} failed")
    return ", ".join(parts)


def render_image_triage(triage: ImageTriage) -> str:
    from liaison.cli.render import table

    nodes = sorted(
        set(triage.exact.nodes if triage.exact else {})
        | set(triage.near.nodes if triage.near else {})
    )
    rows = []
    for node in nodes:
        exact = triage.exact.nodes.get(node) if triage.exact else None
        near = triage.near.nodes.get(node) if triage.near else None
        reasons = "; ".join(
            dict.fromkeys([*(exact.reasons if exact else []), *(near.reasons if near else [])])
        )
        rows.append([node, _state(exact), _state(near), reasons])
    out = [
        table(
            ["agency", "exact (chunks)", f"near, {triage.distance} bits (chunks)", "why not"], rows
        )
    ]
    for node in nodes:
        matched = _matched_files(triage, node)
        if matched:
            out += ["", f"{node} holds:"]
            out += [f"  {path}  ({how})" for path, how in matched]
    if triage.refused:
        out += ["", "not asked, or asked by SHA-256 only:"]
        out += [f"  {path}: {why}" for path, why in triage.refused]
    return "\n".join(out)


def image_triage_to_dict(triage: ImageTriage) -> dict[str, Any]:
    def batch(result: BatchResult | None) -> dict[str, Any] | None:
        if result is None:
            return None
        return {
            "selector": result.selector,
            "values": result.values,
            "chunks": result.chunks,
            "query_ids": result.query_ids,
            "nodes": {
                n: {
                    "answered": t.chunks_answered,
                    "denied": t.chunks_denied,
                    "failed": t.chunks_failed,
                    "hits": t.hits,
                    "fields": list(t.fields),
                    "rows": [list(r) for r in t.rows],
                    "reasons": t.reasons,
                }
                for n, t in sorted(result.nodes.items())
            },
        }

    nodes = sorted(
        set(triage.exact.nodes if triage.exact else {})
        | set(triage.near.nodes if triage.near else {})
    )
    return {
        "files": [
            {
                "path": str(h.path),
                "sha256": h.sha256,
                "pdq": h.pdq,
                "quality": h.quality,
                "error": h.error,
            }
            for h in triage.files
        ],
        "refused": [{"path": str(p), "reason": why} for p, why in triage.refused],
        "distance": triage.distance,
        "exact": batch(triage.exact),
        "near": batch(triage.near),
        "matched": {
            node: [{"path": str(p), "how": how} for p, how in _matched_files(triage, node)]
            for node in nodes
        },
    }
