"""A duty officer's side of the console, beside a node: inbox, policy, health.

Nothing here decides anything. The inbox pages go through the node's
InboxService with the signed-in officer's own token (``liaison.inbox_client``,
as `liaison node inbox` / `liaison node decide` do), so the node checks the
officer, bounds the decision by its policy, signs it and receipts it. The
policy page reads the node's policy file with the policy package's own
loader and explains hypothetical requests with ``policies.analysis.explain``
(as `liaison policy explain`).

The console holds none of the node's secrets and writes none of its state: it
reads only the parts of the node's config it needs (id, policy file, inbox,
CA), never the signing key, the database password or the receipts ledger. So
the health page shows what can be learnt without them (the inbox's gRPC
health and counts, the config and policy files parse) and says that the rest
is `liaison node check` on the node's host.

Config (``[console.node]`` of the console's config file)::

    node_config = "../nodes/freedonia/node.toml"   # the node's own config
    inbox = "127.0.0.1:50071"    # optional: default, the address the node publishes
    ca = "../pki/ca.pem"         # optional: default, the node's [tls] client_ca
    role = "duty-officer"        # optional: the role that opens these pages
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from liaison.catalog import CATALOG_V1
from liaison.cli.inbox import due, when
from liaison.config import INBOX_ADDRESS_FILE, TableReader, read_toml
from liaison.console.officer_views import (
    OPERATIONS,
    checked_id,
    choices_from_form,
    decision_view,
    explain_from_form,
    field_rows,
    now_ms,
    releasable_fields,
    rule_lines,
)
from liaison.console.oidc import SignedIn
from liaison.console.web import (
    Console,
    Side,
    action,
    keep,
    kept_or_404,
    see_other,
    view,
)
from liaison.envelope import Envelope
from liaison.errors import ConfigError, LiaisonError, StateUnavailable
from liaison.followups import InboxItem
from liaison.handling import MEANINGS, describe
from liaison.inbox_client import Inbox
from liaison.inbox_client import health as inbox_health
from liaison.messages import document_sha256
from policies.load import load_policy_and_text
from policies.model import Effect, Policy

DEFAULT_ROLE = "duty-officer"
# The inbox's gRPC service, as the node registers it with its health service.
# Decided requests and hit notices shown on the inbox page (the newest).
RECENT = 20
# What `liaison node check` checks that this console cannot: each needs a secret
# of the node's or write access to its state, which the console must not hold.
NOT_CHECKED = (
    ("signing key", "the node's private signing key"),
    ("transform key", "the node's secret for keyed-hash transforms"),
    ("TLS", "the node's certificate and private key"),
    ("database", "the agency database, with the node's credentials (read-only session)"),
    ("mapping", "the node's tables and columns against the catalog"),
    ("state folder", "that the node can write its state folder"),
    ("receipts ledger", "that the node can write its receipts ledger"),
    ("trusted gateways", "the gateways' public keys the node trusts"),
)


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """Where the node's config and inbox are, as ``[console.node]`` says."""

    node_config: Path
    inbox: str | None
    ca: Path | None


def settings(table: TableReader) -> tuple[NodeSettings, str]:
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


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """The parts of the node's config the console reads; no key, password or ledger."""

    path: Path
    node_id: str
    policy: Path
    state_dir: Path
    serves_inbox: bool
    client_ca: Path | None


def _table(doc: dict[str, Any], key: str, path: Path) -> dict[str, Any] | None:
    table = doc.get(key)
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{key}] must be a table")
    return table


def read_node_facts(path: Path) -> NodeFacts:
    """What the console needs of the node's config, read without loading the rest.

    Not ``load_node_config``: that reads the database password (from its file
    or the environment), which the console has no business holding.
    """
    path = path.resolve()
    doc = read_toml(path)
    node = _table(doc, "node", path)
    if node is None:
        raise ConfigError(f"{path}: no [node] table; is this the node's config file?")
    r = TableReader(node, f"{path} [node]", path.parent)
    tls = _table(doc, "tls", path)
    client_ca = None
    if tls is not None and "client_ca" in tls:
        client_ca = TableReader(tls, f"{path} [tls]", path.parent).path("client_ca")
    return NodeFacts(
        path=path,
        node_id=r.text("id"),
        policy=r.path("policy"),
        state_dir=r.path("state_dir", "state"),
        serves_inbox=_table(doc, "inbox", path) is not None,
        client_ca=client_ca,
    )


@dataclass(frozen=True, slots=True)
class PolicyFile:
    """The node's policy file as it is on disk now (the node may run an older one)."""

    path: Path
    policy: Policy | None
    sha256: str
    modified: str
    problem: str

    @property
    def summary(self) -> str:
        if self.policy is None:
            return ""
        return f"{len(self.policy.rules)} rule(s), loads against the catalog"


def read_policy_file(path: Path) -> PolicyFile:
    """The policy file, its SHA-256 (as the node logs it) and mtime; never raises."""
    try:
        modified = when(int(os.stat(path).st_mtime * 1000))
    except OSError as exc:
        why = f"cannot read the policy file {path} ({exc.strerror}); check it on the node's host"
        return PolicyFile(path, None, "", "", why)
    try:
        policy, text = load_policy_and_text(path, CATALOG_V1)
    except LiaisonError as exc:
        return PolicyFile(path, None, "", modified, f"{exc} (see `liaison policy check`)")
    return PolicyFile(path, policy, document_sha256(text), modified, "")


class NodeSide:
    """The node as the console sees it: a few facts of its config, and its inbox."""

    def __init__(self, s: NodeSettings) -> None:
        self.settings = s
        self.facts = read_node_facts(s.node_config)
        if not self.facts.serves_inbox and s.inbox is None:
            raise ConfigError(
                f"{s.node_config} serves no inbox: add an [inbox] table to the node's config "
                "(or set `inbox` in [console.node])"
            )

    @property
    def node_id(self) -> str:
        return self.facts.node_id

    @property
    def ca(self) -> Path | None:
        return self.settings.ca if self.settings.ca is not None else self.facts.client_ca

    def inbox_address(self) -> str:
        # Read every time: a restarted node publishes a new port.
        if self.settings.inbox is not None:
            return self.settings.inbox
        published = self.facts.state_dir / INBOX_ADDRESS_FILE
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

    def policy_file(self) -> PolicyFile:
        return read_policy_file(self.facts.policy)

    def policy(self) -> Policy:
        """The policy file, loaded; its error (what to fix) when it does not load."""
        policy, _text = load_policy_and_text(self.facts.policy, CATALOG_V1)
        return policy


# -- blocking work (run in the thread pool) -------------------------------------------


def _items(node: NodeSide, user: SignedIn) -> list[InboxItem]:
    with node.inbox(user) as inbox:
        return inbox.items(include_all=True)


def _item(node: NodeSide, user: SignedIn, item_id: str) -> tuple[InboxItem, PolicyFile]:
    with node.inbox(user) as inbox:
        return inbox.item(item_id), node.policy_file()


def _decide(
    node: NodeSide, user: SignedIn, item_id: str, form: FormData
) -> tuple[InboxItem, Envelope]:
    with node.inbox(user) as inbox:
        # The asked fields come from the node, never from the form.
        item = inbox.item(item_id)
        # "Release everything" means everything *this officer* may release: a
        # field only another role may release would make the node refuse the lot.
        releasable = releasable_fields(item, node.policy_file().policy, user.roles)
        choices, reason = choices_from_form(item, form, releasable)
        return item, inbox.decide(item_id, choices, reason)


def _line(name: str, ok: bool, detail: str) -> dict[str, str]:
    return {"name": name, "word": "ok" if ok else "problem", "detail": detail}


def _health(node: NodeSide, user: SignedIn) -> dict[str, Any]:
    """What the console can learn without the node's secrets; nothing is written."""
    lines: list[dict[str, str]] = []
    try:
        facts = read_node_facts(node.settings.node_config)
        lines.append(
            _line("node config", True, f"{facts.path}: node {facts.node_id!r}, parses as TOML")
        )
    except LiaisonError as exc:
        lines.append(_line("node config", False, str(exc)))
    policy = node.policy_file()
    if policy.policy is not None:
        detail = f"{policy.path}: {policy.summary}; SHA-256 {policy.sha256}"
        lines.append(_line("policy file", True, f"{detail}, modified {policy.modified}"))
    else:
        lines.append(_line("policy file", False, policy.problem))
    inbox: dict[str, Any] = {"address": "", "serving": False, "detail": ""}
    counts: dict[str, int] | None = None
    try:
        inbox["address"] = node.inbox_address()
        inbox["serving"], inbox["detail"] = inbox_health(inbox["address"], node.ca)
    except (LiaisonError, OSError) as exc:
        inbox["detail"] = str(exc)
    if inbox["serving"]:
        try:
            items = _items(node, user)
        except (LiaisonError, OSError) as exc:
            lines.append(_line("inbox listing", False, f"{exc}"))
        else:
            now = now_ms()
            pending = [i for i in items if i.kind == "follow-up" and i.status == "pending"]
            counts = {
                "pending": len(pending),
                "overdue": sum(1 for i in pending if i.overdue(now)),
                "hits": sum(1 for i in items if i.kind == "hit"),
            }
    return {"lines": lines, "inbox": inbox, "counts": counts, "policy": policy}


# -- the side ----------------------------------------------------------------------


def side(console: Console, table: TableReader) -> Side:
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
        item, policy = await run_in_threadpool(_item, node, user, item_id)
        # Without the policy file, the node's own bounds (decidable fields) still show.
        rows = field_rows(item, policy.policy, user.roles) if item.kind == "follow-up" else []
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
            policy_file=policy,
        )

    async def decide(request: Request, user: SignedIn, form: FormData) -> Response:
        item_id = checked_id(request.path_params["item_id"])
        item, envelope = await run_in_threadpool(_decide, node, user, item_id, form)
        key = keep(request, {"item_id": item.id, "decision": decision_view(envelope)})
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
        policy_file = await run_in_threadpool(node.policy_file)
        kinds = (
            ("Permits", Effect.PERMIT),
            ("Forbids", Effect.FORBID),
            ("Approve rules (follow-up requests)", Effect.APPROVE),
        )
        rules = sorted(policy_file.policy.rules, key=lambda r: r.id) if policy_file.policy else []
        groups = [(title, [r for r in rules if r.effect is e]) for title, e in kinds]
        return console.render(
            request,
            "officer_policy.html",
            title=f"Policy of {node.node_id}",
            policy=policy_file.policy,
            policy_file=policy_file,
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
        return see_other(f"/policy/explained/{keep(request, result)}")

    async def explained(request: Request, user: SignedIn) -> Response:
        return await _policy(request, kept_or_404(request, request.path_params["key"]))

    async def health_page(request: Request, user: SignedIn) -> Response:
        health = await run_in_threadpool(_health, node, user)
        lines = health["lines"]
        return console.render(
            request,
            "officer_health.html",
            title=f"Health of {node.node_id}",
            lines=lines,
            all_ok=all(c["word"] == "ok" for c in lines) and health["inbox"]["serving"],
            inbox=health["inbox"],
            counts=health["counts"],
            not_checked=NOT_CHECKED,
            node_config=str(node.facts.path),
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


__all__ = [
    "DEFAULT_ROLE",
    "NodeFacts",
    "NodeSettings",
    "NodeSide",
    "PolicyFile",
    "read_node_facts",
    "read_policy_file",
    "side",
]
