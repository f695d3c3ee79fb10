"""Every line a serving process writes on stderr is JSON, gRPC's own lines included.

gRPC's C core writes straight to file descriptor 2; a refused TLS handshake
used to show as a bare "Handshake failed ... SSL_ERROR_SSL" line in the JSON
stream. A real node with mutual TLS (from `liaison init`) is called in
plaintext, over TLS without a certificate, and with a certificate from
another CA; each refusal must be one structured event, and nothing else may
break the stream.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from liaison.logs import MAX_LINE_BYTES, native_event, route_line
from liaison.tls import CertRole, write_dev_pki
from tests.operations_support import log_events, set_keys, wait_for
from tests.support import captured, liaison, spawn, terminate


def refused(channel: grpc.Channel) -> grpc.StatusCode:
    with channel, pytest.raises(grpc.RpcError) as failure:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    code: grpc.StatusCode = failure.value.code()
    return code


def test_refused_tls_handshakes_are_structured_events(tmp_path: Path) -> None:
    # prepare: a federation from `liaison init` (mutual TLS), its node on a free port
    root = tmp_path / "federation"
    run = liaison("init", root, "--node", "tlsland", "--agency", "genovia", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    config = root / "nodes" / "tlsland" / "node.toml"
    set_keys(config, "node", listen="127.0.0.1:0")
    strangers = tmp_path / "other-ca"
    write_dev_pki(strangers, {"stranger": [CertRole.CLIENT]})
    ca = (root / "pki" / "ca.pem").read_bytes()
    node = spawn("node", "tlsland", config, tmp_path)
    try:
        # execute: three clients the node must refuse at the handshake
        assert refused(grpc.insecure_channel(node.address)) == grpc.StatusCode.UNAVAILABLE
        no_certificate = grpc.ssl_channel_credentials(root_certificates=ca)
        assert refused(grpc.secure_channel(node.address, no_certificate)) == (
            grpc.StatusCode.UNAVAILABLE
        )
        foreign = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=(strangers / "stranger.key").read_bytes(),
            certificate_chain=(strangers / "stranger.crt").read_bytes(),
        )
        assert refused(grpc.secure_channel(node.address, foreign)) == grpc.StatusCode.UNAVAILABLE

        def refusals() -> list[dict[str, object]] | None:
            found = [e for e in log_events(node) if e["msg"] == "tls handshake refused"]
            return found if len(found) >= 3 else None

        events = wait_for(refusals, 10, "three refusal events in the node's log")
    finally:
        assert terminate(node) == 0

    # assert: one event per refused client, saying why in words, and JSON throughout
    assert {e["tls_error"] for e in events} == {
        "WRONG_VERSION_NUMBER",
        "PEER_DID_NOT_RETURN_A_CERTIFICATE",
        # The other CA bears the same (development) name, so only its signature differs.
        "BAD_SIGNATURE",
    }
    for event in events:
        assert event["logger"] == "grpc"
        assert event["level"] == "warning"
        assert event["reason"] != "TLS handshake failed", event
    every = log_events(node)  # raises on any line that is not a JSON object
    assert [e["msg"] for e in every if e["logger"].startswith("liaison")][-1] == "node stopping"


GRPC_LINE = (
    "E1207 02:01:45.674901   11314 ssl_transport_security.cc:2563] Handshake failed with "
    "error SSL_ERROR_SSL: error:100000f7:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER: "
    "Invalid certificate verification context"
)

PLAIN_LINE = 'Traceback (most recent call last): "{not json"'


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param(
            GRPC_LINE,
            {"logger": "grpc", "msg": "tls handshake refused", "tls_error": "WRONG_VERSION_NUMBER"},
            id="handshake",
        ),
        pytest.param(
            GRPC_LINE + " peer ipv4:10.1.2.3:51234",
            {"msg": "tls handshake refused", "peer": "ipv4:10.1.2.3:51234"},
            id="handshake-with-peer",
        ),
        pytest.param(
            "W1207 02:01:45.674901   11314 chttp2_transport.cc:1203] ipv6:[::1]:50051: "
            "Received a GOAWAY with error code ENHANCE_YOUR_CALM",
            {"logger": "grpc", "level": "warning", "peer": "ipv6:[::1]:50051"},
            id="goaway",
        ),
        pytest.param(
            'Traceback (most recent call last): "{not json"',
            {
                "logger": "stderr",
                "level": "warning",
                "msg": 'Traceback (most recent call last): "{not json"',
            },
            id="plain",
        ),
    ],
)
def test_a_line_from_below_python_becomes_one_json_event(
    line: str, expected: dict[str, str]
) -> None:
    routed = route_line(line.encode())
    assert routed.endswith(b"\n") and routed.count(b"\n") == 1
    event = json.loads(routed)
    assert event == native_event(line) | {"ts": event["ts"]}
    assert expected.items() <= event.items()


def test_json_lines_and_the_cli_refusal_pass_through_unchanged() -> None:
    line = b'{"ts": "x", "level": "info", "logger": "liaison.node", "msg": "node serving"}'
    assert route_line(line) == line + b"\n"
    assert route_line(b"   ") == b""
    # The command line's refusal to start stays the one line it prints.
    refusal = b"error: config file node.toml does not exist"
    assert route_line(refusal) == refusal + b"\n"
    assert json.loads(route_line(b"{broken"))["msg"] == "{broken"


# --- the capture itself, in a process of its own (it takes over fd 2) --------------------

THREADS = 8
PER_THREAD = 300


def test_megabytes_from_many_threads_arrive_whole_and_as_json() -> None:
    # prepare: 8 threads logging, every 50th event three times MAX_LINE_BYTES; then 8
    # threads logging short events and writing raw lines to fd 2 beside them, as gRPC's
    # core does. (Not both at once: a pipe keeps only writes of up to PIPE_BUF, 4 KiB,
    # whole, so a raw line may land inside a longer event on any stderr, captured or not.)
    script = f"""
        logs.configure()
        logs.capture_native_stderr()
        log = logging.getLogger("liaison.flood")

        def flood(t):
            for i in range({PER_THREAD}):
                size = 3 * {MAX_LINE_BYTES} if i % 50 == 0 else 1000 + i
                log.info("flood", extra={{"t": t, "i": i, "pad": "x" * size}})

        def mixed(t):
            for i in range({PER_THREAD}):
                log.info("short", extra={{"t": t, "i": i}})
                os.write(2, b"raw line %d %d\\n" % (t, i))

        for phase in (flood, mixed):
            threads = [threading.Thread(target=phase, args=(t,)) for t in range({THREADS})]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        print("done")
    """

    # execute
    run = captured(script)

    # assert: every line JSON, none lost, none cut
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout == b"done\n"
    assert len(run.stderr) > 4_000_000
    events = [json.loads(line) for line in run.stderr.splitlines()]
    assert all(isinstance(e, dict) for e in events)
    every = [(t, i) for t in range(THREADS) for i in range(PER_THREAD)]
    flood = sorted((e["t"], e["i"], len(e["pad"])) for e in events if e["msg"] == "flood")
    assert flood == [(t, i, 3 * MAX_LINE_BYTES if i % 50 == 0 else 1000 + i) for t, i in every]
    assert sorted((e["t"], e["i"]) for e in events if e["msg"] == "short") == every
    raw = sorted(e["msg"] for e in events if e["logger"] == "stderr")
    assert raw == sorted(f"raw line {t} {i}" for t, i in every)
    assert len(events) == 3 * THREADS * PER_THREAD


def test_a_reader_that_fails_puts_the_real_stderr_back() -> None:
    # prepare: routing breaks on one line; then far more than a pipe holds is written
    script = """
        broken = logs.route_line

        def route_line(raw):
            if raw == b"BREAK":
                raise RuntimeError("routing broke")
            return broken(raw)

        logs.route_line = route_line
        logs.capture_native_stderr()
        os.write(2, b"BREAK\\n")
        for i in range(20_000):
            os.write(2, b"after %05d\\n" % i)
        print("done")
    """

    # execute: without the fallback the writes block forever on the full pipe
    run = captured(script)

    # assert: nothing blocked, nothing lost, and the failure said so once
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout == b"done\n"
    lines = run.stderr.decode().splitlines()
    (failure,) = [json.loads(line) for line in lines if "stderr capture failed" in line]
    assert failure["level"] == "error" and "RuntimeError" in failure["msg"]
    after = [line for line in lines if "after " in line]
    assert len(after) == 20_000
    assert all(line.startswith("after ") or "after " in json.loads(line)["msg"] for line in after)


def test_a_fatal_signal_leaves_a_traceback_on_the_real_stderr() -> None:
    run = captured(
        """
        logs.capture_native_stderr()
        os.abort()
        """
    )
    assert run.returncode < 0
    assert b"Fatal Python error: Aborted" in run.stderr
