"""Building a node from its config and serving it over gRPC."""

from __future__ import annotations

import gc
import logging
import threading
import time
from concurrent import futures
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import sqlalchemy as sa

from liaison.catalog import CATALOG_V1, Catalog
from liaison.config import INBOX_ADDRESS_FILE, InboxConfig, NodeConfig, load_node_config
from liaison.errors import ConfigError, LiaisonError
from liaison.grpc_errors import MalformedRequests
from liaison.identity.verify import TokenVerifier
from liaison.keys import SigningKey, VerifyingKey
from liaison.ledger.log import Ledger
from liaison.ledger.logged import node_origin
from liaison.ledger.store import ledger_url
from liaison.logs import capture_native_stderr
from liaison.messages import document_sha256
from liaison.metrics import IndexState, NodeMetrics
from liaison.serving import (
    SERVER_OPTIONS,
    ServingHealth,
    Shutdown,
    add_health_and_reflection,
    bind,
    host_of,
    serving_health,
    start_metrics,
    write_port_file,
)
from liaison.tls import TlsFiles
from node.answering import NodeCore, NodeLimits, close_core
from node.database import bind_schema, open_read_only
from node.health import DatabaseProbe
from node.inbox_service import InboxServicer
from node.near import NearIndexes
from node.replay import private_dir, private_file
from node.service import NodeServicer
from node.transform_key import read_transform_key, require_if_used
from node.verify import GatewayIdentity, TrustedGateway
from policies.load import load_policy_and_text
from proto.liaison.v1 import followup_pb2 as pb_followup
from proto.liaison.v1 import followup_pb2_grpc as pb_followup_grpc
from proto.liaison.v1 import node_pb2 as pb_node
from proto.liaison.v1 import node_pb2_grpc as pb_node_grpc

log = logging.getLogger("liaison.node")
SERVICE_NAME = pb_node.DESCRIPTOR.services_by_name["NodeService"].full_name
INBOX_SERVICE_NAME = pb_followup.DESCRIPTOR.services_by_name["InboxService"].full_name


def build_node(config: NodeConfig, catalog: Catalog = CATALOG_V1) -> NodeCore:
    """Load keys, policy and schema; refuse to start on anything inconsistent."""
    signing_key = SigningKey.from_pem_file(config.signing_key)
    trusted = {}
    for gw in config.trusted_gateways:
        key = VerifyingKey.from_pem_file(gw.public_key)
        identity = None
        if gw.tls_spki_sha256 or gw.tls_san:
            identity = GatewayIdentity(frozenset(gw.tls_spki_sha256), frozenset(gw.tls_san))
        trusted[key.key_id] = TrustedGateway(gw.id, key, identity)
    policy, policy_document = load_policy_and_text(config.policy, catalog)
    secret = read_transform_key(config.transform_key)
    require_if_used(policy, secret)
    engine = open_read_only(config.database_url)
    try:
        schema = bind_schema(engine, config.datasets, catalog)
    except BaseException:
        engine.dispose()
        raise
    try:
        # The persisted PDQ index holds the agency's hashes: owner-only, as the rest.
        private_dir(config.state_dir)
        near = NearIndexes(
            engine, schema, refresh_s=config.pdq_refresh_s, state_dir=config.state_dir
        )
    except BaseException:
        engine.dispose()
        raise
    near.start()
    try:
        private_receipts(config.receipts, config.state_dir)
        receipts = Ledger.open(
            config.receipts,
            signing_key,
            node_origin(config.node_id),
            checkpoint_interval_s=config.checkpoint_interval_s,
            timeouts=config.ledger_timeouts,
        )
    except BaseException:
        near.close()
        engine.dispose()
        raise
    try:
        return NodeCore(
            node_id=config.node_id,
            signing_key=signing_key,
            trusted=trusted,
            policy=policy,
            catalog=catalog,
            engine=engine,
            schema=schema,
            receipts=receipts,
            limits=NodeLimits(config.max_request_age_s, config.clock_skew_s, config.default_limit),
            state_dir=config.state_dir,
            transform_secret=secret,
            policy_document=policy_document,
            near=near,
        )
    except BaseException:
        receipts.close()
        near.close()
        engine.dispose()
        raise


def private_receipts(location: str, state_dir: Path) -> None:
    """Make a SQLite receipts ledger owner-only (0600) before it opens.

    It keeps the node's replay records, which hold the answers released in
    the last minutes, and its rate usage (who asked how much): as private as
    the rest of the node's state. Its -wal and -shm take the file's mode. A
    ledger in the state folder makes that folder owner-only too.
    """
    url = sa.make_url(ledger_url(location))
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return
    path = Path(url.database or "")
    if path.parent.resolve() == state_dir.resolve():
        private_dir(path.parent)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    private_file(path)


@dataclass
class ServedNode:
    server: grpc.Server
    port: int
    servicer: NodeServicer
    health: ServingHealth
    metrics: NodeMetrics


def start_node_server(
    core: NodeCore,
    listen: str,
    workers: int = 16,
    tls: TlsFiles | None = None,
    *,
    metrics: NodeMetrics | None = None,
) -> tuple[grpc.Server, int]:
    """As :func:`serve_node`, returning only the server and its port."""
    served = serve_node(core, listen, workers, tls, metrics=metrics)
    return served.server, served.port


def serve_node(
    core: NodeCore,
    listen: str,
    workers: int = 16,
    tls: TlsFiles | None = None,
    *,
    metrics: NodeMetrics | None = None,
) -> ServedNode:
    """Serve ``core``; with ``tls``, only its trusted gateways' certificates get answers.

    Health says SERVING while the receipts ledger can be written.

    Without TLS a node cannot tell who is on the line: anyone who can reach
    ``listen`` and holds a request addressed to it within its validity can
    have it answered. That is for loopback development only, and is logged.
    """
    unbound = sorted(g.gateway_id for g in core.trusted.values() if g.identity is None)
    if tls is not None and unbound:
        raise ConfigError(
            f"node {core.node_id} serves TLS but does not know the TLS identity of gateway(s) "
            f"{', '.join(unbound)}; set tls_spki_sha256 or tls_san in their [[trusted_gateway]]"
        )
    if tls is None and len(unbound) != len(core.trusted):
        raise ConfigError(
            f"node {core.node_id} names gateway TLS identities but serves without TLS, so it "
            "could not check them; add [tls] with client_ca"
        )
    if tls is None:
        log.warning(
            "node serving WITHOUT TLS: it cannot tell which gateway is on the line, and any "
            "process that reaches this address with a captured request can have it answered; "
            "use only on loopback for development",
            extra={"node_id": core.node_id, "listen": listen},
        )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="node"),
        options=SERVER_OPTIONS,
        interceptors=[MalformedRequests()],
    )
    metrics = metrics or NodeMetrics()
    servicer = NodeServicer(core, metrics)
    pb_node_grpc.add_NodeServiceServicer_to_server(servicer, server)
    health = serving_health(
        add_health_and_reflection(server, [SERVICE_NAME]), [SERVICE_NAME], {"node_id": core.node_id}
    )
    # A node that cannot write receipts answers nothing: health says so.
    core.receipts.on_health_change = lambda ok: health.set("receipts ledger", ok)
    if not core.receipts.healthy:
        health.set("receipts ledger", False)
    core.receipts.on_append = metrics.receipts_append.observe
    near = core.near
    if near is not None:
        metrics.watch_indexes(
            lambda: [IndexState(c.dataset, c.field, size, at) for c, size, at in near.in_use()]
        )
    try:
        port = bind(server, listen, tls)
    except BaseException:
        server.stop(None)
        raise
    server.start()
    return ServedNode(server, port, servicer, health, metrics)


def serve_inbox(
    core: NodeCore, inbox: InboxConfig, tls: TlsFiles | None = None, workers: int = 4
) -> tuple[grpc.Server, int]:
    """Serve the duty officers' inbox on a port of its own.

    With the node's TLS files it serves TLS with the node's certificate, but
    asks no client certificate: officers prove who they are with a token from
    the agency's identity provider, which every call must carry.
    """
    verifier = TokenVerifier(
        inbox.issuers, inbox.audience, logger=log, party=f"node {core.node_id}'s inbox"
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inbox"),
        options=SERVER_OPTIONS,
        interceptors=[MalformedRequests()],
    )
    pb_followup_grpc.add_InboxServiceServicer_to_server(
        InboxServicer(core.followups, verifier), server
    )
    add_health_and_reflection(server, [INBOX_SERVICE_NAME])
    server_tls = None if tls is None else TlsFiles(tls.certificate, tls.private_key, None)
    if server_tls is None:
        log.warning(
            "inbox serving WITHOUT TLS: duty officers' tokens and the requests they read cross "
            "the network in clear; use only on loopback for development",
            extra={"node_id": core.node_id, "listen": inbox.listen},
        )
    try:
        port = bind(server, inbox.listen, server_tls)
    except BaseException:
        server.stop(None)
        raise
    server.start()
    return server, port


# How often pending follow-up requests are looked at for reminders.
REMINDER_INTERVAL_S = 30.0


class Reminders(threading.Thread):
    """Logs a warning when a pending follow-up request is nearly due, and when it is overdue."""

    def __init__(self, core: NodeCore, interval_s: float) -> None:
        super().__init__(name="follow-up-reminders", daemon=True)
        self.core = core
        self.interval_s = interval_s
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                self.core.followups.remind(time.time_ns() // 1_000_000)
            except LiaisonError as exc:
                # The inbox cannot be read now; the next turn tries again.
                log.warning("follow-up reminders skipped", extra={"error": str(exc)})

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=5)


def serve(
    config_path: Path, port_file: Path | None = None, metrics_port_file: Path | None = None
) -> None:
    """Run a node until SIGTERM or SIGINT, then drain for ``drain_s`` and stop.

    While draining, health says NOT_SERVING and calls are still answered, so
    a load balancer has time to move away before the port closes. Whatever
    started is closed again, in reverse order, also when starting fails
    half-way (a port in use).
    """
    capture_native_stderr()
    config = load_node_config(config_path, CATALOG_V1)
    with ExitStack() as stack:
        core = build_node(config)
        stack.callback(close_core, core)
        metrics = NodeMetrics()
        metrics_fields = start_metrics(
            stack, metrics.registry, config.metrics_listen, metrics_port_file
        )
        shutdown = Shutdown().install()
        served = serve_node(core, config.listen, tls=config.tls, metrics=metrics)
        probe = DatabaseProbe(
            core.engine.url,
            [mapped.table for _, mapped in sorted(core.schema.items())],
            lambda ok: served.health.set("database", ok),
        )
        stack.callback(probe.close)
        # Registered last, so run first: calls in flight finish before the rest closes.
        stack.callback(lambda: served.server.stop(grace=5).wait())
        served.servicer.on_database_error = probe.kick
        probe.start()
        inbox_fields: dict[str, str] = {}
        if config.inbox is not None:
            inbox_server, inbox_port = serve_inbox(core, config.inbox, config.tls)
            stack.callback(lambda: inbox_server.stop(grace=2).wait())
            inbox_address = f"{host_of(config.inbox.listen)}:{inbox_port}"
            write_port_file(
                config.state_dir / INBOX_ADDRESS_FILE, host_of(config.inbox.listen), inbox_port
            )
            inbox_fields["inbox"] = inbox_address
            reminders = Reminders(core, REMINDER_INTERVAL_S)
            reminders.start()
            stack.callback(reminders.stop)
        # Everything loaded so far lives as long as the process: leave it out
        # of the collector's full passes, which would otherwise walk it again
        # and again while queries are answered.
        gc.collect()
        gc.freeze()
        host = host_of(config.listen)
        write_port_file(port_file, host, served.port)
        log.info(
            "node serving",
            extra={
                "node_id": core.node_id,
                "address": f"{host}:{served.port}",
                "key_id": core.signing_key.key_id,
                "policy_sha256": document_sha256(core.policy_document),
                **metrics_fields,
                **inbox_fields,
            },
        )
        shutdown.wait_requested()
        log.info("node stopping", extra={"node_id": core.node_id, "drain_s": config.drain_s})
        served.health.drain()
        shutdown.wait_hurried(config.drain_s)
