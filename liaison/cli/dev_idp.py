"""`liaison dev-idp serve`: the development OpenID Connect provider (demos and tests only)."""

from __future__ import annotations

import argparse
import signal
import socket
import ssl
from pathlib import Path
from types import FrameType

from liaison.cli.inputs import check_output_file, read_text
from liaison.errors import ConfigError


def add_dev_idp(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dev-idp",
        help="development OpenID Connect provider for the console (demos and tests only)",
        description="Signs anyone in as any configured user, without a password. "
        "Never use it in production.",
    )
    inner = p.add_subparsers(dest="action", required=True)
    s = inner.add_parser("serve", help="serve until SIGTERM or Ctrl-C")
    s.add_argument("--config", type=Path, required=True, help="dev-idp config file (TOML)")
    s.add_argument(
        "--port-file", type=Path, help="write HOST:PORT here once listening (useful with port 0)"
    )


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve listen host {host!r} ({exc.strerror})") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
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


def cmd_dev_idp(args: argparse.Namespace) -> int:
    # Imported here so that `liaison --help` does not load the web stack.
    import uvicorn

    from liaison.identity.dev_oidc import build_app
    from liaison.identity.dev_oidc_config import load_dev_idp_config
    from liaison.serving import write_port_file

    read_text(args.config, "--config")
    if args.port_file is not None:
        check_output_file(args.port_file, "--port-file")
    config = load_dev_idp_config(args.config)
    sock = _bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    scheme = "https" if config.tls else "http"
    app = build_app(config, f"{scheme}://{shown_host}:{port}")
    served = uvicorn.Config(
        app,
        ssl_certfile=config.tls_cert,
        ssl_keyfile=config.tls_key,
        log_level="warning",
        # URLs carry codes and state: no access log.
        access_log=False,
        server_header=False,
        lifespan="off",
    )
    try:
        served.load()  # reads the TLS files now, so a bad one is an error before we announce
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        raise ConfigError(
            f"{args.config}: cannot use tls_cert {config.tls_cert} / tls_key {config.tls_key} "
            f"({exc}); check both are PEM files that belong together"
        ) from exc
    server = uvicorn.Server(served)
    # The socket already listens: a client that reads the port file and
    # connects at once waits in the backlog until uvicorn accepts.
    write_port_file(args.port_file, shown_host, port)
    print(
        f"development identity provider (NOT for production) at {scheme}://{shown_host}:{port}/"
        f"<agency>: {', '.join(sorted(config.agencies))}",
        flush=True,
    )
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again under
    # the handler it found: make that one a no-op so a requested stop exits 0.
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    return 0


def _stopped(signum: int, frame: FrameType | None) -> None:
    """SIGTERM after uvicorn's graceful shutdown: nothing left to do."""
