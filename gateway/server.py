"""Building a gateway from its config and serving it with grpc.aio."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc

from gateway.dryrun import DryRunner
from gateway.fanout import FanOut, NodeLink
from gateway.followups import FollowUps
from gateway.search import GatewayCore
from gateway.service import GatewayServicer
from liaison.catalog import CATALOG_V1, Catalog
from liaison.config import GatewayConfig, load_gateway_config
from liaison.errors import ConfigError
from liaison.grpc_errors import MalformedRequestsAio
from liaison.identity.verify import TokenVerifier
from liaison.keys import SigningKey, VerifyingKey
from liaison.ledger.entries import AuditKey
from liaison.ledger.log import Ledger
from liaison.ledger.logged import gateway_origin
from liaison.logs import capture_native_stderr
from liaison.metrics import GatewayMetrics
from liaison.serving import (
    SERVER_OPTIONS,
    ServingHealth,
    Shutdown,
    add_health_and_reflection_aio,
    bind,
    host_of,
    serving_health_aio,
    start_metrics,
    write_port_file,
)
from liaison.tls import TlsFiles
from proto.liaison.v1 import gateway_pb2 as pb_gateway
from proto.liaison.v1 import gateway_pb2_grpc as pb_gateway_grpc

log = logging.getLogger("liaison.gateway")
SERVICE_NAME = pb_gateway.DESCRIPTOR.services_by_name["GatewayService"].full_name


def build_gateway(
    config: GatewayConfig, catalog: Catalog = CATALOG_V1
) -> tuple[GatewayCore, TokenVerifier]:
    """Load keys and trust; must run inside the event loop that will serve."""
    links = tuple(
        NodeLink(n.id, n.address, VerifyingKey.from_pem_file(n.public_key)) for n in config.nodes
    )
    if config.audit_key is None:
        raise ConfigError(f"{config.path}: set `audit_key` under [ledger]")
    audit_key = AuditKey.from_file(config.audit_key)
    signing_key = SigningKey.from_pem_file(config.signing_key)
    verifier = TokenVerifier(config.issuers, config.audience)
    ledger = Ledger.open(
        config.ledger,
        signing_key,
        gateway_origin(config.gateway_id),
        checkpoint_interval_s=config.checkpoint_interval_s,
        timeouts=config.ledger_timeouts,
        # Replicas: entries are numbered inside PostgreSQL, never by this process.
        shared=config.ledger_shared,
    )
    core = GatewayCore(
        gateway_id=config.gateway_id,
        signing_key=signing_key,
        catalog=catalog,
        fanout=FanOut(links, config.node_tls),
        ledger=ledger,
        audit_key=audit_key,
        default_deadline_ms=config.default_deadline_ms,
        max_deadline_ms=config.max_deadline_ms,
    )
    return core, verifier


@dataclass
class ServedGateway:
    server: grpc.aio.Server
    port: int
    health: ServingHealth
    metrics: GatewayMetrics


async def start_gateway_server(
    core: GatewayCore,
    verifier: TokenVerifier,
    listen: str,
    tls: TlsFiles | None = None,
    *,
    dry_runner: DryRunner | None = None,
    metrics: GatewayMetrics | None = None,
    followups: FollowUps | None = None,
) -> tuple[grpc.aio.Server, int]:
    """As :func:`serve_gateway`, returning only the server and its port."""
    served = await serve_gateway(
        core, verifier, listen, tls, dry_runner=dry_runner, metrics=metrics, followups=followups
    )
    return served.server, served.port


async def serve_gateway(
    core: GatewayCore,
    verifier: TokenVerifier,
    listen: str,
    tls: TlsFiles | None = None,
    *,
    dry_runner: DryRunner | None = None,
    metrics: GatewayMetrics | None = None,
    followups: FollowUps | None = None,
) -> ServedGateway:
    """Serve ``core``; ``dry_runner`` defaults to one caching policies for a minute.

    ``followups`` defaults to follow-ups kept beside ``core``'s ledger, in its database.
    """
    metrics = metrics or GatewayMetrics()
    metrics.known_nodes(core.fanout.links)
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[MalformedRequestsAio()])
    servicer = GatewayServicer(
        core, verifier, dry_runner, metrics=metrics, followups=followups or FollowUps(core)
    )
    pb_gateway_grpc.add_GatewayServiceServicer_to_server(servicer, server)
    health = serving_health_aio(
        await add_health_and_reflection_aio(server, [SERVICE_NAME]),
        [SERVICE_NAME],
        asyncio.get_running_loop(),
        {"gateway_id": core.gateway_id},
    )
    # Told from the ledger's writer or watchdog thread: a gateway that cannot
    # log cannot ask, and load balancers should hear so.
    core.ledger.on_health_change = lambda ok: health.set("ledger", ok)
    if not core.ledger.healthy:
        # It failed before anyone was listening: say so now.
        health.set("ledger", False)
    core.ledger.on_append = metrics.ledger_append.observe
    try:
        port = bind(server, listen, tls)
    except BaseException:
        await server.stop(None)
        raise
    await server.start()
    return ServedGateway(server, port, health, metrics)


async def _serve(
    config: GatewayConfig, port_file: Path | None, metrics_port_file: Path | None
) -> None:
    async with AsyncExitStack() as stack:
        core, verifier = build_gateway(config)
        stack.push_async_callback(core.close)
        metrics = GatewayMetrics()
        # Synchronous callbacks of a sync ExitStack, closed by the async one.
        sync = stack.enter_context(ExitStack())
        metrics_fields = start_metrics(
            sync, metrics.registry, config.metrics_listen, metrics_port_file
        )
        shutdown = Shutdown().install_aio(asyncio.get_running_loop())
        served = await serve_gateway(core, verifier, config.listen, config.tls, metrics=metrics)
        stack.push_async_callback(served.server.stop, 5)
        host = host_of(config.listen)
        write_port_file(port_file, host, served.port)
        log.info(
            "gateway serving",
            extra={
                "gateway_id": core.gateway_id,
                "address": f"{host}:{served.port}",
                "nodes": sorted(core.fanout.links),
                **metrics_fields,
            },
        )
        await asyncio.to_thread(shutdown.requested.wait)
        log.info(
            "gateway stopping", extra={"gateway_id": core.gateway_id, "drain_s": config.drain_s}
        )
        served.health.drain()
        # Still answering: a load balancer that saw NOT_SERVING moves away meanwhile.
        await asyncio.to_thread(shutdown.hurried.wait, config.drain_s)


def serve(
    config_path: Path, port_file: Path | None = None, metrics_port_file: Path | None = None
) -> None:
    """Run a gateway until SIGTERM or SIGINT, then drain for ``drain_s`` and stop.

    Whatever started is closed again, in reverse order, also when starting
    fails half-way (a port in use).
    """
    capture_native_stderr()
    config = load_gateway_config(config_path)
    asyncio.run(_serve(config, port_file, metrics_port_file))
