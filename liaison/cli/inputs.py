"""Files the user names on the command line, read with one clear error each.

A path that does not exist, is a folder, cannot be read, is empty or holds
binary data is a mistake of the command line, not a crash: each becomes a
ConfigError naming the option and the file, which `liaison` prints as one line.
"""

from __future__ import annotations

import sys
from pathlib import Path

from liaison.errors import ConfigError

STDIN = "-"
MAX_TEXT_BYTES = 64 * 1024 * 1024
"""Larger than any token, CA bundle or list of 100,000 hashes (~6.5 MB) needs."""


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def read_bytes(path: Path, option: str, *, limit: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of the file ``option`` names; ConfigError if it cannot be had or is empty."""
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; name a file")
    try:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise ConfigError(f"{option} {path} does not exist; check the path") from None
    except OSError as exc:
        raise ConfigError(f"{option} {path} cannot be read ({_reason(exc)})") from None
    if len(data) > limit:
        raise ConfigError(f"{option} {path} is larger than {limit:,} bytes; is it the right file?")
    if not data.strip():
        raise ConfigError(f"{option} {path} is empty")
    return data


def decode_text(data: bytes, option: str, source: str) -> str:
    """``data`` as UTF-8 text; ConfigError for binary data (a NUL byte, or not UTF-8)."""
    if b"\x00" in data:
        raise ConfigError(f"{option} {source} holds binary data, not text; is it the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{option} {source} is not UTF-8 text (byte {exc.start + 1}); is it the right file?"
        ) from None


def read_text(path: Path, option: str, *, limit: int = MAX_TEXT_BYTES) -> str:
    """The text of the file ``option`` names (``-``: standard input), with one-line errors."""
    if str(path) == STDIN:
        if sys.stdin.isatty():
            # Not piped: the user may not know the command waits for them.
            print(f"{option} -: reading standard input; end with Ctrl-D", file=sys.stderr)
        data = sys.stdin.buffer.read(limit + 1)
        if len(data) > limit:
            raise ConfigError(f"{option} -: standard input is larger than {limit:,} bytes")
        if not data.strip():
            raise ConfigError(f"{option} -: standard input is empty")
        return decode_text(data, option, "(standard input)")
    return decode_text(read_bytes(path, option, limit=limit), option, str(path))


def read_token(path: Path, option: str = "--token-file") -> str:
    """A bearer token from a file: one line of printable ASCII, as a JWT is."""
    token = read_text(path, option, limit=64 * 1024).strip()
    if "\n" in token or not token.isascii() or not token.isprintable():
        raise ConfigError(
            f"{option} {path} does not hold a token (one line of printable text expected)"
        )
    return token


def check_output_file(path: Path, option: str) -> None:
    """Refuse an output path that cannot be written before any work is done."""
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; name a file to write")
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: folder {parent} does not exist")


def check_folder(path: Path, option: str) -> None:
    """A folder the command reads from must exist and be a folder."""
    if not path.exists():
        raise ConfigError(f"{option} {path} does not exist; check the path")
    if not path.is_dir():
        raise ConfigError(f"{option} {path} is not a folder")
