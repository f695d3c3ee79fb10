"""Structured logs: one JSON object per line on stderr.

Fields passed with ``extra=`` become keys, so operators can filter by
query id, agency or status without parsing prose.

gRPC's C core (and anything else below Python) writes its own lines straight
to file descriptor 2, bypassing ``logging``. A serving process therefore
routes fd 2 through a pipe (:func:`capture_native_stderr`): JSON lines pass
through unchanged, any other line becomes a JSON event of its own, and a
refused TLS handshake becomes a "tls handshake refused" event an operator can
alert on. The one exception is the command line's "error: ..." line of a
process that could not start.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import sys
import threading
import time
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _timestamp(created: float) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        + f".{int(created * 1000) % 1000:03d}Z"
    )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("liaison")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


# --- lines written below Python ------------------------------------------------------

# gRPC core's (absl) log prefix: "E1207 02:01:45.674901   11314 file.cc:2563] text".
_NATIVE = re.compile(
    r"^(?P<sev>[IWEF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ (?P<source>[^\s\]]+:\d+)\] (?P<text>.*)$"
)
# A longer line from below Python is cut into events of this size.
MAX_LINE_BYTES = 64 * 1024
# How liaison.cli.main prints a user error.
CLI_ERROR_PREFIX = "error: "
_LEVELS = {"I": "info", "W": "warning", "E": "error", "F": "critical"}
_HANDSHAKE = re.compile(r"Handshake failed with (?:fatal )?error (?P<error>SSL_ERROR_\w+)")
_PEER = re.compile(r"\b(?P<peer>ipv4:[0-9.]+:\d+|ipv6:\[[0-9a-fA-F:.%\w]+\]:\d+)")
# OpenSSL reasons of a refused handshake, in words an operator acts on.
_TLS_REASONS = {
    "WRONG_VERSION_NUMBER": "the client did not speak TLS (plaintext, or another protocol)",
    "HTTP_REQUEST": "the client spoke plain HTTP",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client sent no certificate",
    "CERTIFICATE_VERIFY_FAILED": "the client's certificate is not from the trusted CA",
    # A CA of the same name as the trusted one, but another key.
    "BAD_SIGNATURE": "the client's certificate is not signed by the trusted CA",
    "CERTIFICATE_EXPIRED": "the client's certificate has expired",
    "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust this server's CA",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the client refused this server's certificate",
    "TLSV1_ALERT_DECRYPT_ERROR": "the client's certificate does not match its key",
    "NO_SHARED_CIPHER": "no TLS version or cipher in common",
    "UNSUPPORTED_PROTOCOL": "no TLS version in common",
}


def native_event(line: str, created: float | None = None) -> dict[str, Any]:
    """A line written below Python (gRPC core, the interpreter) as a JSON log event."""
    entry: dict[str, Any] = {
        "ts": _timestamp(time.time() if created is None else created),
        "level": "warning",
        "logger": "stderr",
        "msg": line,
    }
    native = _NATIVE.match(line)
    if native is None:
        return entry
    text = native["text"]
    entry.update(level=_LEVELS[native["sev"]], logger="grpc", msg=text, source=native["source"])
    handshake = _HANDSHAKE.search(text)
    if handshake is not None:
        codes = re.findall(r"OPENSSL_internal:([A-Z0-9_]+)", text)
        code = codes[0] if codes else handshake["error"]
        entry.update(
            level="warning",
            msg="tls handshake refused",
            reason=_TLS_REASONS.get(code, "TLS handshake failed"),
            tls_error=code,
            detail=text,
        )
    peer = _PEER.search(text)
    if peer is not None:
        entry["peer"] = peer["peer"]
    return entry


def route_line(raw: bytes) -> bytes:
    """One line as it should reach the real stderr: JSON as is, anything else wrapped.

    The command line's own refusal to start ("error: ...", one line, then exit)
    also stays as it is: it is what the user of ``liaison node serve`` reads.
    """
    text = raw.decode("utf-8", errors="replace").rstrip("\r")
    if text.startswith(CLI_ERROR_PREFIX):
        return raw + b"\n"
    if text.startswith("{"):
        try:
            if isinstance(json.loads(text), dict):
                return raw + b"\n"
        except ValueError:
            pass
    if not text.strip():
        return b""
    return json.dumps(native_event(text)).encode() + b"\n"


class _NativeStderr:
    """fd 2 replaced by a pipe whose reader forwards every line, as JSON, to the real stderr."""

    def __init__(self) -> None:
        self.real = os.dup(2)
        read_end, write_end = os.pipe()
        sys.stderr.flush()
        os.dup2(write_end, 2)
        os.close(write_end)
        self._read_end = read_end
        self._thread = threading.Thread(target=self._pump, name="stderr-json", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self._read_end, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if len(pending) > MAX_LINE_BYTES:
                # No newline in sight: pass it on in pieces rather than hold it all.
                lines.append(pending)
                pending = b""
            self._write(b"".join(route_line(line) for line in lines))
        if pending:
            self._write(route_line(pending))
        os.close(self._read_end)

    def _write(self, data: bytes) -> None:
        # Never through logging: that writes to fd 2, which is this pipe.
        with contextlib.suppress(OSError):
            while data:
                data = data[os.write(self.real, data) :]

    def restore(self) -> None:
        """Put the real stderr back and forward what is still in the pipe."""
        with contextlib.suppress(ValueError, OSError):
            sys.stderr.flush()
        os.dup2(self.real, 2)  # closes the pipe's last write end: the reader sees EOF
        self._thread.join(5)


_captured: _NativeStderr | None = None


def capture_native_stderr() -> None:
    """Route fd 2 through a JSON-wrapping pipe until the process exits (serving processes)."""
    global _captured
    if _captured is not None:
        return
    _captured = _NativeStderr()
    atexit.register(_captured.restore)
