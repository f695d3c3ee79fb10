"""Dry runs: decide a search against each node's published policy, asking no node's data.

Each node publishes its policy document signed with its own key. The gateway
fetches it (all target nodes at once, under the search's deadline), verifies
it under *that* node's pinned key exactly as it verifies answers, parses it
against the federation catalog and runs the same policy engine the node runs.
Verified policies are kept for a short while, so a burst of dry runs costs
each node one fetch.

A dry run is advice, never a grant: the node's own decision on the real query
is final, and it can still deny what its policy alone would permit (rate
limits, the differencing guard, a dataset it does not map).
"""

from __future__ import annotations

import asyncio
import logging
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass

from gateway.search import CheckedSearch, GatewayCore
from liaison.catalog import Catalog
from liaison.envelope import POLICY_TYPE, Envelope, open_envelope
from liaison.errors import (
    BadSignature,
    EnvelopeError,
    LiaisonError,
    MalformedMessage,
    PolicyTimedOut,
    PolicyUnavailable,
)
from liaison.keys import VerifyingKey
from liaison.messages import (
    Decision,
    DryRunNodeResult,
    DryRunResult,
    PublishedPolicy,
    Requester,
    SearchInput,
    document_sha256,
)
from liaison.wire import published_policy_from_bytes
from policies import Policy, decide, parse_policy

log = logging.getLogger("liaison.gateway")

# How long a verified policy is used before it is fetched again.
POLICY_TTL_S = 60.0


@dataclass(frozen=True, slots=True)
class NodePolicy:
    """A node's verified published policy: parsed, or why it does not parse here."""

    node_id: str
    sha256: str
    policy: Policy | None
    detail: str = ""


def verify_policy(
    envelope: Envelope, *, node_id: str, node_key: VerifyingKey, catalog: Catalog
) -> NodePolicy:
    """Verify a node's signed PublishedPolicy and parse its document.

    Raises ``EnvelopeError`` (``BadSignature``) when the envelope is not that
    node's signed policy. A verified policy that does not parse against
    ``catalog`` is returned without a policy and with the reason.
    """
    payload = open_envelope(envelope, POLICY_TYPE, {node_key.key_id: node_key})
    try:
        published = published_policy_from_bytes(payload)
    except MalformedMessage as exc:
        raise EnvelopeError(f"node {node_id} signed a payload that is not a policy") from exc
    if published.node_id != node_id:
        raise BadSignature(f"policy from {node_id} claims to come from {published.node_id!r}")
    digest = document_sha256(published.document)
    if published.document_sha256 != digest:
        raise BadSignature(
            f"policy from {node_id} names digest {published.document_sha256[:16]!r}…, "
            f"but its document hashes to {digest[:16]!r}…"
        )
    return NodePolicy(node_id, digest, *_parse(published, catalog))


def _parse(published: PublishedPolicy, catalog: Catalog) -> tuple[Policy | None, str]:
    if published.catalog_version != catalog.version:
        return None, (
            f"node {published.node_id} publishes a policy for catalog "
            f"{published.catalog_version!r}; this gateway speaks {catalog.version!r}"
        )
    try:
        return parse_policy(tomllib.loads(published.document), catalog), ""
    except (tomllib.TOMLDecodeError, LiaisonError) as exc:
        return None, f"node {published.node_id}'s published policy does not load here: {exc}"


@dataclass(frozen=True, slots=True)
class _Cached:
    policy: NodePolicy
    until: float


class PublishedPolicies:
    """Each node's verified policy, kept for ``ttl_s`` seconds of ``clock``.

    Only verified policies are kept; a failed fetch or a rejected envelope is
    tried again on the next dry run.
    """

    def __init__(
        self,
        core: GatewayCore,
        *,
        ttl_s: float = POLICY_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = core
        self.ttl_s = ttl_s
        self.clock = clock
        self._cache: dict[str, _Cached] = {}

    async def get(self, node_id: str, until: float) -> NodePolicy:
        """The policy of ``node_id``, fetched if not cached; ``until`` is a monotonic deadline.

        Raises ``PolicyUnavailable`` or ``EnvelopeError``.
        """
        cached = self._cache.get(node_id)
        if cached is not None and self.clock() < cached.until:
            return cached.policy
        envelope = await self.core.fanout.policy(node_id, until)
        link = self.core.fanout.links[node_id]
        policy = verify_policy(
            envelope, node_id=node_id, node_key=link.key, catalog=self.core.catalog
        )
        self._cache[node_id] = _Cached(policy, self.clock() + self.ttl_s)
        return policy


class DryRunner:
    """Decides a search against every target node's published policy."""

    def __init__(self, core: GatewayCore, *, policies: PublishedPolicies | None = None) -> None:
        self.core = core
        self.policies = policies or PublishedPolicies(core)

    async def run(self, requester: Requester, search: SearchInput) -> DryRunResult:
        """Validate ``search`` as a search would be, then decide it at each node's policy."""
        checked = self.core.check_search(search)
        until = time.monotonic() + checked.deadline_ms / 1000
        results = tuple(
            await asyncio.gather(
                *(self._one(node_id, requester, checked, until) for node_id in checked.targets)
            )
        )
        log.info(
            "dry run",
            extra={
                "agency": requester.agency,
                "subject": requester.subject,
                "purpose": checked.purpose,
                "dataset": checked.query.dataset,
                "operation": checked.query.operation.value,
                "outcome": {r.node_id: _outcome(r) for r in results},
            },
        )
        return DryRunResult(checked.query, results)

    async def _one(
        self, node_id: str, requester: Requester, checked: CheckedSearch, until: float
    ) -> DryRunNodeResult:
        try:
            published = await self.policies.get(node_id, until)
        except PolicyTimedOut:
            detail = f"no policy within the {checked.deadline_ms} ms deadline"
            return DryRunNodeResult(node_id, None, detail=detail)
        except PolicyUnavailable as exc:
            return DryRunNodeResult(node_id, None, detail=str(exc))
        except EnvelopeError as exc:
            log.warning("policy discarded", extra={"node_id": node_id, "error": str(exc)})
            return DryRunNodeResult(node_id, None, detail=f"policy discarded: {exc}")
        if published.policy is None:
            return DryRunNodeResult(node_id, None, published.sha256, published.detail)
        decision = decide(
            published.policy,
            requester,
            checked.purpose,
            checked.query,
            case_ref=checked.case_ref,
            legal_basis=checked.legal_basis,
        )
        return DryRunNodeResult(
            node_id,
            Decision(
                decision.permitted,
                decision.rules,
                decision.reason,
                decision.obligations,
                decision.explanation,
            ),
            published.sha256,
        )


def _outcome(result: DryRunNodeResult) -> str:
    if result.decision is None:
        return "unknown"
    return "permitted" if result.decision.permitted else "denied"
