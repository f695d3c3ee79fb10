"""`liaison hash`: hash image files locally for exact and near-duplicate search.

Only hashes leave this command: no image bytes are printed, stored or sent.
Exit status: 0 when every file was hashed (a low-quality PDQ hash is a note,
not a failure); 1 when some file could not be read or decoded (the others are
still printed); 2 for usage errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from liaison.cli.progress import Progress, wanted
from liaison.errors import LiaisonError
from liaison.query import MIN_PDQ_QUALITY

if TYPE_CHECKING:
    from liaison.hashing.files import FileHashes

# liaison.hashing.files (numpy, Pillow, pdqhash) is imported only when `hash` runs, so
# that building the parser does not slow down every other `liaison` command.

EXIT_OK = 0
EXIT_FAILED = 1
PDQ_MIN_QUALITY = MIN_PDQ_QUALITY


def _quality_floor(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from exc
    if not PDQ_MIN_QUALITY <= value <= 100:
        raise argparse.ArgumentTypeError(
            f"{value} is not in {PDQ_MIN_QUALITY}..100 (PDQ hashes below quality "
            f"{PDQ_MIN_QUALITY} are never used)"
        )
    return value


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "paths", nargs="+", type=Path, metavar="FILE|DIR", help="files, or folders to walk"
    )
    p.add_argument("--json", action="store_true", help="print JSON (full hash values)")
    p.add_argument(
        "--min-quality",
        type=_quality_floor,
        default=PDQ_MIN_QUALITY,
        metavar="Q",
        help=f"PDQ quality a hash needs to be usable ({PDQ_MIN_QUALITY}..100; "
        f"default {PDQ_MIN_QUALITY})",
    )
    p.add_argument(
        "--progress",
        action="store_true",
        help="report progress (files done/total, rate, time left) on standard error even "
        "when it is not a terminal; shown on a terminal anyway",
    )
    p.add_argument(
        "--hidden",
        action="store_true",
        help="also hash hidden files and folders (names starting with '.') inside folders",
    )


_DESCRIPTION = (
    "Compute SHA-256 and MD5 (exact copies) and PDQ (re-encoded or resized copies) of "
    "files, locally. Only hashes are printed; no image data leaves the machine. "
    "Exit status: 0 when every file was hashed, 1 when some file could not be read or "
    "decoded (the others are still printed), 2 for usage errors."
)


def add_hash(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "hash",
        help="hash image files locally (SHA-256, MD5, PDQ) for a search",
        description=_DESCRIPTION,
    )
    _configure(p)


def _usable(h: FileHashes, min_quality: int) -> bool:
    from liaison.hashing.files import usable

    return usable(h, min_quality)


def _note(h: FileHashes, min_quality: int) -> str:
    if h.error:
        return h.error
    if not _usable(h, min_quality):
        return f"low quality (q={h.quality}), not usable for near-duplicate search"
    return ""


def _short(value: str | None, keep: int) -> str:
    if not value:
        return ""
    return value if len(value) <= keep else value[:keep] + "…"


def _row(h: FileHashes, min_quality: int) -> list[str]:
    return [
        str(h.path),
        "" if h.size is None else f"{h.size:,}",
        _short(h.sha256, 12),
        _short(h.md5, 8),
        _short(h.pdq, 16),
        "" if h.quality is None else str(h.quality),
        _note(h, min_quality),
    ]


def _as_json(h: FileHashes, min_quality: int) -> dict[str, Any]:
    return {
        "path": str(h.path),
        "size": h.size,
        "sha256": h.sha256 or None,
        "md5": h.md5 or None,
        "pdq": h.pdq,
        "quality": h.quality,
        "usable": _usable(h, min_quality),
        "error": h.error or None,
    }


def _summary(results: Sequence[FileHashes], min_quality: int) -> str:
    files = len(results)
    if not files:
        return "no files found"
    good = sum(1 for h in results if _usable(h, min_quality))
    low = sum(1 for h in results if h.complete and not _usable(h, min_quality))
    exact_only = sum(1 for h in results if h.readable and not h.complete)
    failed = sum(1 for h in results if not h.readable)
    parts = [f"{good} usable for near-duplicate search"]
    if low:
        parts.append(f"{low} of low PDQ quality")
    if exact_only:
        parts.append(f"{exact_only} exact hashes only (not a decodable image)")
    if failed:
        parts.append(f"{failed} could not be read")
    return f"{files} file{'' if files == 1 else 's'}: " + ", ".join(parts)


def cmd_hash(args: argparse.Namespace) -> int:
    from liaison.cli.render import table, to_json
    from liaison.hashing.files import hash_paths

    min_quality: int = args.min_quality
    progress = Progress("hashing", "files", enabled=wanted(args.progress))
    try:
        results = list(
            hash_paths(
                args.paths,
                on_progress=lambda done, total, _path: progress.update(done, total),
                include_hidden=args.hidden,
            )
        )
    finally:
        progress.close()
    if args.json:
        print(to_json([_as_json(h, min_quality) for h in results]))
    else:
        headers = ["path", "size", "sha256", "md5", "pdq", "quality", "note"]
        print(table(headers, [_row(h, min_quality) for h in results]))
        print(_summary(results, min_quality))
    return EXIT_OK if all(h.complete for h in results) else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Run `hash` on its own (``liaison hash`` does the same through liaison.cli)."""
    parser = argparse.ArgumentParser(prog="liaison hash", description=_DESCRIPTION)
    _configure(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_hash(args)
    except LiaisonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
