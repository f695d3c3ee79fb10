"""No image byte leaves the investigator's machine: not in a request, a ledger entry or a log.

`liaison query media --image DIR` runs as a real subprocess against the demo
federation running as real processes (three nodes and a gateway). Every hop
is tapped: the command talks to the gateway, and the gateway to each node,
through a recording gRPC proxy on loopback that forwards the raw bytes both
ways, so the federation answers as usual while every request and answer is
kept as it went over the wire.

Then thousands of 16-byte windows of every file asked about (raw, in hex, and
in base64 at all three alignments) are looked for in those wire bytes, in the
gateway's ledger, in every node's receipts and replay, rate and aggregate
state, in every log, and in what the command printed. Positive controls show
the scan looks at the right bytes: each file's SHA-256 is in the command's
requests, each query id is in the ledgers, and the scan does find a window
hidden in hex or base64.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
import sqlalchemy as sa

from liaison.demo.data import INVESTIGATOR_AGENCY, demo_agencies, flip_bits
from liaison.demo.federation import write_gateway_config
from liaison.demo.processes import Service, start_service, stop_service
from liaison.demo.run import investigator_token
from liaison.hashing.files import hash_file
from liaison.ledger.entries import AuditKey
from liaison.patterns import pattern, write_series
from liaison.serving import CHANNEL_OPTIONS

COMMAND_TIMEOUT_S = 60
WINDOW = 16  # bytes of an image looked for
STRIDE = 8  # one window every STRIDE bytes: any run of 24 image bytes holds one
NODES = ("freedonia", "ruritania", "sylvania")


# --- looking for an image's bytes ----------------------------------------------------


def encodings(window: bytes, following: bytes) -> list[bytes]:
    """``window`` as it could appear: raw, hex (either case), base64 at each alignment.

    Base64 turns each 3 bytes into 4 characters, so what a window looks like
    depends on where the encoding started: for each of the 3 starting points
    the 15 bytes from there encode to 20 characters without padding, which
    appear verbatim in any base64 (or URL-safe base64) text of the file.
    """
    out = [window, window.hex().encode(), window.hex().upper().encode()]
    for shift in range(3):
        chunk = (window + following)[shift : shift + 15]
        out += [base64.b64encode(chunk), base64.urlsafe_b64encode(chunk)]
    return out


@dataclass
class Needles:
    """Windows of the files asked about, by length, each naming its file."""

    by_length: dict[int, dict[bytes, str]] = field(default_factory=dict)
    windows: dict[str, int] = field(default_factory=dict)

    def add_file(self, path: Path) -> None:
        data = path.read_bytes()
        count = 0
        # The first bytes are a format's fixed header (PNG, JPEG): not this image.
        for offset in range(64, len(data) - WINDOW - 15, STRIDE):
            window = data[offset : offset + WINDOW]
            if len(set(window)) < 10:  # runs of one byte turn up anywhere
                continue
            for needle in encodings(window, data[offset + WINDOW : offset + WINDOW + 15]):
                self.by_length.setdefault(len(needle), {})[needle] = path.name
            count += 1
        self.windows[path.name] = count

    def found_in(self, haystack: bytes) -> set[str]:
        """Names of the files with a window somewhere in ``haystack``."""
        found = set()
        for length, needles in self.by_length.items():
            for i in range(len(haystack) - length + 1):
                name = needles.get(haystack[i : i + length])
                if name is not None:
                    found.add(name)
        return found


# --- a recording proxy on loopback ---------------------------------------------------


if TYPE_CHECKING:
    RawHandler = grpc.GenericRpcHandler[bytes, bytes]
else:  # generic only in the type stubs
    RawHandler = grpc.GenericRpcHandler


@dataclass(frozen=True, slots=True)
class Exchange:
    method: str
    request: bytes
    response: bytes
    metadata: tuple[tuple[str, str], ...]


class Tap(RawHandler):
    """Forward every call, byte for byte, to ``upstream``; keep what went by.

    Unary calls as they are; a streaming call (a batch goes to the gateway as
    one stream of values) message by message, each direction recorded whole.
    """

    STREAMING = ("/SearchBatch", "/SearchStream")

    def __init__(self, upstream: str) -> None:
        self.channel = grpc.insecure_channel(upstream, options=CHANNEL_OPTIONS)
        self.exchanges: list[Exchange] = []
        self.lock = threading.Lock()

    def _keep(self, method: str, request: bytes, response: bytes, metadata: Metadata) -> None:
        with self.lock:
            self.exchanges.append(Exchange(method, request, response, metadata))

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes]:
        method: str = details.method
        if method.endswith("/SearchBatch"):
            return grpc.stream_stream_rpc_method_handler(self._stream_stream(method))
        if method.endswith("/SearchStream"):
            return grpc.unary_stream_rpc_method_handler(self._unary_stream(method))
        forward = self.channel.unary_unary(method, None, None)  # raw bytes both ways

        def relay(request: bytes, context: grpc.ServicerContext) -> bytes:
            metadata = _forwarded(context)
            try:
                response: bytes = forward(
                    request, metadata=metadata, timeout=context.time_remaining()
                )
            except grpc.RpcError as exc:
                self._keep(method, request, b"", metadata)
                context.abort(exc.code(), exc.details() or "")
            self._keep(method, request, response, metadata)
            return response

        return grpc.unary_unary_rpc_method_handler(relay)

    def _stream_stream(self, method: str) -> Any:
        forward = self.channel.stream_stream(method, None, None)

        def relay(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            metadata = _forwarded(context)
            sent: list[bytes] = []

            def recorded() -> Iterator[bytes]:
                for message in requests:
                    sent.append(message)
                    yield message

            got: list[bytes] = []
            try:
                for response in forward(
                    recorded(), metadata=metadata, timeout=context.time_remaining()
                ):
                    got.append(response)
                    yield response
            except grpc.RpcError as exc:
                context.abort(exc.code(), exc.details() or "")
            finally:
                self._keep(method, b"".join(sent), b"".join(got), metadata)

        return relay

    def _unary_stream(self, method: str) -> Any:
        forward = self.channel.unary_stream(method, None, None)

        def relay(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            metadata = _forwarded(context)
            got: list[bytes] = []
            try:
                for response in forward(
                    request, metadata=metadata, timeout=context.time_remaining()
                ):
                    got.append(response)
                    yield response
            except grpc.RpcError as exc:
                context.abort(exc.code(), exc.details() or "")
            finally:
                self._keep(method, request, b"".join(got), metadata)

        return relay


Metadata = tuple[tuple[str, str], ...]


def _forwarded(context: grpc.ServicerContext) -> Metadata:
    return tuple(
        (k, v)
        for k, v in context.invocation_metadata()
        if isinstance(v, str) and not k.startswith((":", "grpc-")) and k != "user-agent"
    )


@contextmanager
def tapped(upstream: str) -> Iterator[tuple[str, Tap]]:
    """A recording proxy to ``upstream`` on a free loopback port; yields its address."""
    tap = Tap(upstream)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=CHANNEL_OPTIONS)
    server.add_generic_rpc_handlers((tap,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", tap
    finally:
        server.stop(grace=None).wait()
        tap.channel.close()


# --- the federation, as real processes, every hop tapped -------------------------------


def give_to(root: Path, agency_id: str, *, sha256: str, md5: str, pdq: str | None) -> None:
    """Put a file's hashes into an agency's own media table, as its own tools would."""
    (agency,) = [a for a in demo_agencies() if a.agency_id == agency_id]
    (local,) = [t for t in agency.tables if t.dataset == "media"]
    values: dict[str, object] = {
        "sha256": sha256,
        "md5": md5,
        "pdq": pdq,
        "category": "A",
        "first_seen": dt.date(2024, 5, 1),
        "case_ref": "LOCAL-1",
        "victim_identified": False,
        "shareable": True,
    }
    row = {}
    for name, column in local.columns.items():
        value = values[name]
        kind = local.table.c[column].type
        if isinstance(value, dt.date) and not isinstance(kind, sa.Date):
            value = value.isoformat()
        if isinstance(value, bool) and not isinstance(kind, sa.Boolean):
            value = int(value)
        row[column] = value
    engine = sa.create_engine(f"sqlite:///{root / 'nodes' / agency_id / f'{agency_id}.sqlite3'}")
    try:
        with engine.begin() as conn:
            conn.execute(local.table.insert(), [row])
    finally:
        engine.dispose()


def stop_all(services: list[Service]) -> None:
    for service in reversed(services):
        stop_service(service)


@dataclass(frozen=True, slots=True)
class Run:
    returncode: int
    stdout: bytes
    stderr: bytes


@dataclass
class Triage:
    root: Path
    images: list[Path]
    client_tap: Tap
    node_taps: dict[str, Tap]
    run: Run
    report: dict[str, Any]


@pytest.fixture(scope="module")
def triage(federation_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Triage]:
    """`liaison query media --image DIR --match`, through taps, against real processes."""
    base = tmp_path_factory.mktemp("image-privacy")
    root = base / "federation"
    shutil.copytree(federation_template, root)
    # Two pattern series, a text file and a flat (too plain for PDQ) picture.
    folder = base / "seized"
    images = write_series(folder, 11) + write_series(folder, 12)
    notes = folder / "notes.txt"
    notes.write_bytes(os.urandom(3000).hex().encode())
    flat = folder / "flat.png"
    pattern(13).convert("L").point(lambda _: 128).save(flat, format="PNG")
    images += [notes, flat]
    # Ruritania holds the first original itself; Freedonia another file whose PDQ
    # is 6 bits from the second original's.
    held, seen = hash_file(images[0]), hash_file(images[6])
    assert held.pdq is not None and seen.pdq is not None
    give_to(root, "ruritania", sha256=held.sha256, md5=held.md5, pdq=held.pdq)
    edited = flip_bits(seen.pdq, 6, random.Random(6))
    give_to(root, "freedonia", sha256=os.urandom(32).hex(), md5=os.urandom(16).hex(), pdq=edited)
    run_dir = root / "run"
    services: list[Service] = []
    with ExitStack() as stack:
        stack.callback(stop_all, services)
        node_taps: dict[str, Tap] = {}
        addresses = {}
        for node_id in NODES:
            services.append(
                start_service(node_id, "node", root / "nodes" / node_id / "node.toml", run_dir)
            )
            addresses[node_id], node_taps[node_id] = stack.enter_context(
                tapped(services[-1].address)
            )
        write_gateway_config(root, [INVESTIGATOR_AGENCY], addresses)
        services.append(
            start_service("gateway", "gateway", root / "gateway" / "gateway.toml", run_dir)
        )
        gateway, client_tap = stack.enter_context(tapped(services[-1].address))
        (root / "investigator.jwt").write_text(investigator_token(root) + "\n")

        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "liaison",
                "query",
                "media",
                "--image",
                str(folder),
                "--match",
                "--purpose",
                "csam-investigation",
                "--case-ref",
                "GEN-1",
                "--federation",
                str(root),
                "--gateway",
                gateway,
                "--json",
            ],
            cwd=base,
            capture_output=True,
            timeout=COMMAND_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        run = Run(done.returncode, done.stdout, done.stderr)
        # Sylvania caps near-duplicates at 24 bits and denies the near chunk:
        # not every agency answered every chunk, which exit 3 says.
        assert run.returncode == 3, run.stderr.decode(errors="replace")
        report = json.loads(run.stdout)
        stack.close()  # stop the processes: ledgers and logs are complete on disk
        yield Triage(root, images, client_tap, node_taps, run, report)


@pytest.fixture(scope="module")
def needles(triage: Triage) -> Needles:
    found = Needles()
    for path in triage.images:
        found.add_file(path)
    return found


def shifted_base64(data: bytes, *, shift: int) -> bytes:
    return base64.b64encode(data[shift:])


# --- the scan works --------------------------------------------------------------------


def test_the_scan_finds_a_window_in_any_encoding(tmp_path: Path) -> None:
    # prepare
    (path,) = write_series(tmp_path, 21, kinds=())
    data = path.read_bytes()
    needles = Needles()
    needles.add_file(path)
    piece = data[5000:5064]
    hidden: dict[str, Callable[[bytes], bytes]] = {
        "raw": lambda b: b,
        "hex": lambda b: b.hex().encode(),
        "HEX": lambda b: b.hex().upper().encode(),
        **{f"base64+{shift}": partial(shifted_base64, shift=shift) for shift in range(3)},
        "urlsafe": lambda b: base64.urlsafe_b64encode(b),
        "whole-file-base64": lambda _: base64.b64encode(data),
    }

    # execute
    found = {
        name: needles.found_in(b"log line " + encode(piece) + b" end")
        for name, encode in hidden.items()
    }
    unrelated = needles.found_in(pattern(22).tobytes()[:20_000] + os.urandom(20_000))

    # assert
    assert found == {name: {path.name} for name in hidden}
    assert unrelated == set()
    assert needles.windows[path.name] > 1000


# --- the command did its work --------------------------------------------------------


def test_every_file_was_hashed_and_asked(triage: Triage) -> None:
    # prepare
    hashes = {p.name: hash_file(p) for p in triage.images}
    usable_pdqs = {h.pdq for h in hashes.values() if h.quality is not None and h.quality >= 50}

    # execute
    report = triage.report
    files = {Path(f["path"]).name: f for f in report["files"]}

    # assert
    assert {n: f["sha256"] for n, f in files.items()} == {n: h.sha256 for n, h in hashes.items()}
    assert {n: f["pdq"] for n, f in files.items()} == {n: h.pdq for n, h in hashes.items()}
    assert report["exact"]["values"] == len(triage.images)
    assert report["near"]["values"] == len(usable_pdqs) >= 8  # equal PDQs are asked once
    assert sorted((Path(r["path"]).name, r["reason"]) for r in report["refused"]) == [
        (
            "flat.png",
            "PDQ quality 0 is below 50: too little detail to compare, asked by SHA-256 only",
        ),
        ("notes.txt", "no PDQ (not an image format that can be decoded); asked by SHA-256 only"),
    ]
    # The federation answered: Ruritania holds one file, Freedonia a near-duplicate.
    assert report["exact"]["nodes"]["ruritania"]["hits"] == 1
    assert report["near"]["nodes"]["freedonia"]["hits"] == 1
    assert report["near"]["nodes"]["ruritania"]["hits"] == 1


# --- no image byte anywhere --------------------------------------------------------------


def wire_bytes(tap: Tap) -> list[bytes]:
    out = []
    for e in tap.exchanges:
        out += [e.request, e.response, *(f"{k}: {v}".encode() for k, v in e.metadata)]
    return out


def test_requests_carry_hashes_never_image_bytes(triage: Triage, needles: Needles) -> None:
    # prepare
    # The command sends each batch (exact, near-duplicate) as one batch call.
    searches = [e for e in triage.client_tap.exchanges if e.method.endswith("/SearchBatch")]
    answers = {
        n: [e for e in tap.exchanges if e.method.endswith("/Answer")]
        for n, tap in triage.node_taps.items()
    }
    sha256s = {p.name: hash_file(p).sha256.encode() for p in triage.images}

    # execute
    leaked = {
        "command -> gateway": needles.found_in(b"\n".join(wire_bytes(triage.client_tap))),
        **{
            f"gateway -> {n}": needles.found_in(b"\n".join(wire_bytes(tap)))
            for n, tap in triage.node_taps.items()
        },
    }

    # assert: the scan read the requests that carried every file's hash...
    assert len(searches) == 2  # one exact batch and one near-duplicate batch, a chunk each
    assert {n: len(a) for n, a in answers.items()} == dict.fromkeys(NODES, 2)
    client_requests = b"".join(e.request for e in searches)
    node_requests = {n: b"".join(e.request for e in a) for n, a in answers.items()}
    assert [n for n, s in sha256s.items() if s not in client_requests] == []
    missing = {n: [f for f, s in sha256s.items() if s not in r] for n, r in node_requests.items()}
    assert missing == {n: [] for n in NODES}
    # ... and found none of their bytes.
    assert leaked == {hop: set() for hop in leaked}


def federation_files(triage: Triage) -> dict[str, bytes]:
    """Every file of the federation after the search: ledgers, node state, logs, databases."""
    root = triage.root
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_no_ledger_state_or_log_holds_an_image_byte(triage: Triage, needles: Needles) -> None:
    # prepare
    files = federation_files(triage)
    key = AuditKey.from_file(triage.root / "audit" / "audit.key")
    query_ids = [q.encode() for kind in ("exact", "near") for q in triage.report[kind]["query_ids"]]
    ledger = files["gateway/ledger.sqlite3"] + files.get("gateway/ledger.sqlite3-wal", b"")

    # execute
    leaked = {name: needles.found_in(data) for name, data in files.items()}
    printed = {
        "stdout": needles.found_in(triage.run.stdout),
        "stderr": needles.found_in(triage.run.stderr),
    }

    # assert: the scan read the files of this very search...
    for n in NODES:
        # Replay records and rate usage live in the receipts ledger's database.
        for kind in ("receipts", "aggregates"):
            assert any(name.startswith(f"nodes/{n}/state/{kind}") for name in files), (n, kind)
        receipts = b"".join(
            d for k, d in files.items() if k.startswith(f"nodes/{n}/state/receipts")
        )
        assert all(q in receipts for q in query_ids), n
    for name in (*NODES, "gateway"):
        assert all(q in files[f"run/{name}.log"] for q in query_ids), name
    assert all(q in ledger for q in query_ids)
    assert all(key.hash(hash_file(p).sha256).encode() in ledger for p in triage.images)
    # ... and found none of the images' bytes.
    assert leaked == {name: set() for name in files}
    assert printed == {"stdout": set(), "stderr": set()}
    assert all(needles.windows[p.name] > 10 for p in triage.images)
