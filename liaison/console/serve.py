"""`liaison console serve`: the console over HTTPS, until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
from pathlib import Path

from liaison.console.config import load_console_config
from liaison.console.web import asgi_app, build_console
from liaison.errors import ConfigError
from liaison.web_serving import listening_socket, serve, url_host

log = logging.getLogger("liaison.console")


def serve_console(config_path: Path, port_file: Path | None) -> None:
    config = load_console_config(config_path)
    for what, path in (("tls_cert", config.tls_cert), ("tls_key", config.tls_key)):
        if not path.is_file():
            raise ConfigError(f"{config_path}: {what} {path} does not exist")
    console = build_console(config)
    sock = listening_socket(config.host, config.port)
    if console.public_url is None:
        host, port = url_host(sock)
        console.public_url = f"https://{host}:{port}"
    log.info("console (%s) at %s", ", ".join(s.name for s in console.sides), console.public_url)
    # The console logs each request itself (paths only); uvicorn's log would add
    # query strings, such as a sign-in's code and state.
    serve(
        asgi_app(console),
        sock,
        tls=(config.tls_cert, config.tls_key),
        port_file=port_file,
        access_log=False,
        where=str(config_path),
    )
