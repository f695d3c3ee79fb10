"""Building a gateway from its config and serving it with grpc.aio."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from gateway.auth import TokenVerifier
from gateway.dryrun import DryRunner
from gateway.fanout import FanOut, NodeLink
from gateway.search import GatewayCore
from gateway.service import GatewayServicer
from liaison.catalog import CATALOG_V1, Catalog
from liaison.config import GatewayConfig, load_gateway_config
from liaison.errors import ConfigError
from liaison.grpc_errors import MalformedRequestsAio
from liaison.keys import SigningKey, VerifyingKey
from liaison.ledger.entries import AuditKey
from liaison.ledger.log import Ledger
from liaison.ledger.logged import gateway_origin
from liaison.serving import (
    SERVER_OPTIONS,
    add_health_and_reflection_aio,
    bind,
    host_of,
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


async def start_gateway_server(
    core: GatewayCore,
    verifier: TokenVerifier,
    listen: str,
    tls: TlsFiles | None = None,
    *,
    dry_runner: DryRunner | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Serve ``core``; ``dry_runner`` defaults to one caching policies for a minute."""
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[MalformedRequestsAio()])
    servicer = GatewayServicer(core, verifier, dry_runner)
    pb_gateway_grpc.add_GatewayServiceServicer_to_server(servicer, server)
    health = await add_health_and_reflection_aio(server, [SERVICE_NAME])
    loop = asyncio.get_running_loop()

    def ledger_health(healthy: bool) -> None:
        # Called from the ledger's writer or watchdog thread: a gateway that
        # cannot log cannot ask, and load balancers should hear so.
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if healthy
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in (SERVICE_NAME, ""):
            asyncio.run_coroutine_threadsafe(health.set(name, status), loop)

    core.ledger.on_health_change = ledger_health
    if not core.ledger.healthy:
        # It failed before anyone was listening: say so now.
        ledger_health(False)
    port = bind(server, listen, tls)
    await server.start()
    return server, port


async def _serve(config: GatewayConfig, port_file: Path | None) -> None:
    core, verifier = build_gateway(config)
    server, port = await start_gateway_server(core, verifier, config.listen, config.tls)
    host = host_of(config.listen)
    write_port_file(port_file, host, port)
    log.info(
        "gateway serving",
        extra={
            "gateway_id": core.gateway_id,
            "address": f"{host}:{port}",
            "nodes": sorted(core.fanout.links),
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("gateway stopping", extra={"gateway_id": core.gateway_id})
    await server.stop(grace=5)
    await core.close()


def serve(config_path: Path, port_file: Path | None = None) -> None:
    """Run a gateway until SIGTERM or SIGINT."""
    config = load_gateway_config(config_path)
    asyncio.run(_serve(config, port_file))
