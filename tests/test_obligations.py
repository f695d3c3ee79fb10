"""A permit's obligations, as real nodes meet them: transforms, row filters, rate limits,
small counts and the differencing guard.

Each test writes its nodes as ``liaison init`` would (keys, transform key,
policy, config) over a SQLite database in a local schema of their own, starts
them with ``build_node`` as gRPC servers on loopback, and sends them requests
signed as the gateway signs them. Every answer's signature is checked before
it is read. The data is small and fixed, so every expected number below can
be read off ``MEDIA``. A last test runs the demo Ruritania node under its own
policy document.

Some tests here are attacks: splitting a query to dodge a rate limit,
differencing two counts (also a count-by cell against a count, and after
flushing the guard's memory), probing hidden fields through predicates, and
reading redacted values from the order of rows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import sqlalchemy as sa

from liaison.catalog import CATALOG_V1
from liaison.config import load_node_config
from liaison.demo.data import probes
from liaison.demo.federation import write_gateway_keys
from liaison.demo.run import DEMO_ATTRIBUTES
from liaison.errors import ConfigError
from liaison.messages import AnswerStatus, Bucket, Count, QueryAnswer, Requester
from liaison.query import Comparator, Operation, Predicate, Query
from node.differencing import GUARD_RULE
from node.noise import bound
from node.server import build_node
from tests.support import LocalNode, start_local_node, write_local_node

# --- the agency's own schema and its data ------------------------------------------

LOCAL = sa.MetaData()
EXHIBITS = sa.Table(
    "exhibits",
    LOCAL,
    sa.Column("ex_id", sa.Integer, primary_key=True),
    sa.Column("digest", sa.String(64)),
    sa.Column("digest_md5", sa.String(32)),
    sa.Column("klass", sa.String(16)),
    sa.Column("seen", sa.Date),
    sa.Column("dossier", sa.String(32)),
    sa.Column("victim", sa.Integer),  # a boolean kept as 0/1
    sa.Column("ok_share", sa.Integer),  # a boolean kept as 0/1
)
ONLINE = sa.Table(
    "online",
    LOCAL,
    sa.Column("oid", sa.Integer, primary_key=True),
    sa.Column("service", sa.String(32)),
    sa.Column("nick", sa.String(64)),
    sa.Column("mail", sa.String(128)),
    # The agency keeps a share flag here, but its node does not map it.
    sa.Column("flag_ok", sa.Integer),
)
MAPPING = {
    "media": (
        "exhibits",
        {
            "sha256": "digest",
            "md5": "digest_md5",
            "category": "klass",
            "first_seen": "seen",
            "case_ref": "dossier",
            "victim_identified": "victim",
            "shareable": "ok_share",
        },
    ),
    "accounts": ("online", {"platform": "service", "handle": "nick", "email": "mail"}),
}


@dataclass(frozen=True)
class Media:
    """One media record, under its catalog field names."""

    i: int
    sha256: str
    md5: str
    category: str
    first_seen: dt.date
    case_ref: str
    victim_identified: bool
    shareable: bool


def _media(i: int) -> Media:
    return Media(
        i=i,
        sha256=hashlib.sha256(f"exhibit {i}".encode()).hexdigest(),
        md5=hashlib.md5(f"exhibit {i}".encode(), usedforsecurity=False).hexdigest(),
        # 30 x A, 12 x B, 3 x C, 3 x baseline.
        category="A" if i < 30 else "B" if i < 42 else "C" if i < 45 else "baseline",
        # One a week through 2021: later rows are later, so ranges cut off rows.
        first_seen=dt.date(2021, 1, 4) + dt.timedelta(days=7 * i),
        # Two records per case.
        case_ref=f"RUR-{i // 2:03d}",
        victim_identified=i % 3 == 0,
        shareable=i % 4 != 3,
    )


MEDIA = tuple(_media(i) for i in range(48))
K = 5  # the minimum count of both statistics permits
ACCOUNTS = (
    {"oid": 1, "service": "chatapp", "nick": "shadow", "mail": "s@one.example", "flag_ok": 0},
    {"oid": 2, "service": "forumx", "nick": "ghost", "mail": "g@two.example", "flag_ok": 1},
)


def _write_database(path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        LOCAL.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                EXHIBITS.insert(),
                [
                    {
                        "ex_id": m.i,
                        "digest": m.sha256,
                        "digest_md5": m.md5,
                        "klass": m.category,
                        "seen": m.first_seen,
                        "dossier": m.case_ref,
                        "victim": int(m.victim_identified),
                        "ok_share": int(m.shareable),
                    }
                    for m in MEDIA
                ],
            )
            conn.execute(ONLINE.insert(), list(ACCOUNTS))
    finally:
        engine.dispose()


# --- policies ------------------------------------------------------------------------

POLICY = """\
version = 1
agency = "{node_id}"

[maps.severity]
A = "severe"
B = "severe"
C = "other"
baseline = "other"

[[rule]]
id = "partner-records"
effect = "permit"
description = "Shareable records; case references as keyed hashes, victim status as presence."
agencies = ["*"]
roles = ["investigator"]
purposes = ["csam-investigation"]
datasets = ["media"]
operations = ["match", "records"]
match_fields = ["sha256", "md5", "category"]
release = ["sha256", "category", "first_seen", "case_ref", "victim_identified"]
transforms = {{ case_ref = "keyed-hash", first_seen = "month", victim_identified = "redact" }}
row_filters = [{{ field = "shareable", eq = true }}]
# Lists by category, so that transforms and filters show on many rows at once.
releases_lists = true

[[rule]]
id = "victim-id-records"
effect = "permit"
agencies = ["*"]
roles = ["investigator"]
purposes = ["victim-identification"]
datasets = ["media"]
operations = ["records"]
match_fields = ["sha256", "category"]
release = ["sha256", "category", "first_seen"]
transforms = {{ category = "map:severity", first_seen = "year" }}
releases_lists = true

[[rule]]
id = "shareable-counts"
effect = "permit"
agencies = ["*"]
roles = ["investigator"]
purposes = ["victim-identification"]
datasets = ["media"]
operations = ["count"]
match_fields = ["sha256", "category"]
row_filters = [{{ field = "shareable", eq = "true" }}]

[[rule]]
id = "severity-statistics"
effect = "permit"
agencies = ["*"]
roles = ["analyst"]
purposes = ["statistics"]
datasets = ["media"]
operations = ["count", "count_by"]
match_fields = ["category", "first_seen"]
release = ["category", "victim_identified"]
transforms = {{ category = "map:severity" }}
min_count = {k}

[[rule]]
id = "category-statistics"
effect = "permit"
agencies = ["*"]
roles = ["investigator"]
purposes = ["statistics"]
datasets = ["media"]
operations = ["count", "count_by"]
match_fields = ["category", "first_seen"]
release = ["category", "victim_identified"]
min_count = {k}

[[rule]]
id = "account-records"
effect = "permit"
agencies = ["*"]
roles = ["investigator"]
purposes = ["offender-identification"]
datasets = ["accounts"]
operations = ["match", "count", "records"]
match_fields = ["email", "platform"]
release = ["platform", "handle"]
row_filters = [{{ field = "shareable", eq = "true" }}]
"""

RATE_POLICY = """\
version = 1
agency = "{node_id}"

[[rule]]
id = "hash-lookup"
effect = "permit"
agencies = ["*"]
roles = ["investigator"]
purposes = ["csam-investigation"]
datasets = ["media"]
operations = ["match"]
match_fields = ["sha256", "md5"]
rate_limit = {{ investigator = "10/hour" }}

[[rule]]
id = "agency-lookup"
effect = "permit"
agencies = ["*"]
roles = ["investigator"]
purposes = ["victim-identification"]
datasets = ["media"]
operations = ["match"]
match_fields = ["sha256"]
rate_limit = {{ agency = "12/day" }}
"""


def _requester(agency: str, subject: str, role: str = "investigator") -> Requester:
    return Requester(
        agency, subject, (role,), f"https://idp.{agency}.example", {"clearance": "secret"}
    )


ALICE = _requester("genovia", "inv.alice")
BOB = _requester("genovia", "inv.bob")
CAROL = _requester("genovia", "inv.carol")
DAVE = _requester("ruritania", "inv.dave")
ERIN = _requester("genovia", "ana.erin", "analyst")

# --- nodes on loopback -----------------------------------------------------------------


@dataclass
class Node(LocalNode):
    stack: ExitStack  # closing it stops this node alone

    @property
    def transform_key(self) -> bytes:
        return bytes.fromhex((self.folder / "transform.key").read_text().strip())


class Agencies:
    """Nodes written to disk as `liaison init` writes them, and the gateway's signing key."""

    def __init__(self, root: Path, stack: ExitStack, *, existing: bool = False) -> None:
        self.root = root
        self.stack = stack
        if not existing:
            write_gateway_keys(root)

    def folder(self, node_id: str) -> Path:
        return self.root / "nodes" / node_id

    def write(self, node_id: str, policy: str = POLICY) -> Path:
        folder = self.folder(node_id)
        folder.mkdir(parents=True)
        _write_database(folder / "agency.sqlite3")
        return write_local_node(
            self.root,
            node_id,
            database_url="sqlite:///agency.sqlite3",
            mapping=MAPPING,
            policy_text=policy.format(node_id=node_id, k=K),
        )

    def start(self, node_id: str) -> Node:
        node_stack = ExitStack()
        self.stack.callback(node_stack.close)
        node = start_local_node(node_stack, self.folder(node_id) / "node.toml")
        return Node(**vars(node), stack=node_stack)

    def node(self, node_id: str = "alpha", policy: str = POLICY) -> Node:
        self.write(node_id, policy)
        return self.start(node_id)

    def ask(
        self,
        node: Node,
        query: Query,
        *,
        requester: Requester = ALICE,
        purpose: str = "csam-investigation",
        case_ref: str = "GEN-2026-0142",
        legal_basis: str = "",
    ) -> QueryAnswer:
        return node.answer(
            query,
            requester=requester,
            purpose=purpose,
            case_ref=case_ref,
            legal_basis=legal_basis,
        )


@pytest.fixture
def agencies(tmp_path: Path) -> Iterator[Agencies]:
    with ExitStack() as stack:
        yield Agencies(tmp_path / "federation", stack)


@pytest.fixture
def alpha(agencies: Agencies) -> Node:
    return agencies.node("alpha")


# --- queries ------------------------------------------------------------------------


def eq(field: str, value: str) -> Predicate:
    return Predicate(field, Comparator.EQ, (value,))


def any_of(field: str, values: list[str]) -> Predicate:
    return Predicate(field, Comparator.IN, tuple(values))


def up_to(day: dt.date) -> Predicate:
    return Predicate("first_seen", Comparator.LTE, (day.isoformat(),))


def records(fields: tuple[str, ...], *on: Predicate, limit: int = 0) -> Query:
    return Query("media", Operation.RECORDS, on, fields, limit=limit)


def match(*on: Predicate) -> Query:
    return Query("media", Operation.MATCH, on)


def count(*on: Predicate) -> Query:
    return Query("media", Operation.COUNT, on)


def count_by(group_by: str, *on: Predicate) -> Query:
    return Query("media", Operation.COUNT_BY, on, group_by=group_by)


def answered(answer: QueryAnswer) -> QueryAnswer:
    assert answer.status is AnswerStatus.ANSWERED, answer.decision
    assert answer.decision.permitted
    return answer


def denied(answer: QueryAnswer, *rules: str) -> QueryAnswer:
    """A denial that names ``rules`` and lets nothing out."""
    assert answer.status is AnswerStatus.DENIED, answer
    assert not answer.decision.permitted
    assert answer.decision.rules == rules
    assert (answer.hit, answer.count, answer.buckets) == (False, None, ())
    assert (answer.fields, answer.rows) == ((), ())
    return answer


def near(count: Count | None, true: int) -> None:
    """A count released under the minimum K: noisy within its stated bound, never below K."""
    assert count is not None and not count.below_minimum, count
    assert count.noise_bound == bound(K) and count.minimum == K
    assert max(K, true - bound(K)) <= count.value <= true + bound(K), (count, true)


def near_buckets(buckets: tuple[Bucket, ...], true: dict[str | None, int]) -> None:
    """Count-by cells under K: the expected keys, each noisy within its bound."""
    assert {b.key for b in buckets} == set(true), buckets
    for b in buckets:
        near(Count(b.count, minimum=K, noise_bound=b.noise_bound), true[b.key])
    assert [b.count for b in buckets] == sorted((b.count for b in buckets), reverse=True)


def rows_by_sha(answer: QueryAnswer) -> dict[str, tuple[str | None, ...]]:
    """Answer rows keyed by their sha256 cell (which each query below releases)."""
    at = answer.fields.index("sha256")
    out = {row[at]: row for row in answer.rows}
    assert len(out) == len(answer.rows)
    assert all(sha is not None for sha in out)
    return {sha: row for sha, row in out.items() if sha is not None}


def shas(*items: Media) -> list[str]:
    return [m.sha256 for m in items]


CATEGORY_A = [m for m in MEDIA if m.category == "A"]
SHAREABLE_A = [m for m in CATEGORY_A if m.shareable]
HIDDEN = MEDIA[3]  # category A, not shareable
SHOWN = MEDIA[0]  # category A, shareable
DAY = [m.first_seen for m in MEDIA]

# --- transforms ------------------------------------------------------------------------


def test_redact_releases_only_that_a_value_is_there(agencies: Agencies, alpha: Node) -> None:
    answer = answered(
        agencies.ask(alpha, records(("sha256", "victim_identified"), eq("category", "A")))
    )

    assert answer.fields == ("sha256", "victim_identified")
    assert set(rows_by_sha(answer)) == set(shas(*SHAREABLE_A))
    assert {row[1] for row in answer.rows} == {"[redacted]"}
    assert "transform victim_identified: redact" in answer.decision.obligations


def test_month_and_year_transforms_truncate_dates(agencies: Agencies, alpha: Node) -> None:
    by_sha = {m.sha256: m for m in MEDIA}
    fields = ("sha256", "first_seen")

    monthly = answered(agencies.ask(alpha, records(fields, eq("category", "A"))))
    yearly = answered(
        agencies.ask(alpha, records(fields, eq("category", "A")), purpose="victim-identification")
    )

    assert monthly.decision.rules == ("partner-records",)
    assert yearly.decision.rules == ("victim-id-records",)
    for sha, (_, month) in rows_by_sha(monthly).items():
        assert month == by_sha[sha].first_seen.isoformat()[:7]
        assert re.fullmatch(r"\d{4}-\d{2}", month or "")
    assert len(yearly.rows) == len(CATEGORY_A)  # no row filter in this permit
    for sha, (_, year) in rows_by_sha(yearly).items():
        assert year == str(by_sha[sha].first_seen.year)
    assert "transform first_seen: month" in monthly.decision.obligations
    assert "transform first_seen: year" in yearly.decision.obligations


def test_a_map_generalises_released_values(agencies: Agencies, alpha: Node) -> None:
    severity = {"A": "severe", "B": "severe", "C": "other", "baseline": "other"}
    picked = [MEDIA[0], MEDIA[31], MEDIA[43], MEDIA[46]]  # A, B, C, baseline

    answer = answered(
        agencies.ask(
            alpha,
            records(("sha256", "category"), any_of("sha256", shas(*picked))),
            purpose="victim-identification",
        )
    )

    assert rows_by_sha(answer) == {m.sha256: (m.sha256, severity[m.category]) for m in picked}
    assert "transform category: map:severity" in answer.decision.obligations


def _keyed_hash(secret: bytes, scope: str, value: str) -> str:
    """node/transforms.py's documented construction: HMAC-SHA256 over scope NUL value."""
    digest = hmac.new(secret, f"{scope}\x00{value}".encode(), hashlib.sha256).hexdigest()
    return "kh:" + digest[:32]


def test_a_keyed_hash_is_stable_within_a_node_and_differs_between_nodes(
    agencies: Agencies,
) -> None:
    alpha, beta = agencies.node("alpha"), agencies.node("beta")
    assert alpha.transform_key != beta.transform_key
    query = records(("sha256", "case_ref"), eq("category", "A"))
    clear = {m.sha256: m.case_ref for m in MEDIA}

    first = rows_by_sha(answered(agencies.ask(alpha, query)))
    again = rows_by_sha(answered(agencies.ask(alpha, query, requester=DAVE)))
    other = rows_by_sha(answered(agencies.ask(beta, query)))

    assert set(first) == set(again) == set(other) == set(shas(*SHAREABLE_A))
    assert first == again  # the same value hashes the same in every answer of one node
    for sha, (_, hashed) in first.items():
        assert hashed is not None and re.fullmatch(r"kh:[0-9a-f]{32}", hashed)
        assert clear[sha] not in hashed
        assert hashed == _keyed_hash(alpha.transform_key, "media.case_ref", clear[sha])
        assert other[sha][1] == _keyed_hash(beta.transform_key, "media.case_ref", clear[sha])
        assert other[sha][1] != hashed
    # Two records of one case link to each other, and only to each other.
    links = Counter(hashed for _, hashed in first.values())
    cases = Counter(clear[sha] for sha in first)
    assert sorted(links.values()) == sorted(cases.values())
    assert max(links.values()) == 2


def test_a_keyed_hash_without_a_transform_key_refuses_to_start(agencies: Agencies) -> None:
    config = agencies.write("alpha")
    text = config.read_text()
    assert 'transform_key = "transform.key"' in text
    config.write_text(text.replace('transform_key = "transform.key"\n', ""))

    with pytest.raises(ConfigError, match=r"keyed-hash.*no `transform_key`"):
        build_node(load_node_config(config, CATALOG_V1))


def test_the_order_of_released_rows_does_not_reveal_redacted_values(
    agencies: Agencies, alpha: Node
) -> None:
    """Two databases that differ only in a redacted value must give the same answer."""
    query = records(("victim_identified", "sha256"), eq("category", "A"), limit=6)
    before = answered(agencies.ask(alpha, query))
    writer = sa.create_engine(f"sqlite:///{alpha.folder / 'agency.sqlite3'}")
    try:
        with writer.begin() as conn:
            conn.execute(EXHIBITS.update().values(victim=1 - EXHIBITS.c.victim))
    finally:
        writer.dispose()

    after = answered(agencies.ask(alpha, query))

    assert before.truncated and after.truncated
    assert after.rows == before.rows, "the order or choice of rows depends on a redacted value"


# --- row filters --------------------------------------------------------------------------


def test_records_never_include_a_row_the_filter_excludes(agencies: Agencies, alpha: Node) -> None:
    everything = answered(agencies.ask(alpha, records(("sha256", "category"), eq("category", "A"))))
    hidden_only = answered(
        agencies.ask(alpha, records(("sha256", "category"), eq("sha256", HIDDEN.sha256)))
    )

    assert set(rows_by_sha(everything)) == set(shas(*SHAREABLE_A))
    assert not set(rows_by_sha(everything)) & {m.sha256 for m in MEDIA if not m.shareable}
    assert hidden_only.rows == () and not hidden_only.truncated
    assert "only rows where shareable eq true" in everything.decision.obligations


def test_a_match_hits_only_among_rows_the_filter_keeps(agencies: Agencies, alpha: Node) -> None:
    assert not answered(agencies.ask(alpha, match(eq("sha256", HIDDEN.sha256)))).hit
    assert not answered(agencies.ask(alpha, match(eq("md5", HIDDEN.md5)))).hit
    assert answered(agencies.ask(alpha, match(eq("sha256", SHOWN.sha256)))).hit
    assert answered(agencies.ask(alpha, match(any_of("sha256", shas(HIDDEN, SHOWN))))).hit


def test_a_count_counts_only_rows_the_filter_keeps(agencies: Agencies, alpha: Node) -> None:
    def counted(*on: Predicate) -> Count | None:
        answer = answered(agencies.ask(alpha, count(*on), purpose="victim-identification"))
        assert answer.decision.rules == ("shareable-counts",)
        return answer.count

    assert counted(eq("category", "A")) == Count(len(SHAREABLE_A))
    assert counted() == Count(sum(m.shareable for m in MEDIA))
    assert counted(eq("sha256", HIDDEN.sha256)) == Count(0)
    assert counted(eq("sha256", SHOWN.sha256)) == Count(1)


@pytest.mark.parametrize(
    "query",
    [
        Query("accounts", Operation.MATCH, (eq("email", "s@one.example"),)),
        Query("accounts", Operation.COUNT, (eq("platform", "chatapp"),)),
        Query(
            "accounts",
            Operation.RECORDS,
            (eq("platform", "forumx"), eq("email", "s@one.example")),
            ("handle",),
        ),
    ],
    ids=["match", "count", "records"],
)
def test_a_row_filter_on_a_field_the_node_does_not_map_is_a_denial_naming_it(
    agencies: Agencies, alpha: Node, query: Query
) -> None:
    answer = agencies.ask(alpha, query, purpose="offender-identification")

    denied(answer, "account-records")
    assert "shareable" in answer.decision.reason
    assert "cannot be applied" in answer.decision.reason


# --- hidden fields and small cells ---------------------------------------------------------


def test_probing_a_hidden_field_through_predicates_is_denied_naming_it(
    agencies: Agencies, alpha: Node
) -> None:
    held, absent = MEDIA[0].case_ref, "RUR-999"
    probes = [
        (records(("category",), eq("case_ref", v)), "csam-investigation", "case_ref")
        for v in (held, absent)
    ] + [
        (count(eq("victim_identified", v)), "statistics", "victim_identified")
        for v in ("true", "false")
    ]
    deciding = {"case_ref": "partner-records", "victim_identified": "category-statistics"}

    answers = [(agencies.ask(alpha, q, purpose=p), field) for q, p, field in probes]

    for answer, field in answers:
        denied(answer, deciding[field])
        assert answer.decision.reason == f"matching on {field} is not permitted"
    # The denial says the same whether or not the value is held.
    decisions = [a.decision for a, _ in answers]
    assert decisions[0] == decisions[1] and decisions[2] == decisions[3]


def test_grouping_by_a_field_that_is_not_released_is_denied(
    agencies: Agencies, alpha: Node
) -> None:
    answer = agencies.ask(alpha, count_by("first_seen"), purpose="statistics")

    denied(answer, "category-statistics")
    assert answer.decision.reason == "grouping by 'first_seen' is not permitted"


def test_count_by_cells_below_the_minimum_never_appear(agencies: Agencies, alpha: Node) -> None:
    by_category = answered(agencies.ask(alpha, count_by("category"), purpose="statistics"))
    in_c = answered(
        agencies.ask(
            alpha, count_by("victim_identified", eq("category", "C")), purpose="statistics"
        )
    )

    # C (3) and baseline (3) fall below 5 and are not shown at all.
    near_buckets(by_category.buckets, {"A": 30, "B": 12})
    assert by_category.buckets_suppressed and by_category.bucket_minimum == K
    assert in_c.buckets == () and in_c.buckets_suppressed
    small = answered(agencies.ask(alpha, count(eq("category", "C")), purpose="statistics"))
    assert small.count == Count(0, below_minimum=True, minimum=K)


# The "other" cell below holds 6 records, and the noisy threshold for K = 5 is
# 5 to 7 depending on the node's secret and the set counted: with a random
# secret the cell is suppressed one run in three. This fixed test-only secret
# draws a threshold the cell passes, so the test shows the merge every run.
TEST_NOISE_KEY = "liaison-test-only-noise-key-0"


def test_a_map_merges_count_by_groups_before_the_minimum_applies(agencies: Agencies) -> None:
    agencies.write("alpha")
    state = agencies.folder("alpha") / "state"
    state.mkdir(exist_ok=True)
    (state / "noise.key").write_text(hashlib.sha256(TEST_NOISE_KEY.encode()).hexdigest() + "\n")
    alpha = agencies.start("alpha")

    merged = answered(
        agencies.ask(alpha, count_by("category"), requester=ERIN, purpose="statistics")
    )
    late = answered(
        agencies.ask(
            alpha,
            count_by("category", Predicate("first_seen", Comparator.GTE, (DAY[44].isoformat(),))),
            requester=ERIN,
            purpose="statistics",
        )
    )

    assert merged.decision.rules == ("severity-statistics",)
    # C (3) and baseline (3) are each below 5, but "other" holds 6 of them.
    near_buckets(merged.buckets, {"severe": 42, "other": 6})
    assert not merged.buckets_suppressed
    # From row 44 on: one C and three baseline, "other" = 4 < 5, so nothing is shown.
    assert late.buckets == () and late.buckets_suppressed


# --- rate limits -------------------------------------------------------------------------


def _lookup(agencies: Agencies, node: Node, requester: Requester, values: list[str]) -> QueryAnswer:
    on = eq("sha256", values[0]) if len(values) == 1 else any_of("sha256", values)
    return agencies.ask(node, match(on), requester=requester)


ALL_SHAS = shas(*MEDIA)


def test_a_per_investigator_limit_counts_each_investigator_apart(agencies: Agencies) -> None:
    node = agencies.node("alpha", RATE_POLICY)

    for sha in ALL_SHAS[:10]:
        answered(_lookup(agencies, node, ALICE, [sha]))
    over = _lookup(agencies, node, ALICE, [ALL_SHAS[10]])

    denied(over, "hash-lookup")
    answered(_lookup(agencies, node, BOB, [ALL_SHAS[10]]))


def test_splitting_an_in_query_into_single_queries_costs_the_same(agencies: Agencies) -> None:
    """Rate-limit evasion by splitting queries: ten values cost ten, however they are sent."""
    node = agencies.node("alpha", RATE_POLICY)
    ten = ALL_SHAS[:10]

    # Alice asks once for ten values: her hour is spent.
    answered(_lookup(agencies, node, ALICE, ten))
    denied(_lookup(agencies, node, ALICE, [ALL_SHAS[11]]), "hash-lookup")
    # Bob asks ten times for one value: his hour is spent too.
    for sha in ten:
        answered(_lookup(agencies, node, BOB, [sha]))
    denied(_lookup(agencies, node, BOB, [ALL_SHAS[11]]), "hash-lookup")
    # Carol has one value left after nine: two cost too much, and a refused query costs nothing.
    for sha in ten[:9]:
        answered(_lookup(agencies, node, CAROL, [sha]))
    denied(_lookup(agencies, node, CAROL, ALL_SHAS[20:22]), "hash-lookup")
    answered(_lookup(agencies, node, CAROL, [ALL_SHAS[20]]))
    denied(_lookup(agencies, node, CAROL, [ALL_SHAS[21]]), "hash-lookup")


def test_a_per_agency_limit_is_shared_by_the_agency_alone(agencies: Agencies) -> None:
    node = agencies.node("alpha", RATE_POLICY)

    def lookup(requester: Requester, values: list[str]) -> QueryAnswer:
        on = any_of("sha256", values)
        return agencies.ask(node, match(on), requester=requester, purpose="victim-identification")

    answered(lookup(ALICE, ALL_SHAS[:6]))
    answered(lookup(BOB, ALL_SHAS[6:12]))
    denied(lookup(CAROL, ALL_SHAS[12:13]), "agency-lookup")
    answered(lookup(DAVE, ALL_SHAS[:12]))


def test_a_rate_limit_survives_a_node_restart(agencies: Agencies) -> None:
    node = agencies.node("alpha", RATE_POLICY)
    answered(_lookup(agencies, node, ALICE, ALL_SHAS[:10]))
    node.stack.close()
    assert (agencies.folder("alpha") / "state" / "receipts.sqlite3").exists()

    restarted = agencies.start("alpha")

    denied(_lookup(agencies, restarted, ALICE, [ALL_SHAS[10]]), "hash-lookup")
    answered(_lookup(agencies, restarted, BOB, [ALL_SHAS[10]]))


def test_a_rate_limit_denial_names_the_rule_and_says_when_to_try_again(
    agencies: Agencies,
) -> None:
    node = agencies.node("alpha", RATE_POLICY)
    answered(_lookup(agencies, node, ALICE, ALL_SHAS[:10]))

    over = denied(_lookup(agencies, node, ALICE, [ALL_SHAS[10]]), "hash-lookup")

    reason = over.decision.reason
    assert "hash-lookup" in reason
    assert "10 per 3600 s per investigator" in reason
    assert re.search(r"try again (in|after|at) [^;]*\d", reason), (
        f"the denial does not say when the limit frees up: {reason!r}"
    )
    # The explanation says the node, not the policy engine, refused it.
    assert over.decision.explanation[-1] == f"node: {reason}"


# --- the differencing guard ------------------------------------------------------------------


def _stats(
    agencies: Agencies, node: Node, query: Query, requester: Requester = ALICE
) -> QueryAnswer:
    return agencies.ask(node, query, requester=requester, purpose="statistics")


def test_a_count_that_differs_from_a_recent_one_by_fewer_than_k_is_refused(
    agencies: Agencies, alpha: Node
) -> None:
    first = answered(_stats(agencies, alpha, count(eq("category", "A"))))
    # Everything in A but the one record first seen after row 28.
    second = _stats(agencies, alpha, count(eq("category", "A"), up_to(DAY[28])))

    near(first.count, 30)
    denied(second, GUARD_RULE)
    assert f"fewer than {K} records" in second.decision.reason


def test_counts_that_differ_by_k_or_more_are_answered(agencies: Agencies, alpha: Node) -> None:
    answered(_stats(agencies, alpha, count(eq("category", "A"))))

    second = answered(_stats(agencies, alpha, count(eq("category", "A"), up_to(DAY[24]))))

    near(second.count, 25)


def test_a_suppressed_count_cannot_be_subtracted_so_the_pair_is_answered(
    agencies: Agencies, alpha: Node
) -> None:
    exact = answered(_stats(agencies, alpha, count(eq("category", "A"))))
    small = answered(_stats(agencies, alpha, count(eq("category", "A"), up_to(DAY[2]))))
    # The other way round, for another agency: the small one first.
    small_first = answered(_stats(agencies, alpha, count(eq("category", "A"), up_to(DAY[2])), DAVE))
    exact_after = answered(_stats(agencies, alpha, count(eq("category", "A")), DAVE))

    # Sticky: the same set of records gets the same noise, whoever asks.
    assert exact.count == exact_after.count
    near(exact.count, 30)
    assert small.count == small_first.count == Count(0, below_minimum=True, minimum=K)


def test_count_by_cells_are_guarded_one_by_one(agencies: Agencies, alpha: Node) -> None:
    first = answered(_stats(agencies, alpha, count_by("category")))
    # Up to row 40: A unchanged, B loses one record (row 41).
    second = _stats(agencies, alpha, count_by("category", up_to(DAY[40])))

    near_buckets(first.buckets, {"A": 30, "B": 12})
    denied(second, GUARD_RULE)


def test_another_investigators_history_does_not_refuse_a_count(
    agencies: Agencies, alpha: Node
) -> None:
    answered(_stats(agencies, alpha, count(eq("category", "A")), ALICE))

    other = answered(_stats(agencies, alpha, count(eq("category", "A"), up_to(DAY[28])), DAVE))
    colleague = answered(_stats(agencies, alpha, count(eq("category", "A"), up_to(DAY[28])), BOB))

    near(other.count, 29)
    # The guard's memory is per investigator (a colleague is not refused: the
    # noise, not the guard, covers answers pooled within an agency) ...
    assert colleague.count == other.count
    # ... while the first investigator is still refused.
    denied(_stats(agencies, alpha, count(eq("category", "A"), up_to(DAY[28])), ALICE), GUARD_RULE)


def test_a_count_by_cell_cannot_be_differenced_by_a_count(agencies: Agencies, alpha: Node) -> None:
    """count_by(category) shows A = 30; a count of A but one record must not be answered exactly."""
    grouped = answered(_stats(agencies, alpha, count_by("category")))
    assert "A" in {b.key for b in grouped.buckets}

    narrower = _stats(agencies, alpha, count(eq("category", "A"), up_to(DAY[28])))

    assert narrower.count != Count(29, minimum=K), (
        "count_by then count isolated one record: 30 - 29 = 1"
    )
    denied(narrower, GUARD_RULE)


def test_the_guard_cannot_be_flushed_by_asking_empty_counts(
    agencies: Agencies, alpha: Node
) -> None:
    """The guard remembers a day of queries, not only the last few."""
    answered(_stats(agencies, alpha, count(eq("category", "A"))))
    for n in range(20):
        empty = answered(_stats(agencies, alpha, count(eq("category", f"Z{n}"))))
        assert empty.count == Count(0, below_minimum=True, minimum=K)

    narrower = _stats(agencies, alpha, count(eq("category", "A"), up_to(DAY[28])))

    assert narrower.count != Count(29, minimum=K), "20 empty counts flushed count(A) from memory"
    denied(narrower, GUARD_RULE)


# --- the demo agencies' own policies --------------------------------------------------


def test_the_demo_ruritania_node_meets_its_conditions_and_obligations(
    federation_dir: Path,
) -> None:
    """Clearance, shareable rows and months for records; a legal basis for accounts; severity
    groups of ten or more for statistics."""
    probe = probes()
    cleared = Requester(
        "genovia", "inv.alice", ("investigator",), "https://idp.genovia.example", DEMO_ATTRIBUTES
    )
    uncleared = replace(cleared, attributes={"unit": "victim-identification"})
    with ExitStack() as stack:
        agencies = Agencies(federation_dir, stack, existing=True)
        node = agencies.start("ruritania")
        media = records(("category", "first_seen", "case_ref"), eq("sha256", probe.shared_sha256))
        account = Query(
            "accounts", Operation.RECORDS, (eq("email", probe.shared_email),), ("handle", "ip")
        )

        shown = answered(agencies.ask(node, media, requester=cleared))
        not_shown = agencies.ask(node, media, requester=uncleared)
        no_basis = agencies.ask(node, account, purpose="offender-identification")
        with_basis = agencies.ask(
            node, account, purpose="offender-identification", legal_basis="eu-2016-680-art-8"
        )
        stats = answered(agencies.ask(node, count_by("category"), purpose="statistics"))

    assert shown.decision.rules == ("partner-media-records",)
    assert shown.rows and all(re.fullmatch(r"\d{4}-\d{2}", row[1] or "") for row in shown.rows)
    assert "only rows where shareable eq true" in shown.decision.obligations
    denied(not_shown, "default-deny")
    assert "requester has no 'clearance' attribute" in not_shown.decision.reason
    denied(no_basis, "default-deny")
    assert "legal basis none is not one of" in no_basis.decision.reason
    assert answered(with_basis).fields == ("handle",)
    assert with_basis.withheld_fields == ("ip",)
    assert {b.key for b in stats.buckets} <= {"severe", "other"}
    assert all(b.count >= 10 for b in stats.buckets)
    assert "transform category: map:severity" in stats.decision.obligations
