"""`liaison console serve`: the console over HTTPS, until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import uvicorn

from liaison.console.config import load_console_config
from liaison.console.web import asgi_app, build_console
from liaison.errors import ConfigError

log = logging.getLogger("liaison.console")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"console cannot listen on {host}:{port} ({exc.strerror})") from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def serve_console(config_path: Path, port_file: Path | None) -> None:
    config = load_console_config(config_path)
    for what, path in (("tls_cert", config.tls_cert), ("tls_key", config.tls_key)):
        if not path.is_file():
            raise ConfigError(f"{config_path}: {what} {path} does not exist")
    sock = _bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    console = build_console(config)
    if console.public_url is None:
        shown = f"[{host}]" if ":" in host else host
        console.public_url = f"https://{shown}:{port}"
    server = uvicorn.Server(
        uvicorn.Config(
            asgi_app(console),
            ssl_certfile=str(config.tls_cert),
            ssl_keyfile=str(config.tls_key),
            log_level="warning",
            # Paths only, never bodies: no selector is ever in a path.
            access_log=True,
            server_header=False,
            date_header=False,
            timeout_graceful_shutdown=5,
        )
    )
    if port_file is not None:
        _write_atomically(port_file, f"{host}:{port}\n")
    sides = ", ".join(s.name for s in console.sides)
    log.info("console (%s) at %s", sides, console.public_url)
    server.run(sockets=[sock])
