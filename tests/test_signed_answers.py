"""Answers verifiable end to end: the investigator checks every node's signature itself.

Everything runs for real on loopback: the three demo nodes, and for each attack a
real gateway (its config, keys, ledger and gRPC server) whose core is subclassed to
tamper with the result it sends out. The client is the real one
(``liaison.client.search`` over gRPC); the checker gets only what came over the
wire and the node keys loaded from the investigator's own folder.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.search import CheckedSearch, GatewayCore
from liaison import client
from liaison.answer_check import (
    CLOCK_SKEW_MS,
    AnswerCheck,
    AnswersNotVerified,
    SearchWindow,
    Verdict,
    check_answers,
    load_node_keys,
    now_ms,
)
from liaison.demo.data import demo_agencies, probes
from liaison.envelope import ANSWER_TYPE, seal
from liaison.errors import ConfigError, InvalidQuery, MalformedMessage
from liaison.keys import KeyId, SigningKey
from liaison.messages import (
    AnswerStatus,
    Count,
    NodeResult,
    NodeStatus,
    QueryAnswer,
    QueryRequest,
    Requester,
    SearchInput,
    SearchResult,
)
from liaison.query import Comparator, Operation, Predicate, Query
from liaison.wire import (
    answer_from_bytes,
    answer_to_bytes,
    request_from_bytes,
    search_result_to_proto,
)
from tests.support import Tamper, TamperingCore, investigator_token, own_gateway, running_node

NODES = ("freedonia", "ruritania", "sylvania")
SHARED_SHA256 = probes().shared_sha256  # held by ruritania and freedonia, not sylvania
ABSENT_SHA256 = "0" * 64  # held by nobody
CASE_REF = "GEN-VERIFY-1"


def eq(field: str, value: str) -> Predicate:
    return Predicate(field, Comparator.EQ, (value,))


def match_search(sha256: str = SHARED_SHA256, purpose: str = "csam-investigation") -> SearchInput:
    """Hit at ruritania and freedonia, none at sylvania."""
    return SearchInput(Query("media", Operation.MATCH, (eq("sha256", sha256),)), purpose, CASE_REF)


def count_search() -> SearchInput:
    """Ruritania answers a (noisy) count; freedonia and sylvania deny."""
    since = Predicate("first_seen", Comparator.GTE, ("2000-01-01",))
    return SearchInput(Query("media", Operation.COUNT, (since,)), "statistics", CASE_REF)


def count_by_search() -> SearchInput:
    return SearchInput(
        Query("media", Operation.COUNT_BY, group_by="category"), "statistics", CASE_REF
    )


def records_search() -> SearchInput:
    """One row each at ruritania and freedonia; sylvania denies records."""
    query = Query(
        "media", Operation.RECORDS, (eq("sha256", SHARED_SHA256),), ("category", "first_seen")
    )
    return SearchInput(query, "csam-investigation", CASE_REF)


# --- the federation: real nodes, and gateways of our own ------------------------------


@dataclass
class Nodes:
    root: Path
    addresses: dict[str, str]
    token: str


@pytest.fixture(scope="module")
def nodes(federation_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    """The three demo nodes, running for every test of this module (each query is new)."""
    root = tmp_path_factory.mktemp("signed-answers") / "federation"
    shutil.copytree(federation_template, root)
    with ExitStack() as stack:
        addresses = {
            a.agency_id: stack.enter_context(
                running_node(root / "nodes" / a.agency_id / "node.toml")
            ).address
            for a in demo_agencies()
        }
        yield Nodes(root, addresses, investigator_token(root))


class BackdatingCore(TamperingCore):
    """Dates every request ``AGO_MS`` earlier, as if it had been asked minutes ago.

    The nodes accept a request up to 300 s old, so they answer and sign: what
    comes back is a genuine result of an earlier search, as a gateway that
    keeps results would serve it again.
    """

    AGO_MS = 120_000

    def request_for(self, requester: Requester, checked: CheckedSearch) -> QueryRequest:
        request = super().request_for(requester, checked)
        return replace(request, issued_at_ms=request.issued_at_ms - self.AGO_MS)


@contextmanager
def gateway(
    nodes: Nodes,
    tamper: Tamper = lambda r: r,
    addresses: dict[str, str] | None = None,
    core: type[TamperingCore] = TamperingCore,
) -> Iterator[tuple[str, GatewayCore]]:
    """A real gateway over ``nodes`` (own config and ledger) serving on a loopback port."""
    with own_gateway(
        nodes.root, addresses or nodes.addresses, lambda built: core(tamper, built)
    ) as running:
        yield running.address, running.core


def ask(nodes: Nodes, address: str, search: SearchInput) -> SearchResult:
    return client.search(address, nodes.token, search)


def verdicts(check: AnswerCheck) -> dict[str, Verdict]:
    return {n.node_id: n.verdict for n in check.nodes}


def at(
    result: SearchResult, node_id: str, change: Callable[[NodeResult], NodeResult]
) -> SearchResult:
    """``result`` with ``node_id``'s result changed."""
    return replace(
        result,
        results=tuple(change(r) if r.node_id == node_id else r for r in result.results),
    )


def by_node(result: SearchResult) -> dict[str, NodeResult]:
    return {r.node_id: r for r in result.results}


def shown(r: NodeResult) -> QueryAnswer:
    assert r.answer is not None
    return r.answer


# --- (a) an honest gateway: every node verifies -----------------------------------------


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        pytest.param(match_search(), dict.fromkeys(NODES, NodeStatus.ANSWERED), id="match"),
        pytest.param(
            count_search(),
            {
                "freedonia": NodeStatus.DENIED,
                "ruritania": NodeStatus.ANSWERED,
                "sylvania": NodeStatus.DENIED,
            },
            id="count",
        ),
        pytest.param(count_by_search(), dict.fromkeys(NODES, NodeStatus.ANSWERED), id="count_by"),
        pytest.param(
            records_search(),
            {
                "freedonia": NodeStatus.ANSWERED,
                "ruritania": NodeStatus.ANSWERED,
                "sylvania": NodeStatus.DENIED,
            },
            id="records",
        ),
    ],
)
def test_an_honest_result_verifies_for_every_node(
    nodes: Nodes, search: SearchInput, expected: dict[str, NodeStatus]
) -> None:
    keys = load_node_keys(nodes.root)
    with gateway(nodes) as (address, _):
        result = ask(nodes, address, search)

    assert {r.node_id: r.status for r in result.results} == expected
    check = check_answers(result, search, keys)
    assert verdicts(check) == dict.fromkeys(NODES, Verdict.VERIFIED), [str(n) for n in check.nodes]
    check.raise_for_failures()  # nothing to raise
    # The signatures are the nodes' own: each envelope names its node's key.
    for r in result.results:
        assert r.signed_answer is not None
        assert r.signed_answer.key_id == keys[r.node_id].key_id


def test_the_signed_answers_cost_no_round_trip_and_a_few_hundred_bytes(nodes: Nodes) -> None:
    """What the envelopes add to a response, measured on the wire form."""
    with gateway(nodes) as (address, _):
        result = ask(nodes, address, match_search())
    bare = replace(
        result,
        signed_request=None,
        results=tuple(replace(r, signed_answer=None) for r in result.results),
    )
    added = search_result_to_proto(result).ByteSize() - search_result_to_proto(bare).ByteSize()
    envelopes = sum(len(r.signed_answer.payload) for r in result.results if r.signed_answer)
    assert result.signed_request is not None
    # Payloads, plus per envelope a 64-byte signature, a 64-character key id,
    # the payload type and protobuf framing: well under 300 bytes each.
    overhead = added - envelopes - len(result.signed_request.payload)
    assert 0 < overhead < 300 * (len(result.results) + 1)


# --- (b) a gateway that alters an answer ------------------------------------------------


def flip_hit(r: NodeResult) -> NodeResult:
    return replace(r, answer=replace(shown(r), hit=not shown(r).hit))


def add_to_count(r: NodeResult) -> NodeResult:
    count = shown(r).count
    assert count is not None
    return replace(r, answer=replace(shown(r), count=replace(count, value=count.value + 1)))


def drop_a_row(r: NodeResult) -> NodeResult:
    assert shown(r).rows
    return replace(r, answer=replace(shown(r), rows=shown(r).rows[1:]))


def deny_instead(r: NodeResult) -> NodeResult:
    """Hide a hit by reporting the node's answer as a denial."""
    answer = shown(r)
    return replace(
        r,
        status=NodeStatus.DENIED,
        detail="denied",
        answer=QueryAnswer(
            answer.query_id,
            answer.node_id,
            answer.request_digest,
            answer.answered_at_ms,
            AnswerStatus.DENIED,
            replace(answer.decision, permitted=False, reason="denied"),
        ),
    )


def answer_instead(r: NodeResult) -> NodeResult:
    """Turn a denial into an answer with a count."""
    return replace(
        r,
        status=NodeStatus.ANSWERED,
        answer=replace(shown(r), status=AnswerStatus.ANSWERED, count=Count(3)),
    )


def rewrite_payload(r: NodeResult) -> NodeResult:
    """Flip the hit inside the signed payload too, and keep everything else consistent."""
    assert r.signed_answer is not None
    signed = answer_from_bytes(r.signed_answer.payload)
    payload = answer_to_bytes(replace(signed, hit=not signed.hit))
    return replace(
        r,
        signed_answer=replace(r.signed_answer, payload=payload),
        answer=replace(shown(r), hit=not shown(r).hit),
        answer_digest=hashlib.sha256(payload).hexdigest(),
    )


ALTERED = [
    pytest.param(
        match_search(),
        "sylvania",
        flip_hit,
        "the answer shown differs from what the node signed in: hit",
        id="no-hit-shown-as-hit",
    ),
    pytest.param(
        match_search(),
        "ruritania",
        flip_hit,
        "the answer shown differs from what the node signed in: hit",
        id="hit-shown-as-no-hit",
    ),
    pytest.param(
        count_search(),
        "ruritania",
        add_to_count,
        "the answer shown differs from what the node signed in: count",
        id="count-changed",
    ),
    pytest.param(
        records_search(),
        "freedonia",
        drop_a_row,
        "the answer shown differs from what the node signed in: rows",
        id="row-dropped",
    ),
    pytest.param(
        match_search(),
        "ruritania",
        deny_instead,
        "the gateway says denied, the node signed answered",
        id="answer-shown-as-denial",
    ),
    pytest.param(
        count_search(),
        "sylvania",
        answer_instead,
        "the gateway says answered, the node signed denied",
        id="denial-shown-as-answer",
    ),
    pytest.param(
        match_search(),
        "sylvania",
        lambda r: replace(r, answer_digest="ab" * 32),
        "the answer digest shown is not the digest of the node's signed answer",
        id="digest-changed",
    ),
    pytest.param(
        match_search(),
        "sylvania",
        rewrite_payload,
        "not signed by this node's key: signature does not verify",
        id="signed-payload-rewritten",
    ),
    pytest.param(
        match_search(),
        "freedonia",
        lambda r: replace(r, signed_answer=None),
        "the gateway says answered but returned no signed answer from the node",
        id="signed-answer-stripped",
    ),
]


@pytest.mark.parametrize(("search", "victim", "change", "reason"), ALTERED)
def test_a_gateway_that_alters_an_answer_is_caught(
    nodes: Nodes,
    search: SearchInput,
    victim: str,
    change: Callable[[NodeResult], NodeResult],
    reason: str,
) -> None:
    keys = load_node_keys(nodes.root)
    with gateway(nodes, lambda result: at(result, victim, change)) as (address, _):
        result = ask(nodes, address, search)

    check = check_answers(result, search, keys)
    assert check.verdict_of(victim).verdict is Verdict.FAILED
    assert check.verdict_of(victim).reason.startswith(reason), check.verdict_of(victim).reason
    # Only the victim fails: the other nodes' answers still verify.
    others = {n: v for n, v in verdicts(check).items() if n != victim}
    assert others == dict.fromkeys(others, Verdict.VERIFIED)
    with pytest.raises(AnswersNotVerified, match=f"{victim}: FAILED: "):
        check.raise_for_failures()


def test_a_gateway_that_leaves_a_node_out_is_caught(nodes: Nodes) -> None:
    keys = load_node_keys(nodes.root)

    def leave_out_ruritania(result: SearchResult) -> SearchResult:
        return replace(result, results=tuple(r for r in result.results if r.node_id != "ruritania"))

    with gateway(nodes, leave_out_ruritania) as (address, _):
        result = ask(nodes, address, match_search())

    check = check_answers(result, match_search(), keys)
    assert check.verdict_of("ruritania").verdict is Verdict.FAILED
    assert "the request was sent to this node, but the result leaves it out" in str(check)
    assert check.verdict_of("freedonia").verdict is Verdict.VERIFIED


def test_a_withheld_answer_is_reported_as_not_answered_never_as_verified(nodes: Nodes) -> None:
    """The limit of what a signature can prove: the gateway can still withhold an answer."""
    keys = load_node_keys(nodes.root)

    def withhold(r: NodeResult) -> NodeResult:
        return NodeResult(r.node_id, NodeStatus.UNREACHABLE, "no answer", r.latency_ms)

    with gateway(nodes, lambda result: at(result, "ruritania", withhold)) as (address, _):
        result = ask(nodes, address, match_search())

    check = check_answers(result, match_search(), keys)
    assert check.verdict_of("ruritania").verdict is Verdict.NOT_ANSWERED
    assert check.verdict_of("ruritania").reason == (
        "the gateway reports unreachable (no answer); no signed answer to check"
    )
    assert check.failed == ()


# --- (c) a gateway that invents an answer ------------------------------------------------


def invented(key: SigningKey, *, claim_key_id: KeyId | None = None) -> Tamper:
    """Replace sylvania's no-hit with a hit the gateway signs itself."""

    def tamper(result: SearchResult) -> SearchResult:
        assert result.signed_request is not None
        request_digest = hashlib.sha256(result.signed_request.payload).digest()

        def forge(r: NodeResult) -> NodeResult:
            answer = replace(shown(r), request_digest=request_digest, hit=True)
            envelope = seal(key, ANSWER_TYPE, answer_to_bytes(answer))
            if claim_key_id is not None:
                envelope = replace(envelope, key_id=claim_key_id)
            return replace(
                r,
                answer=answer,
                answer_digest=hashlib.sha256(envelope.payload).hexdigest(),
                signed_answer=envelope,
            )

        return at(result, "sylvania", forge)

    return tamper


@pytest.mark.parametrize("claim_the_nodes_key_id", [False, True], ids=["own-key-id", "node-key-id"])
def test_a_gateway_that_invents_an_answer_is_caught(
    nodes: Nodes, claim_the_nodes_key_id: bool
) -> None:
    keys = load_node_keys(nodes.root)
    gateway_key = SigningKey.from_pem_file(nodes.root / "gateway" / "gateway.key")
    claim = keys["sylvania"].key_id if claim_the_nodes_key_id else None
    with gateway(nodes, invented(gateway_key, claim_key_id=claim)) as (address, core):
        assert core.signing_key.key_id == gateway_key.key_id  # the gateway's own key
        result = ask(nodes, address, match_search())

    assert shown(by_node(result)["sylvania"]).hit  # what the investigator would see
    check = check_answers(result, match_search(), keys)
    failed = check.verdict_of("sylvania")
    assert failed.verdict is Verdict.FAILED
    if claim_the_nodes_key_id:
        assert failed.reason.startswith("not signed by this node's key: signature does not verify")
    else:
        assert failed.reason.startswith(
            "not signed by this node's key: envelope is signed by key "
            f"{gateway_key.key_id[:16]!r}…, which is not trusted here"
        )


def test_an_answer_invented_for_an_unreachable_node_is_caught(nodes: Nodes) -> None:
    """A node that is down cannot be made to have answered."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    addresses = {**nodes.addresses, "sylvania": closed}
    keys = load_node_keys(nodes.root)
    gateway_key = SigningKey.from_pem_file(nodes.root / "gateway" / "gateway.key")

    def invent(result: SearchResult) -> SearchResult:
        assert result.signed_request is not None
        answer = QueryAnswer(
            query_id=result.query_id,
            node_id="sylvania",
            request_digest=hashlib.sha256(result.signed_request.payload).digest(),
            answered_at_ms=1,
            status=AnswerStatus.ANSWERED,
            decision=shown(result.results[0]).decision,
            hit=True,
        )
        envelope = seal(gateway_key, ANSWER_TYPE, answer_to_bytes(answer))
        return at(
            result,
            "sylvania",
            lambda r: replace(
                r,
                status=NodeStatus.ANSWERED,
                detail="",
                answer=answer,
                answer_digest=hashlib.sha256(envelope.payload).hexdigest(),
                signed_answer=envelope,
            ),
        )

    with gateway(nodes, invent, addresses) as (address, _):
        result = ask(nodes, address, match_search())

    check = check_answers(result, match_search(), keys)
    assert check.verdict_of("sylvania").verdict is Verdict.FAILED
    assert check.verdict_of("sylvania").reason.startswith("not signed by this node's key")


# --- (d) a gateway that swaps in an answer to another query -----------------------------


class Swapper:
    """Keeps the first result it sees; puts parts of it into the next one."""

    def __init__(self, swap: Callable[[SearchResult, SearchResult], SearchResult]) -> None:
        self.first: SearchResult | None = None
        self.swap = swap

    def __call__(self, result: SearchResult) -> SearchResult:
        if self.first is None:
            self.first = result
            return result
        return self.swap(self.first, result)


def test_an_answer_from_another_query_id_is_caught(nodes: Nodes) -> None:
    """The hit sylvania signed for an earlier query, shown as its answer to this one."""
    keys = load_node_keys(nodes.root)

    def swap(old: SearchResult, new: SearchResult) -> SearchResult:
        earlier = next(r for r in old.results if r.node_id == "ruritania")
        return at(new, "ruritania", lambda r: earlier)

    with gateway(nodes, Swapper(swap)) as (address, _):
        first = ask(nodes, address, match_search())
        second = ask(nodes, address, match_search(ABSENT_SHA256))

    assert shown(next(r for r in second.results if r.node_id == "ruritania")).hit
    assert first.query_id != second.query_id
    check = check_answers(second, match_search(ABSENT_SHA256), keys)
    assert check.verdict_of("ruritania").verdict is Verdict.FAILED
    assert check.verdict_of("ruritania").reason == (
        f"the signed answer is for query {first.query_id}, not {second.query_id}"
    )
    assert check.verdict_of("sylvania").verdict is Verdict.VERIFIED


def test_a_whole_result_replayed_for_another_question_is_caught(nodes: Nodes) -> None:
    """Every id consistent, every signature good: only the question differs."""
    keys = load_node_keys(nodes.root)
    with gateway(nodes, Swapper(lambda old, new: old)) as (address, _):
        ask(nodes, address, match_search())
        replayed = ask(nodes, address, match_search(ABSENT_SHA256))

    check = check_answers(replayed, match_search(ABSENT_SHA256), keys)
    assert verdicts(check) == dict.fromkeys(NODES, Verdict.FAILED)
    assert {n.reason for n in check.nodes} == {
        "the request the nodes were sent is not the query asked"
    }
    # The same result, checked against the question it did answer, verifies.
    assert verdicts(check_answers(replayed, match_search(), keys)) == dict.fromkeys(
        NODES, Verdict.VERIFIED
    )


def test_an_answer_to_the_same_query_under_another_purpose_is_caught(nodes: Nodes) -> None:
    """The request the nodes answered must be the search asked: purpose included."""
    keys = load_node_keys(nodes.root)
    with gateway(nodes) as (address, _):
        result = ask(nodes, address, match_search(purpose="victim-identification"))

    check = check_answers(result, match_search(purpose="csam-investigation"), keys)
    assert {n.reason for n in check.nodes} == {
        "the request the nodes were sent has another purpose"
    }
    # Given only the query, the purpose is not compared.
    assert check.failed and not check_answers(result, result.query, keys).failed


def test_a_signed_request_from_another_query_is_caught(nodes: Nodes) -> None:
    """The result claims an earlier request (and its id): no node answered that one."""
    keys = load_node_keys(nodes.root)
    answered: list[str] = []

    def swap(old: SearchResult, new: SearchResult) -> SearchResult:
        answered.append(new.query_id)
        return replace(new, signed_request=old.signed_request, query_id=old.query_id)

    with gateway(nodes, Swapper(swap)) as (address, _):
        first = ask(nodes, address, match_search())
        result = ask(nodes, address, match_search())

    assert result.query_id == first.query_id
    check = check_answers(result, match_search(), keys)
    assert verdicts(check) == dict.fromkeys(NODES, Verdict.FAILED)
    assert {n.reason for n in check.nodes} == {
        f"the signed answer is for query {answered[0]}, not {first.query_id}"
    }


def test_a_request_digest_that_does_not_match_is_caught(nodes: Nodes) -> None:
    """The same query id, but other request bytes than the nodes answered."""
    keys = load_node_keys(nodes.root)

    def other_bytes(result: SearchResult) -> SearchResult:
        assert result.signed_request is not None
        # Same message, one unknown field appended: parses the same, digests differently.
        payload = result.signed_request.payload + b"\xf8\x06\x01"
        return replace(result, signed_request=replace(result.signed_request, payload=payload))

    with gateway(nodes, other_bytes) as (address, _):
        result = ask(nodes, address, match_search())

    check = check_answers(result, match_search(), keys)
    assert {n.reason for n in check.nodes} == {
        "the node answered another request than the one the gateway returned"
    }


# --- (e) a node whose key the investigator does not hold --------------------------------


def test_a_node_without_a_known_key_is_unverifiable_not_verified(
    nodes: Nodes, tmp_path: Path
) -> None:
    folder = tmp_path / "keys"
    folder.mkdir()
    for node_id in ("freedonia", "ruritania"):
        shutil.copy(nodes.root / "nodes" / node_id / "node.pub", folder / f"{node_id}.pub")
    keys = load_node_keys(folder)
    assert sorted(keys) == ["freedonia", "ruritania"]
    with gateway(nodes) as (address, _):
        result = ask(nodes, address, match_search())

    check = check_answers(result, match_search(), keys)
    assert verdicts(check) == {
        "freedonia": Verdict.VERIFIED,
        "ruritania": Verdict.VERIFIED,
        "sylvania": Verdict.UNVERIFIABLE,
    }
    assert str(check.verdict_of("sylvania")) == (
        "sylvania: unverifiable: no public key for node 'sylvania' is held here; add its "
        "<node_id>.pub to the node key folder to check it"
    )
    check.raise_for_failures()  # unverifiable is not a failure: the caller decides


def test_a_key_from_the_wrong_node_fails(nodes: Nodes) -> None:
    """Keys are per node: ruritania's key does not vouch for sylvania's answer."""
    keys = load_node_keys(nodes.root)
    keys["sylvania"] = keys["ruritania"]
    with gateway(nodes) as (address, _):
        result = ask(nodes, address, match_search())
    check = check_answers(result, match_search(), keys)
    assert check.verdict_of("sylvania").verdict is Verdict.FAILED
    assert check.verdict_of("sylvania").reason.startswith("not signed by this node's key")


# --- loading the investigator's node keys -----------------------------------------------


def test_node_keys_load_from_a_federation_folder_or_its_nodes_folder(nodes: Nodes) -> None:
    expected = {
        n: SigningKey.from_pem_file(nodes.root / "nodes" / n / "node.key").key_id for n in NODES
    }
    for path in (nodes.root, nodes.root / "nodes"):
        keys = load_node_keys(path)
        assert {n: k.key_id for n, k in keys.items()} == expected


def test_node_keys_load_from_a_folder_of_pub_files(tmp_path: Path) -> None:
    key = SigningKey.generate()
    (tmp_path / "atlantis.pub").write_bytes(key.verifying_key.to_pem())
    (tmp_path / "README.txt").write_text("not a key")
    assert load_node_keys(tmp_path) == {"atlantis": key.verifying_key}


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        pytest.param({}, "no node public keys in {path}: expected <node_id>.pub files", id="empty"),
        pytest.param(
            {"atlantis.pub": "-----BEGIN PUBLIC KEY-----\nnonsense\n-----END PUBLIC KEY-----\n"},
            "{path}/atlantis.pub is not a PEM public key",
            id="not-pem",
        ),
        pytest.param(
            {"atlantis.pub": "rsa"},
            "{path}/atlantis.pub holds a RSAPublicKey, expected an Ed25519 public key",
            id="rsa",
        ),
        pytest.param(
            {"atlantis.pub": "ok", "atlantis/node.pub": "ok"},
            "two public keys for node 'atlantis'",
            id="twice",
        ),
    ],
)
def test_node_keys_that_cannot_load_say_why(
    tmp_path: Path, layout: dict[str, str], message: str
) -> None:
    folder = tmp_path / "keys"
    folder.mkdir()
    for name, text in layout.items():
        if text == "ok":
            _write(folder / name, SigningKey.generate().verifying_key.to_pem())
        elif text == "rsa":
            pem = (
                rsa.generate_private_key(public_exponent=65537, key_size=2048)
                .public_key()
                .public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
            _write(folder / name, pem)
        else:
            _write(folder / name, text)
    with pytest.raises(ConfigError, match="^" + re.escape(message.format(path=folder))):
        load_node_keys(folder)


def test_node_keys_from_a_missing_path_or_a_file_say_what_to_give(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=re.escape(f"node key folder {missing} does not exist")):
        load_node_keys(missing)
    file = _write(tmp_path / "atlantis.pub", SigningKey.generate().verifying_key.to_pem())
    with pytest.raises(ConfigError, match=re.escape(f"{file} is a file; give the folder")):
        load_node_keys(file)


# --- (f) a result that is genuine, but not an answer to this search (its time) ------------


def timed(nodes: Nodes, address: str, search: SearchInput) -> tuple[SearchResult, SearchWindow]:
    sent = now_ms()
    result = ask(nodes, address, search)
    return result, SearchWindow(sent, now_ms())


def test_a_result_served_again_later_is_stale_for_every_node(nodes: Nodes) -> None:
    keys = load_node_keys(nodes.root)
    with gateway(nodes) as (address, _):
        result, window = timed(nodes, address, match_search())

    assert not check_answers(result, match_search(), keys, window=window).failed
    # The same result, served for the same question asked a minute later
    # (beyond the clock skew): every signature good, every node FAILED.
    later = SearchWindow(
        window.received_at_ms + 2 * CLOCK_SKEW_MS, window.received_at_ms + 2 * CLOCK_SKEW_MS
    )
    check = check_answers(result, match_search(), keys, window=later)
    assert verdicts(check) == dict.fromkeys(NODES, Verdict.FAILED)
    (reason,) = {n.reason for n in check.nodes}
    assert reason.startswith("stale or replayed result: the request the nodes answered was ")
    assert reason.endswith("it is an earlier result, not an answer to this search")
    with pytest.raises(AnswersNotVerified, match="stale or replayed"):
        check.raise_for_failures()
    # A request dated after the reply came back: a clock far off, or a forgery.
    earlier = SearchWindow(
        window.sent_at_ms - 3 * CLOCK_SKEW_MS, window.sent_at_ms - 2 * CLOCK_SKEW_MS
    )
    future = check_answers(result, match_search(), keys, window=earlier)
    ahead = (result_issued(result) - earlier.received_at_ms) / 1000
    assert {n.reason for n in future.nodes} == {
        f"the request the nodes answered is dated {ahead:.1f} s after the reply came back "
        "(more than the 30 s of clock skew allowed); check the gateway's clock and this one"
    }


def result_issued(result: SearchResult) -> int:
    assert result.signed_request is not None
    return request_from_bytes(result.signed_request.payload).issued_at_ms


def test_an_earlier_result_fails_even_without_a_window(nodes: Nodes) -> None:
    """A caller that did not time its search still gets freshness checked, more loosely."""
    keys = load_node_keys(nodes.root)
    with gateway(nodes, core=BackdatingCore) as (address, _):
        result, window = timed(nodes, address, match_search())

    assert result_issued(result) <= window.received_at_ms - BackdatingCore.AGO_MS
    for check in (
        check_answers(result, match_search(), keys, window=window),
        check_answers(result, match_search(), keys),  # SearchWindow.ending_now()
    ):
        assert verdicts(check) == dict.fromkeys(NODES, Verdict.FAILED)
        assert all(n.reason.startswith("stale or replayed result") for n in check.nodes)


def test_an_answer_from_a_node_the_request_was_not_sent_to_fails_without_its_key(
    nodes: Nodes,
) -> None:
    """No key is needed to see that the signed request never went to "atlantis"."""
    keys = load_node_keys(nodes.root)
    stranger = SigningKey.generate()

    def add_atlantis(result: SearchResult) -> SearchResult:
        r = by_node(result)["ruritania"]
        answer = replace(shown(r), node_id="atlantis")
        envelope = seal(stranger, ANSWER_TYPE, answer_to_bytes(answer))
        atlantis = replace(
            r,
            node_id="atlantis",
            answer=answer,
            answer_digest=hashlib.sha256(envelope.payload).hexdigest(),
            signed_answer=envelope,
        )
        return replace(result, results=(*result.results, atlantis))

    with gateway(nodes, add_atlantis) as (address, _):
        result = ask(nodes, address, match_search())

    check = check_answers(result, match_search(), keys)
    assert check.verdict_of("atlantis").verdict is Verdict.FAILED
    assert check.verdict_of("atlantis").reason == (
        "the gateway shows an answer from this node, but the request was not sent to it"
    )
    assert check.verdict_of("ruritania").verdict is Verdict.VERIFIED


def test_bytes_that_do_not_parse_are_a_liaison_error_not_protobufs() -> None:
    for parse in (request_from_bytes, answer_from_bytes):
        with pytest.raises(MalformedMessage, match=r"^the bytes are not a Query") as caught:
            parse(b"\xff\xff\xff")
        # Callers that refuse an unparsable query refuse these alike.
        assert isinstance(caught.value, InvalidQuery)


def test_a_signed_request_that_does_not_parse_fails_every_answer(nodes: Nodes) -> None:
    keys = load_node_keys(nodes.root)

    def garble(result: SearchResult) -> SearchResult:
        assert result.signed_request is not None
        return replace(result, signed_request=replace(result.signed_request, payload=b"\xff\xff"))

    with gateway(nodes, garble) as (address, _):
        result = ask(nodes, address, match_search())

    check = check_answers(result, match_search(), keys)
    assert {n.reason for n in check.nodes} == {"the gateway's signed request does not parse"}
