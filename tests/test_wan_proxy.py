"""The WAN proxy on real sockets: delays, order, bandwidth, stalls, resets, blackholes, refusals."""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from liaison.errors import ConfigError
from liaison.wan.control import ProxyProcess, ProxyThread
from liaison.wan.links import Direction, LinkMode, LinkProfile


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def echo() -> Iterator[str]:
    """A TCP echo server on loopback; its address."""
    server = _Server(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def proxy() -> Iterator[ProxyThread]:
    with ProxyThread(seed=3) as p:
        yield p


def _connect(port: int, timeout_s: float = 5) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        chunk = sock.recv(size - len(out))
        if not chunk:
            raise ConnectionError("closed early")
        out += chunk
    return bytes(out)


def _exchange(sock: socket.socket) -> bytes:
    sock.sendall(b"x")
    return sock.recv(1)


def _connect_and_exchange(sock: socket.socket, port: int) -> bytes:
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return _exchange(sock)


def _ping_ms(sock: socket.socket, payload: bytes = b"ping") -> float:
    start = time.monotonic()
    sock.sendall(payload)
    assert _recv_exactly(sock, len(payload)) == payload
    return (time.monotonic() - start) * 1000


def test_round_trips_take_the_rtt_within_the_jitter(echo: str, proxy: ProxyThread) -> None:
    port = proxy.add_link("a", echo, LinkProfile.wan(80, jitter_ms=10))
    with _connect(port) as sock:
        # The first exchange also pays the TCP handshake loopback skipped: one RTT more.
        first = _ping_ms(sock)
        rtts = [_ping_ms(sock) for _ in range(6)]

    assert 160 - 20 <= first <= 160 + 20 + 40
    for rtt in rtts:
        assert 80 - 20 <= rtt <= 80 + 20 + 40, rtts


def test_jitter_never_reorders_bytes(echo: str, proxy: ProxyThread) -> None:
    port = proxy.add_link("a", echo, LinkProfile.wan(20, jitter_ms=20))
    sent = b"".join(f"{i:05d};".encode() for i in range(300))
    with _connect(port) as sock:
        # Many small writes, each likely its own chunk with its own random delay.
        for i in range(0, len(sent), 30):
            sock.sendall(sent[i : i + 30])
            time.sleep(0.001)
        received = _recv_exactly(sock, len(sent))

    assert received == sent


def test_bandwidth_caps_the_transfer_rate(echo: str, proxy: ProxyThread) -> None:
    answers = Direction(bandwidth_bps=1_000_000)
    port = proxy.add_link("a", echo, LinkProfile(to_client=answers))
    payload = bytes(range(256)) * 2000  # 512 000 bytes
    with _connect(port) as sock:
        start = time.monotonic()
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        received = _recv_exactly(sock, len(payload))
        elapsed = time.monotonic() - start
        sender.join()

    assert received == payload
    assert 0.45 <= elapsed <= 1.5, elapsed


def test_loss_stalls_the_direction_as_a_retransmission_would(echo: str, proxy: ProxyThread) -> None:
    lossy = Direction(loss=0.3, stall_ms=150)
    port = proxy.add_link("a", echo, LinkProfile(to_target=lossy))
    with _connect(port) as sock:
        rtts = [_ping_ms(sock) for _ in range(20)]

    stalled = [r for r in rtts if r >= 150]
    assert stalled, rtts
    assert len(stalled) == proxy.stats("a").stalls
    assert all(r < 50 for r in rtts if r < 150)


def test_reset_is_seen_as_connection_reset(echo: str, proxy: ProxyThread) -> None:
    port = proxy.add_link("a", echo)
    with _connect(port) as sock:
        _ping_ms(sock)
        assert proxy.reset("a") == 1
        with pytest.raises(ConnectionResetError):
            _exchange(sock)

    proxy.set_profile("a", LinkProfile(mode=LinkMode.RESET))
    # The reset may come before the connection is even made, or at the first exchange.
    with pytest.raises(ConnectionResetError), _connect(port) as sock:
        _exchange(sock)


def test_blackhole_hangs_and_lets_held_bytes_through_after(echo: str, proxy: ProxyThread) -> None:
    port = proxy.add_link("a", echo)
    with _connect(port, timeout_s=0.5) as sock:
        _ping_ms(sock)
        proxy.set_profile("a", LinkProfile(mode=LinkMode.BLACKHOLE))
        sock.sendall(b"held")
        with pytest.raises(TimeoutError):
            sock.recv(4)
        # A new connection is accepted, and hangs too.
        with _connect(port, timeout_s=0.3) as other:
            other.sendall(b"new")
            with pytest.raises(TimeoutError):
                other.recv(3)

        # As under TCP after a path comes back: what was sent arrives.
        proxy.set_profile("a", LinkProfile())
        sock.settimeout(5)
        assert _recv_exactly(sock, 4) == b"held"


def test_down_refuses_connections_and_up_takes_the_same_port(echo: str, proxy: ProxyThread) -> None:
    port = proxy.add_link("a", echo)
    with _connect(port) as open_before:
        proxy.set_profile("a", LinkProfile(mode=LinkMode.DOWN))
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
        with pytest.raises(ConnectionResetError):
            _exchange(open_before)

    proxy.set_profile("a", LinkProfile())
    with _connect(port) as sock:
        assert _ping_ms(sock) < 100


def test_a_dead_target_resets_the_client(proxy: ProxyThread) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{unused.getsockname()[1]}"  # bound, not listening: refuses
        port = proxy.add_link("a", dead)
        with socket.socket() as sock, pytest.raises(ConnectionResetError):
            # The reset may come while connecting or after: either way, a reset.
            _connect_and_exchange(sock, port)


def test_profile_changes_apply_to_open_connections(echo: str, proxy: ProxyThread) -> None:
    port = proxy.add_link("a", echo, LinkProfile.wan(10))
    with _connect(port) as sock:
        _ping_ms(sock)
        fast = _ping_ms(sock)
        proxy.set_profile("a", LinkProfile.wan(200))
        slow = _ping_ms(sock)
        proxy.set_profile("a", LinkProfile.wan(10))
        _ping_ms(sock)  # a chunk stamped under the old profile may still be in flight
        fast_again = _ping_ms(sock)

    assert fast < 60
    assert 190 <= slow <= 290
    assert fast_again < 60
    assert proxy.profile("a").rtt_ms == 10


def test_a_proxy_process_is_steered_over_its_stdin(echo: str) -> None:
    with ProxyProcess(seed=1) as process:
        port = process.add_link("a", echo, LinkProfile.wan(60))
        with _connect(port) as sock:
            _ping_ms(sock)
            assert 50 <= _ping_ms(sock) <= 120
        process.set_profile("a", LinkProfile(mode=LinkMode.DOWN))
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
        assert process.profile("a").mode is LinkMode.DOWN
        assert process.stats("a").connections == 1
        with pytest.raises(ConfigError, match="no link named 'b'"):
            process.reset("b")
        pid = process.pid

    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
