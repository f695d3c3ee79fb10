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

from liaison.logs import native_event, route_line
from liaison.tls import CertRole, write_dev_pki
from tests.operations_support import log_events, set_keys, wait_for
from tests.support import liaison, spawn, terminate


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
