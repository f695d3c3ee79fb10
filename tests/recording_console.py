"""A console process that records every request body it receives, for a test to read.

``python -m tests.recording_console CONFIG BODIES PORT_FILE`` serves the
console that CONFIG describes (its investigators' side) and appends each body
received to the file BODIES, so a test can prove what reached the server.
"""

from __future__ import annotations

import sys
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from liaison import logs
from liaison.console.config import load_console_config
from liaison.console.web import asgi_app, build_console
from liaison.web_serving import listening_socket, serve, url_host


class Recorder:
    def __init__(self, app: ASGIApp, out: Path) -> None:
        self.app = app
        self.out = out

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def recorded() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                with self.out.open("ab") as fh:
                    fh.write(message.get("body", b""))
            return message

        await self.app(scope, recorded, send)


def main(config_path: Path, bodies: Path, port_file: Path) -> None:
    logs.configure("warning")
    config = load_console_config(config_path)
    console = build_console(config, sides=["gateway"])
    sock = listening_socket("127.0.0.1", 0)
    host, port = url_host(sock)
    console.public_url = f"https://{host}:{port}"
    serve(
        Recorder(asgi_app(console), bodies),
        sock,
        tls=(config.tls_cert, config.tls_key),
        port_file=port_file,
        access_log=False,
        where=str(config_path),
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
