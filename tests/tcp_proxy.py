"""A loopback TCP proxy, run as its own process, to make a database hang on demand.

    python tests/tcp_proxy.py TARGET_PORT

listens on 127.0.0.1 (any free port, printed on stdout as one line), and
relays every connection to 127.0.0.1:TARGET_PORT. Stopping the process
(SIGSTOP) makes the database behind it hang exactly as a stopped server or a
frozen host does: connections stay open, the kernel still acknowledges every
byte, and no reply comes. SIGCONT lets everything through again.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading

LOOPBACK = "127.0.0.1"


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def _relay(client: socket.socket, target_port: int) -> None:
    try:
        upstream = socket.create_connection((LOOPBACK, target_port), timeout=10)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    there = threading.Thread(target=_pump, args=(client, upstream), daemon=True)
    there.start()
    _pump(upstream, client)
    there.join()
    client.close()
    upstream.close()


def main(argv: list[str]) -> None:
    target_port = int(argv[1])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK, 0))
    listener.listen(64)
    print(listener.getsockname()[1], flush=True)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_relay, args=(client, target_port), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv)
