"""What node and gateway servers share: health, reflection, options, ports, metrics, shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer as AsyncReflectionServicer
from prometheus_client import CollectorRegistry

from liaison.errors import ConfigError
from liaison.metrics import MetricsServer
from liaison.tls import TlsFiles

log = logging.getLogger("liaison.health")

# Requests are small; answers of a few thousand rows fit easily. Anything
# larger is refused by gRPC before our code sees it.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

# Keepalive, agreed between both sides (gRPC core's doc/keepalive.md): clients
# ping an idle connection every KEEPALIVE_TIME_MS and drop it when no ack comes
# within KEEPALIVE_TIMEOUT_MS, so a node host that vanished without closing its
# connections (power cut, dropped route) is noticed in half a minute, not after
# the kernel's two hours. Servers accept such pings as often as every
# MIN_PING_INTERVAL_MS, a third of the clients' pace: a client pinging faster
# than a server allows is sent GOAWAY "too_many_pings" and loses its calls.
KEEPALIVE_TIME_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 10_000
MIN_PING_INTERVAL_MS = KEEPALIVE_TIME_MS // 3
# Servers ping idle clients less often: only to let go of dead connections.
SERVER_KEEPALIVE_TIME_MS = 60_000

# Reconnecting (gRPC core's doc/connection-backoff.md). The defaults (1 s
# initial backoff growing by 1.6 up to 120 s, 20 s connect timeout) kept a
# restarted node "unreachable" for half a minute. Federation nodes are few and
# known: trying each one again at least every second costs nothing, and a
# restarted node answers within about a second of listening again.
INITIAL_RECONNECT_BACKOFF_MS = 250
MAX_RECONNECT_BACKOFF_MS = 1_000
# In gRPC core this "minimum backoff" is the shortest time given to one
# connection attempt (TCP and TLS handshakes): enough for a slow link.
MIN_CONNECT_TIMEOUT_MS = 2_000

SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
    # gRPC's default metadata limit (8 KiB soft, randomly enforced up to 16 KiB)
    # would cut off long but valid bearer tokens before the verifier could
    # give its own, clearer refusal.
    ("grpc.max_metadata_size", 32 * 1024),
    ("grpc.keepalive_time_ms", SERVER_KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # Clients keep idle connections alive: allow their pings without calls.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
]
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", INITIAL_RECONNECT_BACKOFF_MS),
    ("grpc.min_reconnect_backoff_ms", MIN_CONNECT_TIMEOUT_MS),
    ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # The gateway's channels to nodes are long-lived and mostly idle between
    # searches: check them while idle too, so the next search does not find
    # a dead connection first.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# --- health ------------------------------------------------------------------------


class ServingHealth:
    """SERVING while every named condition holds, until the process starts draining.

    Conditions ("database", "ledger", ...) are set from any thread; the
    health service hears only changes of the overall answer, in order.
    """

    def __init__(self, publish: Callable[[bool], None], *, who: dict[str, Any]) -> None:
        self._publish = publish
        self._who = who
        self._failing: set[str] = set()
        self._draining = False
        self._lock = threading.Lock()

    @property
    def serving(self) -> bool:
        return not self._failing and not self._draining

    def set(self, condition: str, ok: bool) -> None:
        with self._lock:
            before = self.serving
            if ok:
                self._failing.discard(condition)
            else:
                self._failing.add(condition)
            after = self.serving
            if before != after:
                self._publish(after)
        if before and not after:
            log.warning(
                "health: NOT_SERVING", extra={**self._who, "failing": sorted(self._failing)}
            )
        elif after and not before:
            log.warning("health: SERVING again", extra={**self._who, "recovered": condition})

    def drain(self) -> None:
        """NOT_SERVING for good: the process is stopping."""
        with self._lock:
            was = self.serving
            self._draining = True
            if was:
                self._publish(False)


def add_health_and_reflection(server: Any, service_names: list[str]) -> health.HealthServicer:
    """Register health (SERVING for each service) and reflection on a sync server."""
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in [*service_names, ""]:
        servicer.set(name, SERVING)
    _add_reflection(server, service_names, reflection.ReflectionServicer)
    return servicer


def serving_health(
    servicer: health.HealthServicer, service_names: list[str], who: dict[str, Any]
) -> ServingHealth:
    """A :class:`ServingHealth` answering through a sync server's health servicer."""

    def publish(ok: bool) -> None:
        for name in [*service_names, ""]:
            servicer.set(name, SERVING if ok else NOT_SERVING)

    return ServingHealth(publish, who=who)


async def add_health_and_reflection_aio(server: Any, service_names: list[str]) -> Any:
    """The same for a grpc.aio server, whose health servicer is asynchronous."""
    servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # untyped submodule
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in [*service_names, ""]:
        await servicer.set(name, SERVING)
    _add_reflection(server, service_names, AsyncReflectionServicer)
    return servicer


def serving_health_aio(
    servicer: Any,
    service_names: list[str],
    loop: asyncio.AbstractEventLoop,
    who: dict[str, Any],
) -> ServingHealth:
    """A :class:`ServingHealth` for an aio health servicer, callable from any thread."""

    def publish(ok: bool) -> None:
        # Scheduled in call order on the server's loop, whichever thread calls.
        for name in [*service_names, ""]:
            asyncio.run_coroutine_threadsafe(
                servicer.set(name, SERVING if ok else NOT_SERVING), loop
            )

    return ServingHealth(publish, who=who)


# --- reflection ---------------------------------------------------------------------

# grpcio-reflection implements only v1alpha. v1 (grpc/reflection/v1/reflection.proto,
# what grpcurl, buf curl and Postman try first) has the very same messages and
# field numbers under another package, so the v1alpha servicer answers it
# unchanged; only the service name and the descriptor that describes it differ.
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"
_v1_lock = threading.Lock()


def _register_reflection_v1() -> None:
    """Put v1's file descriptor in the default pool, so reflection can describe itself."""
    pool = descriptor_pool.Default()
    with _v1_lock:
        try:
            pool.FindFileByName(_V1_FILE)
            return
        except KeyError:
            pass
        proto = descriptor_pb2.FileDescriptorProto()
        reflection_pb2.DESCRIPTOR.CopyToProto(proto)
        proto.name = _V1_FILE
        proto.package = "grpc.reflection.v1"

        def moved(type_name: str) -> str:
            return type_name.replace(".grpc.reflection.v1alpha.", ".grpc.reflection.v1.")

        for message in proto.message_type:
            for field in message.field:
                if field.type_name:
                    field.type_name = moved(field.type_name)
        for method in proto.service[0].method:
            method.input_type = moved(method.input_type)
            method.output_type = moved(method.output_type)
        proto.options.Clear()
        proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
        proto.options.java_package = "io.grpc.reflection.v1"
        proto.options.java_outer_classname = "ServerReflectionProto"
        proto.options.java_multiple_files = True
        pool.Add(proto)


def _add_reflection(server: Any, service_names: list[str], servicer_class: Any) -> None:
    _register_reflection_v1()
    servicer = servicer_class(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1]
    )
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handlers = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    generic = grpc.method_handlers_generic_handler(REFLECTION_V1, handlers)
    server.add_generic_rpc_handlers((generic,))
    server.add_registered_method_handlers(REFLECTION_V1, handlers)


# --- ports --------------------------------------------------------------------------


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


def write_address(path: Path | None, address: str) -> None:
    """:func:`write_port_file` for an address given as ``HOST:PORT``."""
    host, _, port = address.rpartition(":")
    write_port_file(path, host, int(port))


def start_metrics(
    stack: ExitStack, registry: CollectorRegistry, listen: str | None, port_file: Path | None
) -> dict[str, str]:
    """Serve ``registry`` on ``listen`` if set, closed with ``stack``; what to log about it.

    The bound address goes to ``port_file`` and into the returned log fields
    (``metrics_address``); nothing is served, and nothing returned, without ``listen``.
    """
    if listen is None:
        return {}
    server = MetricsServer(registry, listen)
    stack.callback(server.close)
    write_address(port_file, server.address)
    return {"metrics_address": server.address}


def host_of(listen: str) -> str:
    return listen.rsplit(":", 1)[0] or "127.0.0.1"


# --- shutdown -----------------------------------------------------------------------


# Python runs signal handlers on the main thread, but the kernel may deliver a
# signal to any thread: a main thread blocked in a wait without a timeout is
# then never woken to run the handler. Waits on the main thread wake this often.
SIGNAL_POLL_S = 0.2


class Shutdown:
    """SIGTERM or SIGINT asks for a drained stop; a second one cuts the drain short."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.hurried = threading.Event()

    def wait_requested(self) -> None:
        """Block (on the main thread) until a stop is asked for."""
        while not self.requested.wait(SIGNAL_POLL_S):
            pass

    def wait_hurried(self, timeout_s: float) -> bool:
        """Block (on the main thread) up to ``timeout_s``; True if a second signal came."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if self.hurried.wait(min(left, SIGNAL_POLL_S)):
                return True
        return self.hurried.is_set()

    def received(self) -> None:
        if self.requested.is_set():
            self.hurried.set()
        self.requested.set()

    def install(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> Shutdown:
        for sig in signals:
            signal.signal(sig, lambda _signum, _frame: self.received())
        return self

    def install_aio(
        self,
        loop: asyncio.AbstractEventLoop,
        signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
    ) -> Shutdown:
        for sig in signals:
            loop.add_signal_handler(sig, self.received)
        return self
