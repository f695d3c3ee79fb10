"""Checking a deployment without serving it: results, and the checks both roles share.

``liaison node check`` and ``liaison gateway check`` run a list of named
checks (see ``node/check.py`` and ``gateway/check.py``); each passes with a
one-line detail of what it found (a "warning" if it passes with something
the operator should fix, such as a key source that failed while another
supplied keys), fails with the one-line reason, or is skipped because one it
depends on failed. Nothing here serves, and nothing
is written except a probe row that a ledger's writability check inserts and
deletes in one transaction, as the ledger's own health probe does.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from sqlalchemy.exc import SQLAlchemyError

from liaison.config import Issuer
from liaison.databases import classify_connection_error, masked
from liaison.errors import ConfigError, LedgerError, LedgerUnavailable, LiaisonError
from liaison.identity.jwks import shown as _shown_url
from liaison.ledger.store import LedgerStore, entries_table, ledger_url
from liaison.tls import CertRole, TlsFiles

T = TypeVar("T")


class Status(StrEnum):
    OK = "ok"
    WARNING = "warning"  # passed: the role would start, but something needs fixing
    FAILED = "FAILED"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Attention:
    """A check's detail when it passed with something the operator should fix."""

    detail: str


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One named check: its status and one line saying what was found, or why it failed."""

    name: str
    status: Status
    detail: str

    @property
    def ok(self) -> bool:
        return self.status in (Status.OK, Status.WARNING)


@dataclass
class Checks:
    """Runs checks in order and keeps their results; a failing check never stops the rest."""

    results: list[CheckResult] = field(default_factory=list)

    def run(self, name: str, check: Callable[[], tuple[T, str | Attention]]) -> T | None:
        """Run ``check`` (returning a value and a detail); None if it failed.

        A detail wrapped in ``Attention`` makes the check a warning.
        """
        try:
            value, detail = check()
        except LiaisonError as exc:
            self.results.append(CheckResult(name, Status.FAILED, _one_line(str(exc))))
            return None
        except Exception as exc:
            # Not ours, so its text is unknown: it could quote a URL with a
            # password. The class is enough to start looking.
            reason = f"unexpected error ({type(exc).__name__}); run the role's serve command"
            self.results.append(CheckResult(name, Status.FAILED, reason))
            return None
        if isinstance(detail, Attention):
            self.results.append(CheckResult(name, Status.WARNING, _one_line(detail.detail)))
        else:
            self.results.append(CheckResult(name, Status.OK, _one_line(detail)))
        return value

    def skip(self, name: str, because: str) -> None:
        self.results.append(CheckResult(name, Status.SKIPPED, because))

    @property
    def passed(self) -> bool:
        return all(r.ok for r in self.results)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def render(results: list[CheckResult]) -> str:
    """A table of checks: name, ok / warning / FAILED / skipped, and the detail or reason."""
    width = max((len(r.name) for r in results), default=0)
    lines = [f"{r.name:<{width}}  {r.status.value:<7}  {r.detail}".rstrip() for r in results]
    failed = sum(1 for r in results if r.status is Status.FAILED)
    skipped = sum(1 for r in results if r.status is Status.SKIPPED)
    warned = sum(1 for r in results if r.status is Status.WARNING)
    warnings = f", {warned} with a warning" if warned else ""
    if failed or skipped:
        lines.append(f"{failed} failed, {skipped} skipped of {len(results)} checks{warnings}")
    else:
        lines.append(f"all {len(results)} checks passed{warnings}")
    return "\n".join(lines)


def as_json(results: list[CheckResult]) -> dict[str, Any]:
    return {
        "ok": all(r.ok for r in results),
        "checks": [{"name": r.name, "status": r.status.value, "detail": r.detail} for r in results],
    }


# --- checks both roles run -----------------------------------------------------------


def _certificates(path: Path, what: str) -> list[x509.Certificate]:
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"TLS {what} file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read TLS {what} file {path} ({exc.strerror})") from None
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ConfigError(f"TLS {what} file {path} holds no PEM certificate") from None
    return certs


def check_tls(files: TlsFiles, role: CertRole) -> str:
    """Certificate, key and CA parse, belong together, are current, and fit ``role``."""
    chain = _certificates(files.certificate, "certificate")
    cert = chain[0]
    try:
        key = serialization.load_pem_private_key(files.private_key.read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigError(f"TLS private key file {files.private_key} does not exist") from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read TLS private key file {files.private_key} ({exc.strerror})"
        ) from None
    except (ValueError, TypeError):
        raise ConfigError(
            f"TLS private key file {files.private_key} is not an unencrypted PEM private key"
        ) from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise ConfigError(
            f"TLS private key {files.private_key} does not belong to the certificate "
            f"{files.certificate}"
        )
    now = dt.datetime.now(dt.UTC)
    if now < cert.not_valid_before_utc:
        raise ConfigError(
            f"TLS certificate {files.certificate} is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    if now > cert.not_valid_after_utc:
        raise ConfigError(
            f"TLS certificate {files.certificate} expired on "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; renew it"
        )
    usage, usage_name = (
        (ExtendedKeyUsageOID.SERVER_AUTH, "serverAuth")
        if role is CertRole.SERVER
        else (ExtendedKeyUsageOID.CLIENT_AUTH, "clientAuth")
    )
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        pass  # no restriction: any usage
    else:
        if usage not in eku:
            raise ConfigError(
                f"TLS certificate {files.certificate} may not be used as a {role.value} "
                f"(its extended key usage lacks {usage_name}); issue one for this role"
            )
    cas = 0
    if files.ca is not None:
        cas = len(_certificates(files.ca, "CA"))
    ca = f", {cas} CA certificate(s)" if files.ca is not None else ""
    return f"{cert.subject.rfc4514_string()}, valid until {cert.not_valid_after_utc:%Y-%m-%d}{ca}"


def check_ledger(location: str) -> str:
    """The ledger at ``location`` can be written now, or created at first start."""
    url = sa.make_url(ledger_url(location))
    shown = masked(url)
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or "")
        if not path.exists():
            folder = path.parent
            while not folder.exists():
                folder = folder.parent
            if not os.access(folder, os.W_OK | os.X_OK):
                raise ConfigError(
                    f"the ledger {path} does not exist and cannot be created: {folder} is not "
                    "writable by this user"
                )
            return f"{path} will be created at first start ({folder} is writable)"
    else:
        _check_server_ledger(url)
    try:
        store = LedgerStore(location, create=False)
    except LedgerUnavailable:
        raise
    except LedgerError:
        # A server database without the ledger's tables: created at first start.
        return f"{shown}: no ledger yet; this account may create it at first start"
    try:
        store.probe()
        size = store.size()
    finally:
        store.close()
    return f"{shown}: writable, {size} entries"


def _check_server_ledger(url: sa.URL) -> None:
    """Connect to a ledger database; name the failure, and refuse an account that cannot write."""
    # A check must finish: a host that drops packets fails after this, not never.
    timeout = {} if "connect_timeout" in url.query else {"connect_timeout": 10}
    # hide_parameters: no statement's values in an error's text, as everywhere else.
    engine = sa.create_engine(url, hide_parameters=True, connect_args=timeout)
    try:
        try:
            conn = engine.connect()
        except SQLAlchemyError as exc:
            failure = classify_connection_error(exc, url, "the ledger database")
            raise LedgerUnavailable(failure.message) from exc
        with conn:
            if engine.dialect.name != "postgresql":
                return
            has_ledger = sa.inspect(conn).has_table(entries_table.name)
            if has_ledger:
                return
            may_create = conn.execute(
                sa.text("SELECT has_schema_privilege(current_schema(), 'CREATE')")
            ).scalar()
            if not may_create:
                raise LedgerUnavailable(
                    f"{masked(url)} holds no ledger yet and this account may not create tables "
                    "in its schema; grant CREATE, or create the ledger as its owner first"
                )
    finally:
        engine.dispose()


def check_issuers(issuers: tuple[Issuer, ...], audience: str) -> str | Attention:
    """Each issuer's usable keys, a failed JWKS fetch and skipped kids, all on the line.

    For a gateway's issuers and a node inbox's alike. An issuer with no usable
    key fails (the verifier refuses to start). One whose URL failed while a
    file or PEM key supplied keys, or with kids skipped, passes with a
    warning: the server starts, but tokens under the missing keys will be
    refused, which the log alone would hide from a check.
    """
    # Whatever the verifier loads at start (key files, JWKS), it loads here.
    verifier = _verifier(issuers, audience)
    parts = []
    attention = False
    for keys in verifier.issuer_keys():
        current = keys.current
        found = [f"{keys.issuer}: {len(current.keys)} usable key(s)"]
        if keys.fetch_error is not None:
            attention = True
            found.append(
                f"jwks_url {_shown_url(keys.jwks_url or '')} failed ({keys.fetch_error}); "
                "only the keys of its other sources are in use"
            )
        for kid, reason in sorted(current.unusable.items()):
            attention = True
            found.append(f"kid {kid!r} skipped: {reason}")
        parts.append("; ".join(found))
    detail = " | ".join(parts)
    return Attention(detail) if attention else detail


def _verifier(issuers: tuple[Issuer, ...], audience: str) -> Any:
    # Deferred: the verifier pulls in JWT and HTTP code that other checks do not need.
    from liaison.identity.verify import TokenVerifier

    return TokenVerifier(issuers, audience)
