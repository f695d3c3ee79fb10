"""Structured logs: one JSON object per line on stderr.

Fields passed with ``extra=`` become keys, so operators can filter by
query id, agency or status without parsing prose.

gRPC's C core (and anything else below Python) writes its own lines straight
to file descriptor 2, bypassing ``logging``. A serving process therefore
routes fd 2 through a pipe (:func:`capture_native_stderr`): JSON lines pass
through unchanged, any other line becomes a JSON event of its own, and a
refused TLS handshake becomes a "tls handshake refused" event an operator can
alert on. JSON lines pass whole up to MAX_JSON_LINE_BYTES; other lines are
cut at MAX_LINE_BYTES. The exceptions: the command line's "error: ..." line of
a process that could not start; the Python traceback of a fatal signal
(``faulthandler``, written straight to the real stderr); and, if forwarding
ever fails, everything after one "stderr capture failed" event (raw lines,
rather than writers blocked on a full pipe).

Python's own events (:func:`configure`) are JSON already, so they skip the
pipe and go straight to the real stderr: a serving process does not write,
read, parse and write again every line it logs.
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import json
import logging
import os
import re
import sys
import threading
import time
from typing import Any, TextIO

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}
# The last whole second formatted, and its text: a busy process logs many
# events a second, and strftime is most of what a timestamp costs.
_second: tuple[int, str] = (-1, "")


def _seconds_text(second: int) -> str:
    global _second
    cached = _second
    if cached[0] == second:
        return cached[1]
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    _second = (second, text)
    return text


def _timestamp(created: float) -> str:
    return f"{_seconds_text(int(created))}.{int(created * 1000) % 1000:03d}Z"


# json.dumps(..., default=str) builds an encoder per call; one serves every event.
_ENCODER = json.JSONEncoder(default=str)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": f"{_seconds_text(int(record.created))}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(entry)


class JsonLineHandler(logging.StreamHandler[TextIO]):
    """One JSON line per event: on ``stream``, or straight to the real stderr once fd 2 is captured.

    Through the capture pipe, each line would be written, read back, parsed
    and written again by the pump thread: twice the work for every event, in
    the very processes that log the most. The pump stays for what only it
    can turn into JSON: lines written below Python.
    """

    def emit(self, record: logging.LogRecord) -> None:
        captured = _captured
        if captured is None or captured.failed:
            super().emit(record)
            return
        try:
            line = self.format(record).encode("utf-8", "backslashreplace") + b"\n"
            captured.write_line(line)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def configure(level: str = "info") -> None:
    handler = JsonLineHandler(sys.stderr)
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
# A JSON line (a log event with a long field) is passed on whole up to this size.
MAX_JSON_LINE_BYTES = 16 * 1024 * 1024
# At exit, how long the reader may take to forward what is still in the pipe.
RESTORE_TIMEOUT_S = 10
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
    """fd 2 replaced by a pipe whose reader forwards every line, as JSON, to the real stderr.

    Whatever happens to the reader, writers must never block on a full pipe
    (every logging call and gRPC's C core write to fd 2): if forwarding fails,
    the real stderr goes back onto fd 2 and lines are raw from then on.

    Limit: the reader is a daemon thread. A process killed by a fatal signal
    (gRPC core's abort() after its "F..." line, a segfault) can die before the
    reader forwards the last lines in the pipe. ``faulthandler`` writes the
    Python traceback of such a death straight to the real stderr, unwrapped,
    so at least that reaches the operator.
    """

    def __init__(self) -> None:
        self.real = os.dup(2)
        read_end, write_end = os.pipe()
        sys.stderr.flush()
        os.dup2(write_end, 2)
        os.close(write_end)
        self._read_end = read_end
        self.failed = False
        self._in_hand: list[bytes] = []
        # The pump and JsonLineHandler both write to the real stderr: one
        # write at a time, so that no line lands inside another.
        self._write_lock = threading.Lock()
        # The real stderr stays open for the life of the process (self.real).
        faulthandler.enable(file=self.real, all_threads=True)
        self._thread = threading.Thread(target=self._pump, name="stderr-json", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            self._forward()
        except BaseException as exc:  # whatever it was, fd 2 must not stay a dead pipe
            self._fall_back(exc)
        finally:
            with contextlib.suppress(OSError):
                os.close(self._read_end)

    def _forward(self) -> None:
        # The line read so far, without its newline, in pieces: a long line is
        # joined once, not copied again with every chunk.
        parts: list[bytes] = []
        size = 0
        while chunk := self._read():
            # What the fallback passes on raw if routing this chunk fails.
            self._in_hand = [*parts, chunk]
            *complete, rest = chunk.split(b"\n")
            out = []
            if complete:
                out.append(route_line(b"".join([*parts, complete[0]])))
                out.extend(route_line(line) for line in complete[1:])
                parts, size = [], 0
            if rest:
                parts.append(rest)
                size += len(rest)
            # A JSON line is passed on whole up to a far larger bound: cut, it
            # would no longer be the event it was. Anything else (or a JSON line
            # past that bound) is passed on in pieces rather than held.
            bound = MAX_JSON_LINE_BYTES if parts and parts[0][:1] == b"{" else MAX_LINE_BYTES
            if size > bound:
                out.append(route_line(b"".join(parts)))
                parts, size = [], 0
            self._write(b"".join(out))
            self._in_hand = []
        if parts:
            self._write(route_line(b"".join(parts)))

    def _read(self) -> bytes:
        try:
            return os.read(self._read_end, 65536)
        except OSError:
            return b""

    def _fall_back(self, exc: BaseException) -> None:
        """Put the real stderr back on fd 2 and pass what is left in the pipe on raw."""
        self.failed = True
        with contextlib.suppress(OSError):
            os.dup2(self.real, 2)  # the pipe's last write end: the reader will see EOF
        event = native_event(
            f"stderr capture failed ({type(exc).__name__}); stderr lines are raw from now on"
        )
        event.update(level="error", logger="liaison.logs")
        self._write(json.dumps(event).encode() + b"\n" + b"".join(self._in_hand))
        with contextlib.suppress(BaseException):
            while chunk := self._read():
                self._write(chunk)

    def _write(self, data: bytes) -> None:
        # Never through logging: that writes to fd 2, which is this pipe.
        with contextlib.suppress(OSError), self._write_lock:
            while data:
                data = data[os.write(self.real, data) :]

    def write_line(self, line: bytes) -> None:
        """Write a whole JSON line (a Python log event) to the real stderr, past the pipe."""
        with self._write_lock:
            while line:
                line = line[os.write(self.real, line) :]

    def restore(self) -> None:
        """Put the real stderr back and forward what is still in the pipe."""
        with contextlib.suppress(ValueError, OSError):
            sys.stderr.flush()
        os.dup2(self.real, 2)  # closes the pipe's last write end: the reader sees EOF
        self._thread.join(RESTORE_TIMEOUT_S)


_captured: _NativeStderr | None = None


def capture_native_stderr() -> None:
    """Route fd 2 through a JSON-wrapping pipe until the process exits (serving processes)."""
    global _captured
    if _captured is not None:
        return
    _captured = _NativeStderr()
    atexit.register(_captured.restore)
