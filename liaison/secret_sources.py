"""Passwords for database URLs from the environment or a file, never only inline.

A config file is shared, copied into tickets and checked into repositories;
the database password should not travel with it. A config names where the
password is instead: an environment variable (``*_password_env``) or a file
(``*_password_file``) that other users cannot read, as ssh insists for
private keys. The value is inserted into the URL when the config loads and
is never logged or shown (URLs are shown masked).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from liaison.errors import ConfigError

# Group read is allowed: container platforms mount secrets 0440 or 0640 for
# the service's group. World access of any kind, or a group that may write, is not.
_TOO_OPEN = stat.S_IRWXO | stat.S_IWGRP


def read_secret_file(path: Path, what: str) -> str:
    """The one-line secret in ``path``; refuse a file other users may read or change."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{what}: the file {path} does not exist; check the path") from None
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path} ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{what}: {path} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & _TOO_OPEN:
        raise ConfigError(
            f"{what}: permissions {mode:04o} for {path} are too open: other users could read "
            f"or change the password; run `chmod 600 {path}` (0640 with a group is accepted)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: {path} is not UTF-8 text") from None
    # One trailing newline is what editors and `echo` add; it is not part of it.
    secret = text.removesuffix("\n").removesuffix("\r")
    if not secret:
        raise ConfigError(f"{what}: {path} is empty; write the password on its first line")
    if "\n" in secret or "\r" in secret:
        raise ConfigError(f"{what}: {path} holds more than one line; write the password alone")
    return secret


def password_from(
    table: Mapping[str, Any], where: str, base: Path, env_key: str, file_key: str
) -> str | None:
    """The password ``table`` points to by ``env_key`` or ``file_key``, or None if neither."""
    if env_key in table and file_key in table:
        raise ConfigError(f"{where}: give `{env_key}` or `{file_key}`, not both")
    if env_key in table:
        name = table[env_key]
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: `{env_key}` must name an environment variable")
        value = os.environ.get(name)
        if not value:
            raise ConfigError(
                f"{where}: `{env_key}` names the environment variable {name}, which is not "
                "set or empty; set it to the password before starting"
            )
        return value
    if file_key in table:
        raw = table[file_key]
        if not isinstance(raw, str) or not raw:
            raise ConfigError(f"{where}: `{file_key}` must be a path to a file")
        path = Path(raw) if Path(raw).is_absolute() else base / raw
        return read_secret_file(path, f"{where} `{file_key}`")
    return None
