"""A duty officer's side of the console, beside a node: inbox, policy, health.

Nothing here decides anything. The inbox pages go through the node's
InboxService with the signed-in officer's own token (``liaison.inbox_client``,
as `liaison node inbox` / `liaison node decide` do), so the node checks the
officer, bounds the decision by its policy, signs it and receipts it. The
policy page reads the node's policy file with the policy package's own
loader and explains hypothetical requests with ``policies.analysis.explain``
(as `liaison policy explain`); the health page runs `liaison node check`'s
checks and asks the inbox's gRPC health service.

Config (``[console.node]`` of the console's config file)::

    node_config = "../nodes/freedonia/node.toml"   # the node's own config
    inbox = "127.0.0.1:50071"    # optional: default, the address the node publishes
    ca = "../pki/ca.pem"         # optional: default, the node's [tls] client_ca
    role = "duty-officer"        # optional: the role that opens these pages
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from liaison.catalog import CATALOG_V1
from liaison.cli.inbox import due, when
from liaison.client import channel
from liaison.config import INBOX_ADDRESS_FILE, NodeConfig, _Reader, load_node_config
from liaison.console.officer_views import (
    OPERATIONS,
    check_rows,
    checked_id,
    choices_from_form,
    decision_view,
    explain_from_form,
    field_rows,
    now_ms,
    rule_lines,
)
from liaison.console.oidc import SignedIn
from liaison.console.web import (
    Console,
    Side,
    action,
    kept_or_404,
    see_other,
    session_of,
    view,
)
from liaison.envelope import Envelope
from liaison.errors import (
    ConfigError,
    LiaisonError,
    StateUnavailable,
)
from liaison.followups import InboxItem
from liaison.handling import MEANINGS, describe
from liaison.inbox_client import Inbox
from node.check import check_node
from policies import load_policy
from policies.model import (
    Effect,
    Policy,
)

DEFAULT_ROLE = "duty-officer"
# The inbox's gRPC service, as the node registers it with its health service.
INBOX_SERVICE = "liaison.v1.InboxService"
HEALTH_TIMEOUT_S = 3.0
# Decided requests and hit notices shown on the inbox page (the newest).
RECENT = 20


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """Where the node's config and inbox are, as ``[console.node]`` says."""

    node_config: Path
    inbox: str | None
    ca: Path | None


def settings(table: _Reader) -> tuple[NodeSettings, str]:
    """``[console.node]``, checked: the settings and the role that opens the pages."""
    table.check_keys({"node_config", "inbox", "ca", "role"})
    inbox = table.text("inbox") if "inbox" in table.table else None
    if inbox is not None and (":" not in inbox or not inbox.rpartition(":")[2].isdigit()):
        raise ConfigError(f"{table.where}: `inbox` must be HOST:PORT")
    ca = table.path("ca") if "ca" in table.table else None
    return (
        NodeSettings(node_config=table.path("node_config"), inbox=inbox, ca=ca),
        table.text("role", DEFAULT_ROLE),
    )


class NodeSide:
    """The node as the console sees it: its config (loaded once) and its inbox."""

    def __init__(self, s: NodeSettings) -> None:
        self.settings = s
        self.config: NodeConfig = load_node_config(s.node_config, CATALOG_V1)
        if self.config.inbox is None and s.inbox is None:
            raise ConfigError(
                f"{s.node_config} serves no inbox: add an [inbox] table to the node's config "
                "(or set `inbox` in [console.node])"
            )

    @property
    def node_id(self) -> str:
        return self.config.node_id

    @property
    def ca(self) -> Path | None:
        if self.settings.ca is not None:
            return self.settings.ca
        return self.config.tls.ca if self.config.tls is not None else None

    def inbox_address(self) -> str:
        # Read every time: a restarted node publishes a new port.
        if self.settings.inbox is not None:
            return self.settings.inbox
        published = self.config.state_dir / INBOX_ADDRESS_FILE
        try:
            address = published.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise StateUnavailable(
                f"node {self.node_id} has not published its inbox address ({published}): is it "
                "running? Or set `inbox` in [console.node]"
            ) from exc
        if not address:
            raise StateUnavailable(f"{published} is empty: is node {self.node_id} starting?")
        return address

    def inbox(self, user: SignedIn) -> Inbox:
        return Inbox(self.inbox_address(), user.access_token, self.ca)

    def policy(self) -> Policy:
        return load_policy(self.config.policy, CATALOG_V1)


# -- blocking work (run in the thread pool) -------------------------------------------


def _items(node: NodeSide, user: SignedIn) -> list[InboxItem]:
    with node.inbox(user) as inbox:
        return inbox.items(include_all=True)


def _item(node: NodeSide, user: SignedIn, item_id: str) -> InboxItem:
    with node.inbox(user) as inbox:
        return inbox.item(item_id)


def _decide(
    node: NodeSide, user: SignedIn, item_id: str, form: FormData
) -> tuple[InboxItem, Envelope]:
    with node.inbox(user) as inbox:
        # The asked fields come from the node, never from the form.
        item = inbox.item(item_id)
        choices, reason = choices_from_form(item, form)
        return item, inbox.decide(item_id, choices, reason)


def _health(node: NodeSide, user: SignedIn) -> dict[str, Any]:
    checks = check_node(node.settings.node_config, CATALOG_V1)
    inbox: dict[str, Any] = {"address": "", "serving": False, "detail": ""}
    counts: dict[str, int] | None = None
    try:
        address = node.inbox_address()
        inbox["address"] = address
        inbox["serving"], inbox["detail"] = _inbox_health(address, node.ca)
        if inbox["serving"]:
            items = _items(node, user)
            now = now_ms()
            pending = [i for i in items if i.kind == "follow-up" and i.status == "pending"]
            counts = {
                "pending": len(pending),
                "overdue": sum(1 for i in pending if i.overdue(now)),
                "hits": sum(1 for i in items if i.kind == "hit"),
            }
    except StateUnavailable as exc:
        inbox["detail"] = str(exc)
    return {"checks": checks, "inbox": inbox, "counts": counts}


def _inbox_health(address: str, ca: Path | None) -> tuple[bool, str]:
    ch = channel(address, ca)
    try:
        stub = health_pb2_grpc.HealthStub(ch)
        reply = stub.Check(
            health_pb2.HealthCheckRequest(service=INBOX_SERVICE), timeout=HEALTH_TIMEOUT_S
        )
    except grpc.RpcError as exc:
        return False, f"not answering ({exc.code().name}): is the node running?"
    finally:
        ch.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


# -- the side ----------------------------------------------------------------------


def side(console: Console, table: _Reader) -> Side:
    """The duty officers' pages of the node that ``[console.node]`` names."""
    s, role = settings(table)
    node = NodeSide(s)
    officer = Side(
        name="node",
        title=f"Duty officer · {node.node_id}",
        role=role,
        home="/inbox",
        routes=[],
        nav=[("/inbox", "Inbox"), ("/policy", "Policy"), ("/health", "Health")],
        # Only the node's own agency's officers: another agency's token opens nothing here.
        agencies=frozenset({node.node_id}),
    )

    async def inbox_page(request: Request, user: SignedIn) -> Response:
        items = await run_in_threadpool(_items, node, user)
        now = now_ms()
        pending = [i for i in items if i.kind == "follow-up" and i.status == "pending"]
        # Overdue first, then the soonest due.
        pending.sort(key=lambda i: (not i.overdue(now), i.answer_by_ms or 2**62))
        decided = [i for i in items if i.kind == "follow-up" and i.status != "pending"]
        decided.sort(key=lambda i: -i.received_at_ms)
        hits = sorted((i for i in items if i.kind == "hit"), key=lambda i: -i.received_at_ms)
        return console.render(
            request,
            "officer_inbox.html",
            title=f"Inbox of {node.node_id}",
            pending=pending,
            decided=decided[:RECENT],
            hits=hits[:RECENT],
            overdue=sum(1 for i in pending if i.overdue(now)),
            now=now,
            due=due,
            when=when,
        )

    async def item_page(request: Request, user: SignedIn) -> Response:
        item_id = checked_id(request.path_params["item_id"])
        item = await run_in_threadpool(_item, node, user, item_id)
        try:
            policy: Policy | None = await run_in_threadpool(node.policy)
        except LiaisonError:  # unreadable now: the node's own bounds still show
            policy = None
        rows = field_rows(item, policy, user.roles) if item.kind == "follow-up" else []
        may_decide = bool(set(item.officer_roles) & set(user.roles))
        return console.render(
            request,
            "officer_item.html",
            title=("Follow-up request" if item.kind == "follow-up" else "Hit notice"),
            item=item,
            rows=rows,
            may_decide=may_decide,
            overdue=item.overdue(now_ms()),
            due=due(item, now_ms()),
            when=when,
            decision=decision_view(item.decision) if item.decision is not None else None,
            codes=[(c.value, m) for c, m in MEANINGS.items()],
            describe=describe,
        )

    async def decide(request: Request, user: SignedIn, form: FormData) -> Response:
        item_id = checked_id(request.path_params["item_id"])
        item, envelope = await run_in_threadpool(_decide, node, user, item_id, form)
        session = session_of(request)
        assert session is not None  # checked_form saw it
        key = session.keep({"item_id": item.id, "decision": decision_view(envelope)})
        return see_other(f"/inbox/decided/{key}")

    async def decided(request: Request, user: SignedIn) -> Response:
        kept = kept_or_404(request, request.path_params["key"])
        return console.render(
            request,
            "officer_decided.html",
            title="Decision signed",
            item_id=kept["item_id"],
            decision=kept["decision"],
        )

    async def policy_page(request: Request, user: SignedIn) -> Response:
        return await _policy(request, None)

    async def _policy(request: Request, result: dict[str, Any] | None) -> Response:
        policy = await run_in_threadpool(node.policy)
        kinds = (
            ("Permits", Effect.PERMIT),
            ("Forbids", Effect.FORBID),
            ("Approve rules (follow-up requests)", Effect.APPROVE),
        )
        groups = [
            (title, [r for r in sorted(policy.rules, key=lambda r: r.id) if r.effect is e])
            for title, e in kinds
        ]
        return console.render(
            request,
            "officer_policy.html",
            title=f"Policy of {node.node_id}",
            policy=policy,
            policy_file=str(node.config.policy),
            groups=groups,
            rule_lines=rule_lines,
            result=result,
            purposes=CATALOG_V1.purposes,
            datasets=[d.name for d in CATALOG_V1.datasets],
            operations=list(OPERATIONS),
            values=result["form"] if result else {},
        )

    async def explain_action(request: Request, user: SignedIn, form: FormData) -> Response:
        policy = await run_in_threadpool(node.policy)
        result = explain_from_form(policy, form)
        result["form"] = {k: v for k, v in form.items() if k != "csrf" and isinstance(v, str)}
        session = session_of(request)
        assert session is not None
        return see_other(f"/policy/explained/{session.keep(result)}")

    async def explained(request: Request, user: SignedIn) -> Response:
        return await _policy(request, kept_or_404(request, request.path_params["key"]))

    async def health_page(request: Request, user: SignedIn) -> Response:
        health = await run_in_threadpool(_health, node, user)
        checks = check_rows(health["checks"])
        return console.render(
            request,
            "officer_health.html",
            title=f"Health of {node.node_id}",
            checks=checks,
            all_ok=all(c["ok"] == "yes" for c in checks) and health["inbox"]["serving"],
            inbox=health["inbox"],
            counts=health["counts"],
        )

    officer.routes.extend(
        [
            view("/inbox", officer, inbox_page),
            view("/inbox/item/{item_id}", officer, item_page),
            action("/inbox/item/{item_id}/decide", officer, decide),
            view("/inbox/decided/{key}", officer, decided),
            view("/policy", officer, policy_page),
            action("/policy/explain", officer, explain_action),
            view("/policy/explained/{key}", officer, explained),
            view("/health", officer, health_page),
        ]
    )
    return officer


__all__ = ["DEFAULT_ROLE", "NodeSettings", "side"]
