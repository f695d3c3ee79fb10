"""What node and gateway servers share: health, reflection, size limits, ports."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from liaison.errors import ConfigError
from liaison.tls import TlsFiles

# Requests are small; answers of a few thousand rows fit easily. Anything
# larger is refused by gRPC before our code sees it.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
    # gRPC's default metadata limit (8 KiB soft, randomly enforced up to 16 KiB)
    # would cut off long but valid bearer tokens before the verifier could
    # give its own, clearer refusal.
    ("grpc.max_metadata_size", 32 * 1024),
]
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


def add_health_and_reflection(server: Any, service_names: list[str]) -> health.HealthServicer:
    """Register health (SERVING for each service) and reflection on a sync server."""
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in [*service_names, ""]:
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    _add_reflection(server, service_names)
    return servicer


async def add_health_and_reflection_aio(server: Any, service_names: list[str]) -> Any:
    """The same for a grpc.aio server, whose health servicer is asynchronous."""
    servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # untyped submodule
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in [*service_names, ""]:
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    _add_reflection(server, service_names)
    return servicer


def _add_reflection(server: Any, service_names: list[str]) -> None:
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )


def bind(server: Any, listen: str, tls: TlsFiles | None = None) -> int:
    """Bind ``listen`` (port 0 for any free port) and return the bound port."""
    try:
        if tls is None:
            port = int(server.add_insecure_port(listen))
        else:
            port = int(server.add_secure_port(listen, tls.server_credentials()))
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {listen!r} ({exc}); is the port in use?") from exc
    if port == 0:
        raise ConfigError(f"cannot listen on {listen!r}; is the port in use?")
    return port


def write_port_file(path: Path | None, host: str, port: int) -> None:
    """Publish the bound address atomically, for scripts that started us on port 0."""
    if path is None:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(f"{host}:{port}\n")
    os.replace(tmp, path)


def host_of(listen: str) -> str:
    return listen.rsplit(":", 1)[0] or "127.0.0.1"


def stop_event_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, for a clean shutdown."""
    stop = threading.Event()

    def handler(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop
