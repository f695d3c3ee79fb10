"""`liaison query media --image FILE|DIR`: hash here, ask everyone, name the files that matched.

Images are hashed on the investigator's machine; only their SHA-256 and
PDQ hashes leave it, in chunks (see ``liaison.cli.batch``). Files that cannot be
read, and PDQ hashes of quality 49 or below (Meta's rule: too little detail
to compare), are reported and not sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from liaison.answer_check import NodeCheck, Verdict
from liaison.cli.batch import CHUNK, BatchResult, NodeTriage, batch_search, batch_to_dict
from liaison.cli.exits import ExitCode, outcome
from liaison.cli.progress import Progress
from liaison.cli.render import NOT_VERIFIED, UNVERIFIED
from liaison.cli.verify_answers import Verification, overall, report, verification_to_dict
from liaison.cli.verify_answers import exit_code as verified_exit_code
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
    show_progress: bool = False,
    verification: Verification | None = None,
) -> ImageTriage:
    """Hash ``paths`` here, then ask for their hashes in batches.

    With ``show_progress``, hashing and each batch report progress (done/total,
    rate, time left) on standard error.
    """
    from liaison.hashing.files import PDQ_MIN_QUALITY, hash_paths

    if template.query.dataset != "media":
        raise InvalidQuery("--image asks the media dataset: liaison query media --image ...")
    hashing = Progress("hashing", "files", enabled=show_progress)
    try:
        files = list(hash_paths(list(paths), on_progress=lambda d, t, _p: hashing.update(d, t)))
    finally:
        hashing.close()
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
    hashing.note(f"hashed {len(files)} file(s) here: {len(exact)} by SHA-256, {len(near)} by PDQ")
    t = DEFAULT_NEAR_DISTANCE if distance is None else distance
    exact_result = (
        ask_batch(
            address,
            token,
            _with_field(template, "sha256"),
            Predicate("sha256", Comparator.IN, tuple(exact)),
            label="asking (exact)",
            chunk_size=chunk_size,
            tls_ca=tls_ca,
            show_progress=show_progress,
            verification=verification,
        )
        if exact
        else None
    )
    near_result = (
        ask_batch(
            address,
            token,
            _with_field(template, "pdq"),
            Predicate("pdq", Comparator.NEAR, tuple(near), t),
            label=f"asking (near, {t} bits)",
            chunk_size=chunk_size,
            tls_ca=tls_ca,
            show_progress=show_progress,
            verification=verification,
        )
        if near
        else None
    )
    return ImageTriage(files, refused, exact_result, near_result, t)


def ask_batch(
    address: str,
    token: str,
    template: SearchInput,
    predicate: Predicate,
    *,
    label: str,
    chunk_size: int,
    tls_ca: Path | None,
    show_progress: bool,
    verification: Verification | None = None,
) -> BatchResult:
    """``batch_search`` with a progress line (hashes asked so far) when wanted."""
    progress = Progress(label, "hashes", enabled=show_progress)
    try:
        return batch_search(
            address,
            token,
            template,
            predicate,
            on_progress=progress.update,
            chunk_size=chunk_size,
            tls_ca=tls_ca,
            verification=verification,
        )
    finally:
        progress.close()


def exit_code(*batches: BatchResult | None) -> ExitCode:
    """0 when every agency answered every chunk of every batch; see liaison.cli.exits.

    5 (NOT_VERIFIED) when some chunk's answer is not what its agency signed.
    """
    code = outcome(s for b in batches if b is not None for s in b.statuses())
    return verified_exit_code(code, any(b.failed for b in batches if b is not None))


def verify_report(*batches: BatchResult | None) -> None:
    """The ``verify:`` lines of a batched run: one per agency, over every chunk of every batch."""
    checks: dict[str, list[NodeCheck]] = {}
    for b in batches:
        for node_id, t in (b.nodes if b is not None else {}).items():
            checks.setdefault(node_id, []).extend(t.checks)
    report(overall(n, c) for n, c in sorted(checks.items()) if c)


def batch_verification(*batches: BatchResult | None) -> dict[str, Any]:
    """The top-level ``verification`` of a batched run (--image, --hashes)."""
    present = [b for b in batches if b is not None]
    checks = [c for b in present for t in b.nodes.values() for c in t.checks]
    if not checks:
        reason = next((b.not_checked for b in present if b.not_checked), "nothing was asked")
        return verification_to_dict(None, reason)
    failed = sorted({c.node_id for c in checks if c.verdict is Verdict.FAILED})
    if failed:
        return {
            "verdict": Verdict.FAILED.value,
            "reason": f"not what the agency signed, in some requests: {', '.join(failed)}",
        }
    return verification_to_dict(overall("", checks), "")


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


def chunk_state(t: NodeTriage | None) -> str:
    """What one agency did with a batch's chunks, e.g. "2 answered, 1 with a hit, 1 denied"."""
    if t is None:
        return "-"
    if t.chunks_not_asked and not (
        t.chunks_answered or t.chunks_denied or t.chunks_failed or t.chunks_not_verified
    ):
        return "not asked (does not offer the dataset)"
    parts = [f"{t.chunks_answered} answered"]
    if t.hits:
        parts.append(f"{t.hits} with a hit")
    if t.chunks_unverified:
        parts.append(f"{t.chunks_unverified} {UNVERIFIED}")
    if t.chunks_not_verified:
        parts.append(f"{t.chunks_not_verified} {NOT_VERIFIED}")
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
        rows.append([node, chunk_state(exact), chunk_state(near), reasons])
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
    """`liaison query --image --json` (the "images" kind of query-output.schema.json)."""
    nodes = sorted(
        set(triage.exact.nodes if triage.exact else {})
        | set(triage.near.nodes if triage.near else {})
    )
    return {
        "kind": "images",
        "verification": batch_verification(triage.exact, triage.near),
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
        "exact": batch_to_dict(triage.exact),
        "near": batch_to_dict(triage.near),
        "matched": {
            node: [{"path": str(p), "how": how} for p, how in _matched_files(triage, node)]
            for node in nodes
        },
    }
