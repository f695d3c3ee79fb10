"""`liaison hash`: hash image files locally for exact and near-duplicate search.

Only hashes leave this command: no image bytes are printed, stored or sent.
Exit status: 0 when every file was hashed (a low-quality PDQ hash is a note,
not a failure); 1 when some file could not be read or decoded (the others are
still printed); 2 for usage errors.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from liaison.errors import LiaisonError
from liaison.query import MIN_PDQ_QUALITY

if TYPE_CHECKING:
    from liaison.hashing.files import FileHashes, ProgressCallback

# liaison.hashing.files (numpy, Pillow, pdqhash) is imported only when `hash` runs, so
# that building the parser does not slow down every other `liaison` command.

EXIT_OK = 0
EXIT_FAILED = 1
PDQ_MIN_QUALITY = MIN_PDQ_QUALITY


PROGRESS_EVERY_S = 0.1
"""On a terminal, redraw the progress line at most this often."""
PROGRESS_EVERY_FILES = 1000
"""Elsewhere (a log file), one progress line per this many files."""


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


def _progress() -> tuple[ProgressCallback, Callable[[], None]]:
    """A progress callback for stderr, and a function that ends its line."""
    tty = sys.stderr.isatty()
    shown = {"at": 0.0, "drawn": False}

    def show(done: int, total: int, _path: Path) -> None:
        if tty:
            now = time.monotonic()
            if done == total or now - shown["at"] >= PROGRESS_EVERY_S:
                shown["at"], shown["drawn"] = now, True
                print(f"\rhashing: {done:,}/{total:,} files", end="", file=sys.stderr, flush=True)
        elif done % PROGRESS_EVERY_FILES == 0:
            print(f"hashing: {done:,}/{total:,} files", file=sys.stderr, flush=True)

    def finish() -> None:
        if shown["drawn"]:
            print(file=sys.stderr, flush=True)

    return show, finish


def cmd_hash(args: argparse.Namespace) -> int:
    from liaison.cli.render import table, to_json
    from liaison.hashing.files import hash_paths

    min_quality: int = args.min_quality
    walking = any(p.is_dir() for p in args.paths)
    show, finish = _progress()
    try:
        results = list(
            hash_paths(
                args.paths, on_progress=show if walking else None, include_hidden=args.hidden
            )
        )
    finally:
        finish()
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
