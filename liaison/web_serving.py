"""Serving the web applications (the consoles, the development sign-in provider) with uvicorn.

We bind the socket ourselves, so that port 0 works and the bound address is
known before the application is built (a provider's issuer URL, a console's
address for sign-in redirects), and so that a port file is written only once
the socket listens.
"""

from __future__ import annotations

import signal
import socket
import ssl
from pathlib import Path
from types import FrameType

import uvicorn
from starlette.types import ASGIApp

from liaison.errors import ConfigError
from liaison.serving import write_port_file


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host``:``port``; ConfigError, in one line, if it cannot."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve listen host {host!r} ({exc.strerror})") from exc
    family, kind, proto, _, address = infos[0]
    # The protocol must be named: asyncio sets TCP_NODELAY only on sockets that
    # say IPPROTO_TCP, and without it every response waits 40 ms for an ACK.
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror}); is the port in use?"
        ) from exc
    return sock


def url_host(sock: socket.socket) -> tuple[str, int]:
    """The bound host as it is written in a URL (IPv6 in brackets), and the port."""
    host, port = sock.getsockname()[:2]
    return (f"[{host}]" if ":" in host else host), port


def serve(
    app: ASGIApp,
    sock: socket.socket,
    *,
    tls: tuple[Path, Path] | None,
    port_file: Path | None,
    access_log: bool,
    where: str,
) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM or Ctrl-C; ``where`` names the config in errors."""
    served = uvicorn.Config(
        app,
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
        log_level="warning",
        access_log=access_log,
        server_header=False,
        date_header=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
    )
    try:
        served.load()  # reads the TLS files now, so a bad one is said before we announce
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        assert tls is not None
        raise ConfigError(
            f"{where}: cannot use tls_cert {tls[0]} / tls_key {tls[1]} ({exc}); check both "
            "are PEM files that belong together"
        ) from exc
    server = uvicorn.Server(served)
    # The socket already listens: a client that reads the port file and
    # connects at once waits in the backlog until uvicorn accepts.
    host, port = url_host(sock)
    write_port_file(port_file, host, port)
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again under
    # the handler it found: make that one a no-op so a requested stop exits 0.
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()


def _stopped(signum: int, frame: FrameType | None) -> None:
    """SIGTERM after uvicorn's graceful shutdown: nothing left to do."""
