"""Database URLs as agencies write them, and why a connection to one failed.

Shared by the node (its agency database) and both ledgers. Three jobs:

- spellings: ``postgres://``, ``postgresql://``, ``mysql://`` and ``mariadb://``
  name no driver, or one Liaison does not install; they are rewritten to the
  drivers of Liaison's extras (``[postgresql]``: psycopg 3, ``[mysql]``:
  PyMySQL). A URL naming its driver (``postgresql+psycopg2://``) is kept.
- masking: every URL shown to a person has its password, and any query
  parameter that carries one (``?password=``, ``sslpassword=``, ...), replaced
  by ``***``.
- connection failures: the driver's error is sorted into authentication,
  unknown database, host or port unreachable, and TLS, so the message says
  which, with the fix. Nothing here ever renders a password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote, quote_plus

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from liaison.errors import ConfigError

# What a bare spelling means here: the driver Liaison's extras install.
POSTGRESQL_DRIVER = "postgresql+psycopg"
MYSQL_DRIVER = "mysql+pymysql"
_SPELLINGS = {
    "postgres": POSTGRESQL_DRIVER,
    "postgresql": POSTGRESQL_DRIVER,
    "mysql": MYSQL_DRIVER,
    "mariadb": MYSQL_DRIVER,
}
# Driver module -> how to get it.
_INSTALL = {
    "psycopg": "pip install -e '.[postgresql]' (in the Liaison checkout)",
    "pymysql": "pip install -e '.[mysql]' (in the Liaison checkout)",
}
EXAMPLE_URLS = (
    "sqlite:///agency.sqlite3, postgresql+psycopg://USER@HOST:5432/DB, "
    "mysql+pymysql://USER@HOST:3306/DB"
)


def parse_url(text: str, what: str = "database_url") -> URL:
    """``text`` as a SQLAlchemy URL with a driver Liaison installs; raise ConfigError if not one."""
    try:
        url = make_url(text)
    except ArgumentError as exc:
        # Quote the text only where it cannot hold a password (no user@).
        shown = f"{text!r} " if "@" not in text else ""
        raise ConfigError(
            f"{what} {shown}is not a SQLAlchemy URL ({exc if shown else 'hidden'}); write one "
            f"of {EXAMPLE_URLS}"
        ) from None
    return normalise(url)


def normalise(url: URL) -> URL:
    """Rewrite a bare ``postgres(ql)://``, ``mysql://`` or ``mariadb://`` to Liaison's drivers."""
    rewritten = _SPELLINGS.get(url.drivername)
    return url.set(drivername=rewritten) if rewritten else url


# Query parameters that carry a secret: libpq's ``password`` and ``sslpassword``,
# PyMySQL's ``password``/``passwd``, and whatever else names one.
_SECRET_KEY = re.compile(r"pass(word|wd|phrase)?$|secret|token", re.IGNORECASE)
HIDDEN = "***"


def secret_query_keys(url: URL) -> list[str]:
    """The query parameters of ``url`` whose values are secrets."""
    return [key for key in url.query if _SECRET_KEY.search(key)]


def secrets_of(url: URL) -> set[str]:
    """Every secret ``url`` holds (password, secret query values), as written and URL-quoted."""
    found: set[str] = set()
    values: list[str] = [] if url.password is None else [str(url.password)]
    for key in secret_query_keys(url):
        value = url.query[key]
        values.extend([value] if isinstance(value, str) else value)
    for value in values:
        if value:
            found |= {value, quote(value, safe=""), quote_plus(value)}
    return found


def scrub(text: str, url: URL) -> str:
    """``text`` with every secret of ``url`` replaced by ``***`` (longest first)."""
    for secret in sorted(secrets_of(url), key=len, reverse=True):
        text = text.replace(secret, HIDDEN)
    return text


def masked(url: URL | str) -> str:
    """``url`` for people and logs: its password and secret query values shown as ``***``.

    A secret's value is hidden wherever else in the URL it appears, too.
    """
    if isinstance(url, str):
        try:
            url = make_url(url)
        except ArgumentError:
            return "(not a database URL)"
    keys = secret_query_keys(url)
    shown = url.update_query_dict({key: HIDDEN for key in keys}) if keys else url
    # Rendering quotes the query's "***" as "%2A%2A%2A".
    text = shown.render_as_string(hide_password=True).replace(quote(HIDDEN, safe=""), HIDDEN)
    return scrub(text, url)


def with_password(url: URL, password: str, what: str) -> URL:
    """``url`` with ``password`` set; refuse a URL that has one already, or no user."""
    if url.get_backend_name() == "sqlite":
        raise ConfigError(f"{what}: SQLite has no password; remove the password setting")
    if url.password is not None:
        raise ConfigError(
            f"{what}: the URL has a password inline and one is configured from the "
            "environment or a file; remove it from the URL"
        )
    if not url.username:
        raise ConfigError(
            f"{what}: the URL names no user for the password; write USER@ before the host"
        )
    return url.set(password=password)


def driver_hint(url: URL, exc: BaseException) -> str:
    """One line saying how to get ``url``'s driver working, for a failed create_engine."""
    # Not url.get_driver_name(): it loads the dialect, which is what failed.
    backend, _, driver = url.drivername.partition("+")
    module = str(getattr(exc, "name", "") or "")
    if backend not in ("sqlite", "postgresql", "mysql", "mariadb"):
        return (
            f"{url.drivername!r} in {masked(url)} is not a database Liaison reads (SQLite, "
            f"PostgreSQL, MariaDB/MySQL); write one of {EXAMPLE_URLS}"
        )
    install = _INSTALL.get(module) or _INSTALL.get(driver)
    if install:
        return f"the driver {driver!r} for {masked(url)} is not installed; run {install}"
    preferred = POSTGRESQL_DRIVER if backend == "postgresql" else MYSQL_DRIVER
    return (
        f"the driver {driver!r} for {masked(url)} is not installed; install it, or write "
        f"{preferred}:// to use the driver Liaison installs ({_INSTALL[preferred.split('+')[1]]})"
    )


class Failure(StrEnum):
    """Why a connection to a database failed."""

    AUTHENTICATION = "authentication failed"
    UNKNOWN_DATABASE = "unknown database"
    REFUSED = "connection refused"
    NAME = "host name not resolved"
    TIMEOUT = "timed out"
    UNREACHABLE = "host unreachable"
    TLS = "TLS required or failed"
    OTHER = "connection failed"


# PostgreSQL SQLSTATEs and MySQL/MariaDB error numbers, where the driver gives one.
_CODES: dict[str, Failure] = {
    "28P01": Failure.AUTHENTICATION,  # invalid_password
    "28000": Failure.AUTHENTICATION,  # invalid_authorization_specification
    "3D000": Failure.UNKNOWN_DATABASE,  # invalid_catalog_name
    "1045": Failure.AUTHENTICATION,  # ER_ACCESS_DENIED_ERROR
    "1044": Failure.AUTHENTICATION,  # ER_DBACCESS_DENIED_ERROR (no rights on that database)
    "1698": Failure.AUTHENTICATION,  # ER_ACCESS_DENIED_NO_PASSWORD_ERROR
    "1251": Failure.AUTHENTICATION,  # ER_NOT_SUPPORTED_AUTH_MODE
    "2059": Failure.AUTHENTICATION,  # CR_AUTH_PLUGIN_CANNOT_LOAD
    "1049": Failure.UNKNOWN_DATABASE,  # ER_BAD_DB_ERROR
    "2005": Failure.NAME,  # CR_UNKNOWN_HOST
    "2013": Failure.UNREACHABLE,  # CR_SERVER_LOST (during the handshake)
    "2026": Failure.TLS,  # CR_SSL_CONNECTION_ERROR
    "3159": Failure.TLS,  # ER_SECURE_TRANSPORT_REQUIRED
}
# libpq reports connection failures without a SQLSTATE (the server's FATAL
# line comes as text), and CR_CONN_HOST_ERROR (2003) covers several causes:
# the text tells them apart. Server text is English unless lc_messages says
# otherwise; then the SQLSTATE-less case falls back to OTHER, with the text.
_TEXT: tuple[tuple[re.Pattern[str], Failure], ...] = tuple(
    (re.compile(p, re.IGNORECASE), f)
    for p, f in (
        (
            r"password authentication failed|authentication failed|role \S+ does not exist"
            r"|no pg_hba\.conf entry|not permitted to log in|no password supplied"
            r"|access denied for user",
            Failure.AUTHENTICATION,
        ),
        (r"database \S+ does not exist|unknown database", Failure.UNKNOWN_DATABASE),
        (r"\bssl\b|\btls\b|certificate|secure transport", Failure.TLS),
        (r"connection refused|errno 111\b", Failure.REFUSED),
        (
            r"could not translate host name|failed to resolve host|name or service not known"
            r"|nodename nor servname|temporary failure in name resolution"
            r"|unknown (mysql )?server host"
            r"|errno -[235]\b",
            Failure.NAME,
        ),
        (r"timeout expired|timed out", Failure.TIMEOUT),
        (r"no route to host|network is unreachable|connection reset", Failure.UNREACHABLE),
    )
)

_FIXES = {
    Failure.AUTHENTICATION: (
        "check the user name and password (database_password_env / database_password_file) "
        "and that the account may log in from this host"
    ),
    Failure.UNKNOWN_DATABASE: "check the database name at the end of the URL",
    Failure.REFUSED: "check host and port in the URL and that the server is up and listening",
    Failure.NAME: "check the host name in the URL (DNS)",
    Failure.TIMEOUT: "check host, port and firewalls between this machine and the server",
    Failure.UNREACHABLE: "check host, port and the network path to the server",
    Failure.TLS: (
        "check the TLS options in the URL (sslmode=..., ssl_ca=...) against what the server "
        "offers and requires"
    ),
    Failure.OTHER: "check the URL, that the server is up, and the account's rights",
}


@dataclass(frozen=True, slots=True)
class ConnectionFailure:
    """A classified connection failure and the one line that explains it."""

    failure: Failure
    code: str
    detail: str
    message: str


def driver_code(orig: BaseException | None) -> str:
    """The MySQL error number or the SQLSTATE a driver exception carries, or ``""``.

    The number first: PyMySQL also sets a SQLSTATE, but a coarser one (1045
    and 1698 both read 28000, 1049 reads 42000).
    """
    if orig is None:
        return ""
    args = getattr(orig, "args", ())
    if isinstance(args, tuple) and args and isinstance(args[0], int):
        return str(args[0])
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return "" if code is None else str(code)


def _driver_text(orig: BaseException | None, url: URL) -> str:
    """The driver's message on one line, with any trace of the password removed."""
    if orig is None:
        return ""
    args = getattr(orig, "args", ())
    if isinstance(args, tuple) and len(args) >= 2 and isinstance(args[0], int):
        text = str(args[1])  # PyMySQL: (number, message)
    else:
        text = str(args[0]) if isinstance(args, tuple) and args else ""
    # libpq prefixes "connection failed: connection to server at ..., port N failed:"
    # and may add a hint on a second line ("Is the server running on that host...").
    text = (text.strip().splitlines() or [""])[0].rsplit(" failed: ", 1)[-1]
    text = " ".join(text.replace("FATAL:", "").split())
    return scrub(text, url)[:300]


def classify_connection_error(exc: BaseException, url: URL, what: str) -> ConnectionFailure:
    """Why connecting to ``url`` raised ``exc``; ``what`` names the database for the user."""
    orig = getattr(exc, "orig", None) or exc
    code = driver_code(orig)
    detail = _driver_text(orig, url)
    failure = _CODES.get(code)
    if failure is None:
        failure = next((f for pattern, f in _TEXT if pattern.search(detail)), Failure.OTHER)
    where = masked(url)
    host = url.host or "localhost"
    if failure is Failure.AUTHENTICATION:
        head = f"{what} refused the login of user {url.username or '(none)'!r} at {where}"
    elif failure is Failure.UNKNOWN_DATABASE:
        head = f"{what} {url.database!r} does not exist on the server at {where}"
    elif failure in (Failure.REFUSED, Failure.TIMEOUT, Failure.UNREACHABLE):
        port = f":{url.port}" if url.port else ""
        head = f"cannot reach {what} at {host}{port}: {failure.value} ({where})"
    elif failure is Failure.NAME:
        head = f"cannot reach {what}: host {host!r} not resolved ({where})"
    elif failure is Failure.TLS:
        head = f"cannot open TLS to {what} at {where}"
    else:
        head = f"cannot connect to {what} at {where} ({type(exc).__name__})"
    reason = f"{failure.value}" + (f", code {code}" if code else "")
    if detail:
        reason += f": {detail}"
    message = f"{head} [{reason}]; {_FIXES[failure]}"
    return ConnectionFailure(failure, code, detail, message)
