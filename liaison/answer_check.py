"""Checking, on the investigator's side, that every answer shown is what its node signed.

The gateway passes each node's signed answer through with its reduced answer
(``NodeResult.signed_answer``), and the request it signed and sent to the nodes
(``SearchResult.signed_request``). With the nodes' public keys that the
investigator holds *locally* (never keys the gateway hands out), this module
checks for every node that answered or denied:

1. the envelope verifies under that node's key (so the gateway cannot invent it);
2. it answers this node, this query id, and exactly the request the gateway
   returned: the node signs the SHA-256 of the request bytes, and that request
   is the query the investigator asked (so an answer to another question, or
   to another query id, cannot be swapped in);
3. the status, the answer digest and the answer shown are what the node
   signed, reduced to the query exactly as the gateway reduces it (so the
   gateway cannot flip a hit, change a count or drop a row).

4. the request is fresh: it was issued while this search was under way
   (between sending it and getting the reply, give or take the nodes' own
   clock skew), so the gateway cannot serve an earlier signed result, say
   last month's answer to the same question, without asking anyone.

What it cannot prove: that a node the gateway reports as timed out,
unreachable or failed did not answer. The gateway can withhold an answer; it
cannot turn one into another. Such nodes are reported as ``NOT_ANSWERED``.

    keys = load_node_keys(Path("federation"))
    sent = now_ms()
    result = client.search(address, token, search_input)
    check = check_answers(result, search_input, keys, window=SearchWindow(sent, now_ms()))
    for node in check.nodes:
        print(node)              # "sylvania: verified", "ruritania: FAILED: ..."
    check.raise_for_failures()   # AnswersNotVerified if any node FAILED
"""

from __future__ import annotations

import hashlib
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path

from liaison.catalog import CATALOG_V1, Catalog
from liaison.envelope import ANSWER_TYPE, REQUEST_TYPE, open_envelope
from liaison.errors import AnswersNotVerified, ConfigError, EnvelopeError, LiaisonError
from liaison.keys import VerifyingKey
from liaison.messages import (
    DEFAULT_CLOCK_SKEW_S,
    AnswerStatus,
    NodeResult,
    NodeStatus,
    QueryAnswer,
    QueryRequest,
    SearchInput,
    SearchResult,
)
from liaison.query import Query, validate_case_ref, validate_legal_basis, validate_query
from liaison.reduce import reduce_to_query
from liaison.wire import answer_from_bytes, request_from_bytes

# The statuses that carry a node's signed answer; any other status is the
# gateway's word alone.
_SIGNED_STATUSES = {
    NodeStatus.ANSWERED: AnswerStatus.ANSWERED,
    NodeStatus.DENIED: AnswerStatus.DENIED,
}

__all__ = [
    "CLOCK_SKEW_MS",
    "AnswerCheck",
    "AnswersNotVerified",  # lives in liaison.errors; re-exported for callers of this module
    "NodeCheck",
    "SearchWindow",
    "Verdict",
    "check_answers",
    "load_node_keys",
    "now_ms",
]

# How far the gateway's clock may be from the investigator's: the nodes' own
# default tolerance (``clock_skew_s``), so a request a node accepts as current
# is current here too.
CLOCK_SKEW_MS = DEFAULT_CLOCK_SKEW_S * 1000
# Without a window, the check is taken to run right after the reply: the
# search was sent at most this long before (client.search gives up after 30 s).
UNTIMED_SEARCH_MS = 60_000


def now_ms() -> int:
    """The wall clock in ms, as the gateway stamps ``issued_at_ms``."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class SearchWindow:
    """When the client sent a search and when the reply came back (wall clock, ms).

    A signed request issued outside it (beyond ``skew_ms`` either side) is an
    earlier result served again, or one from a clock too far off to tell.
    """

    sent_at_ms: int
    received_at_ms: int
    skew_ms: int = CLOCK_SKEW_MS

    @classmethod
    def ending_now(cls, longest_ms: int = UNTIMED_SEARCH_MS) -> SearchWindow:
        """For a caller that did not time its search and checks as soon as it returned."""
        now = now_ms()
        return cls(now - longest_ms, now)

    def problem(self, issued_at_ms: int) -> str:
        """Why a request issued at ``issued_at_ms`` is not an answer to this search; or ""."""
        skew = f"more than the {self.skew_ms / 1000:g} s of clock skew allowed"
        if issued_at_ms < self.sent_at_ms - self.skew_ms:
            ago = (self.sent_at_ms - issued_at_ms) / 1000
            return (
                f"stale or replayed result: the request the nodes answered was issued {ago:.1f} s "
                f"before this search was sent ({skew}); it is an earlier result, not an answer "
                "to this search"
            )
        if issued_at_ms > self.received_at_ms + self.skew_ms:
            ahead = (issued_at_ms - self.received_at_ms) / 1000
            return (
                f"the request the nodes answered is dated {ahead:.1f} s after the reply came "
                f"back ({skew}); check the gateway's clock and this one"
            )
        return ""


class Verdict(StrEnum):
    VERIFIED = "verified"
    # Answered or denied, but no key for the node is held here: nothing proven.
    UNVERIFIABLE = "unverifiable"
    # Timed out, unreachable, failed or not asked: there is no signed answer to check.
    NOT_ANSWERED = "not answered"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class NodeCheck:
    node_id: str
    verdict: Verdict
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.node_id}: {self.verdict.value}" + (f": {self.reason}" if self.reason else "")


@dataclass(frozen=True, slots=True)
class AnswerCheck:
    """One verdict per node of a search result (and per audience node it lacks)."""

    query_id: str
    nodes: tuple[NodeCheck, ...]

    @property
    def failed(self) -> tuple[NodeCheck, ...]:
        return tuple(n for n in self.nodes if n.verdict is Verdict.FAILED)

    def verdict_of(self, node_id: str) -> NodeCheck:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    def raise_for_failures(self) -> None:
        """Raise AnswersNotVerified naming every node whose answer failed its check."""
        failed = self.failed
        if failed:
            raise AnswersNotVerified(
                f"query {self.query_id}: the gateway's result does not match what "
                f"{len(failed)} node(s) signed; do not rely on it ("
                + "; ".join(str(n) for n in failed)
                + ")"
            )


# --- the node keys the investigator trusts -----------------------------------------


def load_node_keys(path: Path) -> dict[str, VerifyingKey]:
    """The nodes' public keys from a local folder: node id -> key.

    ``path`` is either a folder of ``<node_id>.pub`` PEM files, or a
    federation folder as ``liaison init`` writes it (``nodes/<id>/node.pub``),
    or that federation's ``nodes`` folder itself.
    """
    if not path.exists():
        raise ConfigError(
            f"node key folder {path} does not exist; give a folder of <node_id>.pub files "
            "or a federation folder written by `liaison init`"
        )
    if not path.is_dir():
        raise ConfigError(
            f"{path} is a file; give the folder that holds it (<node_id>.pub files) "
            "or a federation folder written by `liaison init`"
        )
    nodes_dir = path / "nodes" if (path / "nodes").is_dir() else path
    keys: dict[str, VerifyingKey] = {}
    sources: dict[str, Path] = {}
    candidates = [(p.stem, p) for p in sorted(path.glob("*.pub"))] if nodes_dir == path else []
    candidates += [(_node_id_of(p.parent), p) for p in sorted(nodes_dir.glob("*/node.pub"))]
    for node_id, pem in candidates:
        if node_id in sources:
            raise ConfigError(
                f"two public keys for node {node_id!r} ({sources[node_id]} and {pem}); keep one"
            )
        keys[node_id] = VerifyingKey.from_pem_file(pem)
        sources[node_id] = pem
    if not keys:
        raise ConfigError(
            f"no node public keys in {path}: expected <node_id>.pub files, or "
            "nodes/<node_id>/node.pub as `liaison init` writes them"
        )
    return keys


def _node_id_of(folder: Path) -> str:
    """A federation node's id: its node.toml says it; the folder name otherwise."""
    try:
        config = tomllib.loads((folder / "node.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return folder.name
    node = config.get("node")
    found = node.get("id") if isinstance(node, dict) else None
    return found if isinstance(found, str) and found else folder.name


# --- checking a result ---------------------------------------------------------------


def check_answers(
    result: SearchResult,
    asked: SearchInput | Query,
    node_keys: Mapping[str, VerifyingKey],
    *,
    window: SearchWindow | None = None,
    catalog: Catalog = CATALOG_V1,
) -> AnswerCheck:
    """Check every node's answer in ``result`` against what that node signed.

    ``asked`` is the search the investigator sent (or just its query);
    ``node_keys`` are the keys the investigator trusts (``load_node_keys``);
    ``window`` is when the search was sent and its reply received (time the
    call: ``SearchWindow(sent, now_ms())``). Without it, the check is taken to
    run right after the reply (``SearchWindow.ending_now``): freshness is
    checked either way, the window only makes it tight.
    Never raises for a bad result: every problem is a FAILED verdict, and
    ``raise_for_failures`` turns them into an error.
    """
    request, request_problem = _check_request(result, asked, catalog)
    if request is not None:
        stale = (window or SearchWindow.ending_now()).problem(request.issued_at_ms)
        if stale:
            # Every answer in it may be genuine, but none answers this search.
            return _all_failed(result, request, stale)
    checks: list[NodeCheck] = []
    seen: set[str] = set()
    for r in result.results:
        if r.node_id in seen:
            checks.append(
                NodeCheck(r.node_id, Verdict.FAILED, "the result lists this node more than once")
            )
            continue
        seen.add(r.node_id)
        checks.append(_check_node(r, result, request, request_problem, node_keys))
    if request is not None:
        # A node the request went to must have a result: the gateway may say it
        # did not answer, but may not leave it out.
        for node_id in request.audience:
            if node_id not in seen:
                checks.append(
                    NodeCheck(
                        node_id,
                        Verdict.FAILED,
                        "the request was sent to this node, but the result leaves it out",
                    )
                )
    return AnswerCheck(result.query_id, tuple(checks))


def _all_failed(result: SearchResult, request: QueryRequest, reason: str) -> AnswerCheck:
    named = dict.fromkeys([*(r.node_id for r in result.results), *request.audience])
    return AnswerCheck(result.query_id, tuple(NodeCheck(n, Verdict.FAILED, reason) for n in named))


def _check_request(
    result: SearchResult, asked: SearchInput | Query, catalog: Catalog
) -> tuple[QueryRequest | None, str]:
    """The signed request the result carries, or why it cannot be relied on."""
    envelope = result.signed_request
    if envelope is None:
        return None, "the gateway returned no signed request, so no answer can be tied to it"
    if envelope.payload_type != REQUEST_TYPE:
        return None, f"the gateway's signed request is a {envelope.payload_type!r}"
    try:
        request = request_from_bytes(envelope.payload)
    except LiaisonError:
        return None, "the gateway's signed request does not parse"
    if request.query_id != result.query_id:
        return request, (
            f"the gateway's signed request is query {request.query_id}, not {result.query_id}"
        )
    query = asked.query if isinstance(asked, SearchInput) else asked
    if not _same_query(request.query, query, catalog):
        return request, "the request the nodes were sent is not the query asked"
    if isinstance(asked, SearchInput):
        different = _differences(
            {
                "purpose": (request.purpose, asked.purpose),
                "case reference": (request.case_ref, _canonical(validate_case_ref, asked.case_ref)),
                "legal basis": (
                    request.legal_basis,
                    _canonical(validate_legal_basis, asked.legal_basis),
                ),
            }
        )
        if different:
            return request, f"the request the nodes were sent has another {different}"
    return request, ""


def _same_query(signed: Query, asked: Query, catalog: Catalog) -> bool:
    if signed == asked:
        return True
    # The gateway sends values in their canonical form (lower-case hex, the
    # default near distance, ...): compare with the asked query in that form.
    try:
        return validate_query(asked, catalog) == signed
    except LiaisonError:
        return False


def _canonical(validate: Callable[[str], str], value: str) -> str:
    try:
        return validate(value)
    except LiaisonError:
        return value


def _differences(pairs: Mapping[str, tuple[object, object]]) -> str:
    return ", ".join(name for name, (a, b) in pairs.items() if a != b)


def _check_node(
    r: NodeResult,
    result: SearchResult,
    request: QueryRequest | None,
    request_problem: str,
    node_keys: Mapping[str, VerifyingKey],
) -> NodeCheck:
    expected_status = _SIGNED_STATUSES.get(r.status)
    if expected_status is None:
        if (
            r.status is NodeStatus.NOT_ASKED
            and request is not None
            and r.node_id in request.audience
        ):
            return NodeCheck(
                r.node_id,
                Verdict.FAILED,
                "the gateway says this node was not asked, but the request was sent to it",
            )
        detail = f" ({r.detail})" if r.detail else ""
        return NodeCheck(
            r.node_id,
            Verdict.NOT_ANSWERED,
            f"the gateway reports {r.status.value}{detail}; no signed answer to check",
        )
    key = node_keys.get(r.node_id)
    if key is None:
        if request is not None and not request_problem and r.node_id not in request.audience:
            return NodeCheck(
                r.node_id,
                Verdict.FAILED,
                "the gateway shows an answer from this node, but the request was not sent to it",
            )
        return NodeCheck(
            r.node_id,
            Verdict.UNVERIFIABLE,
            f"no public key for node {r.node_id!r} is held here; add its <node_id>.pub "
            "to the node key folder to check it",
        )
    problem = _answer_problem(r, result, key, request, request_problem, expected_status)
    if problem:
        return NodeCheck(r.node_id, Verdict.FAILED, problem)
    return NodeCheck(r.node_id, Verdict.VERIFIED)


def _answer_problem(
    r: NodeResult,
    result: SearchResult,
    key: VerifyingKey,
    request: QueryRequest | None,
    request_problem: str,
    expected_status: AnswerStatus,
) -> str:
    """Why ``r`` is not what its node signed; empty when it is."""
    envelope = r.signed_answer
    if envelope is None:
        return f"the gateway says {r.status.value} but returned no signed answer from the node"
    try:
        payload = open_envelope(envelope, ANSWER_TYPE, {key.key_id: key})
    except EnvelopeError as exc:
        return f"not signed by this node's key: {exc}"
    try:
        signed = answer_from_bytes(payload)
    except LiaisonError:
        return "the node's signed payload does not parse as an answer"
    if signed.node_id != r.node_id:
        return f"the signed answer is from node {signed.node_id!r}"
    if signed.query_id != result.query_id:
        return f"the signed answer is for query {signed.query_id}, not {result.query_id}"
    if request is None or request_problem:
        return request_problem or "no signed request to tie the answer to"
    assert result.signed_request is not None  # request came from it
    if signed.request_digest != hashlib.sha256(result.signed_request.payload).digest():
        return "the node answered another request than the one the gateway returned"
    if r.node_id not in request.audience:
        return "the request the node answered was not addressed to it"
    if signed.status is not expected_status:
        return f"the gateway says {r.status.value}, the node signed {signed.status.value}"
    if r.answer_digest != hashlib.sha256(payload).hexdigest():
        return "the answer digest shown is not the digest of the node's signed answer"
    if r.answer is None:
        return "the gateway shows no answer, but the node signed one"
    expected = reduce_to_query(signed, request.query)
    if r.answer != expected:
        return (
            f"the answer shown differs from what the node signed in: {_changed(r.answer, expected)}"
        )
    return ""


def _changed(shown: QueryAnswer, signed: QueryAnswer) -> str:
    return ", ".join(
        f.name for f in fields(QueryAnswer) if getattr(shown, f.name) != getattr(signed, f.name)
    )
