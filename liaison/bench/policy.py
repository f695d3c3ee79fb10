"""`make bench` (second part): our policy decisions against Cedar's, same requests.

Builds a realistic policy (30 agencies, groups, about a hundred permits and
ten forbids, with conditions and obligations) through the policy loader, and
random requests against it, both from a fixed seed. Then measures each
request through both engines in turn, rotating which goes first, so that
drift hits both alike:

* liaison: ``policies.decide`` plus ``decision.obligations``, what a node
  computes per query;
* cedar: ``cedarpy.is_authorized`` on the same requests translated by
  ``policies.cedar``, with everything that can be parsed once parsed once: a
  ``PolicySet`` handle, an ``Entities`` handle holding every requester of the
  run, and the context as ready JSON text. Only the call is timed (the
  translation is not), so the ratio errs in Cedar's favour.

Our decision is small enough that the CPU caches matter: right after a Cedar
call (or, in a node, after verifying a signature and running SQL) it takes
about twice as long as in a tight loop. So the report also shows both engines
with warm caches (blocks of requests through one engine, then the other), and
batch throughput (``is_authorized_batch`` against a loop of ``decide``). As
diagnostics of Cedar's side: parsing the requester's entities per request
(what a node would have to do, since requesters arrive with the request) and
the floor of cedarpy's private extension call, without its Python wrapper.
Every request's allow/deny is compared between the two engines first; any
disagreement fails the run.

The aim, from the issue: our decision at least 10x faster than Cedar's (p50).
When it is missed, the report shows where our decision spends its time.

    python -m liaison.bench.policy [--requests N] [--warmup N] [--seed N] [--profile] [--json]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import random
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, TextIO

import cedarpy

from liaison.bench.runner import (
    BenchFailed,
    Summary,
    at_least,
    bench_main,
    machine,
    positive,
    ratios,
)
from liaison.catalog import CATALOG_V1
from liaison.cli import render
from liaison.messages import Requester
from liaison.query import Comparator, Operation, Predicate, Query
from policies import Policy, decide, parse_policy
from policies.cedar import policy_to_cedar, request_to_cedar

AIM_SPEEDUP = 10.0
# A node's typical answer to one query (verify, decide, SQL, sign), in ms.
NODE_ANSWER_MS = 2.0
BATCH_REPEATS = 5
# Requests per path per turn when measuring with warm caches.
WARM_BLOCK = 50
PROFILE_TOP = 12

AGENCIES = (
    "freedonia", "ruritania", "sylvania", "genovia", "elbonia", "latveria",
    "borduria", "syldavia", "molvania", "grand-fenwick", "kyrzbekistan", "qumar",
    "carpathia", "pottsylvania", "krakozhia", "zubrowka", "orsinia", "vulgaria",
    "tomainia", "bacteria", "osterlich", "markovia", "ardistan", "khemed",
    "san-theodoros", "nuevo-rico", "petoria", "sokovia", "wadiya", "zamunda",
)  # fmt: skip
GROUPS = {
    "eu-partners": AGENCIES[0:8],
    "nordic": AGENCIES[8:13],
    "five-eyes": AGENCIES[13:18],
    "interpol-hubs": (AGENCIES[0], AGENCIES[5], AGENCIES[10], AGENCIES[15], AGENCIES[20]),
    "observers": AGENCIES[24:28],
    "suspended": AGENCIES[28:30],
}
PREFIXES = {a: a[:3].upper() for a in AGENCIES}
LEGAL_BASES = ("eu-2016-680-art-8", "budapest-convention-art-29", "mla-treaty", "court-order")
CLEARANCES = ("restricted", "secret", "public")
UNITS = ("victim-identification", "cybercrime", "external")
ROLE_SETS = (
    ("investigator",),
    ("investigator",),
    ("investigator", "senior-investigator"),
    ("analyst",),
    ("analyst", "investigator"),
    ("trainee",),
)

# Per dataset: fields to match on, to release, and to count by.
MATCHABLE = {
    "media": ("sha256", "md5", "pdq"),
    "accounts": ("email", "handle", "ip", "platform"),
    "cases": ("case_ref", "offence", "status", "jurisdiction"),
}
RELEASABLE = {
    "media": ("category", "first_seen", "case_ref", "victim_identified"),
    "accounts": ("platform", "handle", "first_seen", "last_seen", "case_ref"),
    "cases": ("offence", "status", "opened", "jurisdiction", "contact"),
}
COUNTABLE = {
    "media": ("category", "first_seen"),
    "accounts": ("platform", "first_seen"),
    "cases": ("offence", "status", "jurisdiction", "opened"),
}
TRANSFORMS = {
    "handle": "keyed-hash",
    "case_ref": "keyed-hash",
    "first_seen": "month",
    "last_seen": "month",
    "opened": "year",
    "category": "map:severity",
    "contact": "redact",
}
ROW_FILTERS: dict[str, list[dict[str, Any]]] = {
    "media": [{"field": "shareable", "eq": "true"}],
    "accounts": [{"field": "shareable", "eq": "true"}],
    "cases": [{"field": "status", "in": ["open", "referred"]}],
}
SAMPLE_VALUES = {
    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "md5": "9dd4e461268c8034f5c8564e155c67a6",
    "pdq": "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22",
    "email": "someone@mail.example",
    "handle": "someone",
    "ip": "192.0.2.7",
    "platform": "chat.example",
    "case_ref": "GEN-2026-0142",
    "offence": "csam-distribution",
    "status": "open",
    "jurisdiction": "FR",
    "category": "A",
}


# --- the policy and the requests --------------------------------------------


def _agencies(rng: random.Random) -> list[str]:
    roll = rng.random()
    if roll < 0.15:
        return ["*"]
    if roll < 0.55:
        names = [f"group:{rng.choice(sorted(set(GROUPS) - {'suspended'}))}"]
        return names + rng.sample(AGENCIES, rng.randint(0, 1))
    return rng.sample(AGENCIES, rng.randint(1, 4))


def _permit(rng: random.Random, index: int) -> dict[str, Any]:
    kind = rng.choices(("match", "records", "statistics"), (35, 35, 30))[0]
    dataset = rng.choice(sorted(MATCHABLE))
    rule: dict[str, Any] = {
        "id": f"{dataset}-{kind}-{index:03d}",
        "effect": "permit",
        "description": f"Generated {kind} permit on {dataset}.",
        "agencies": _agencies(rng),
        "datasets": [dataset],
    }
    if kind == "statistics":
        rule["roles"] = rng.choice((["*"], ["analyst", "investigator"]))
        rule["purposes"] = ["statistics"]
        rule["operations"] = rng.choice((["count"], ["count", "count_by"]))
        fields = rng.sample(COUNTABLE[dataset], rng.randint(1, len(COUNTABLE[dataset])))
        rule["match_fields"] = fields
        rule["release"] = fields
        rule["min_count"] = rng.choice((5, 10, 25))
        rule["rate_limit"] = {"agency": f"{rng.choice((100, 500))}/day"}
        return rule
    rule["roles"] = rng.choice((["investigator"], ["investigator", "senior-investigator"]))
    rule["purposes"] = (
        ["csam-investigation", "offender-identification"]
        if dataset == "accounts"
        else ["csam-investigation", "victim-identification"]
    )
    rule["match_fields"] = rng.sample(MATCHABLE[dataset], rng.randint(1, len(MATCHABLE[dataset])))
    rule["rate_limit"] = {"investigator": f"{rng.choice((100, 500, 2000))}/hour"}
    if kind == "match":
        rule["operations"] = ["match"]
    else:
        rule["operations"] = rng.choice((["records"], ["match", "records"]))
        release = rng.sample(RELEASABLE[dataset], rng.randint(1, len(RELEASABLE[dataset])))
        rule["release"] = release
        rule["transforms"] = {f: TRANSFORMS[f] for f in release if f in TRANSFORMS}
        if rng.random() < 0.6:
            rule["row_filters"] = ROW_FILTERS[dataset]
        rule["max_rows"] = rng.choice((10, 25, 50, 100))
        if rng.random() < 0.4:
            rule["attributes"] = {"clearance": ["restricted", "secret"]}
    if rng.random() < 0.1:
        rule.setdefault("attributes", {})["unit"] = list(UNITS[:2])
    if rng.random() < 0.25 and rule["agencies"] != ["*"]:
        rule["case_ref"] = f"{PREFIXES[rng.choice(AGENCIES)]}-*"
    if dataset == "accounts" and rng.random() < 0.5:
        rule["legal_bases"] = rng.sample(LEGAL_BASES, 2)
    return rule


def _forbid(rule_id: str, description: str, **scope: Any) -> dict[str, Any]:
    rule = {"agencies": ["*"], "roles": ["*"], "purposes": ["*"], "datasets": ["*"]}
    rule |= {"operations": ["*"], **scope}
    return {"id": rule_id, "effect": "forbid", "description": description, **rule}


FORBIDS = (
    _forbid("no-trainees", "Trainees get no answers.", roles=["trainee"]),
    _forbid(
        "no-account-statistics",
        "Account data is never counted.",
        purposes=["statistics"],
        datasets=["accounts"],
    ),
    _forbid(
        "no-ip-statistics", "IPs are never in statistics.", purposes=["statistics"], fields=["ip"]
    ),
    _forbid("suspended-agencies", "Cooperation suspended.", agencies=["group:suspended"]),
    _forbid(
        "contact-needs-secret",
        "Desk contacts go to secret clearance only.",
        attributes={"clearance": ["restricted", "public"]},
        fields=["contact"],
    ),
    _forbid("no-test-cases", "Test case numbers are refused.", case_ref="TEST-*"),
    _forbid(
        "no-email-for-victim-id",
        "E-mail addresses are not used for victim identification.",
        purposes=["victim-identification"],
        datasets=["accounts"],
        fields=["email"],
    ),
    _forbid(
        "public-clearance-no-records",
        "Public clearance sees no records.",
        attributes={"clearance": ["public"]},
        operations=["records"],
    ),
    _forbid(
        "observers-no-perceptual-hashes",
        "Observers do not match on perceptual hashes.",
        agencies=["group:observers"],
        fields=["pdq"],
    ),
    _forbid(
        "external-units-no-cases",
        "External units see no case data.",
        attributes={"unit": ["external"]},
        datasets=["cases"],
    ),
)


def build_policy(seed: int, permits: int = 100) -> Policy:
    """The benchmark policy, through the loader as a node's own would go."""
    rng = random.Random(seed)
    document = {
        "version": 1,
        "agency": "benchland",
        "groups": {name: list(members) for name, members in GROUPS.items()},
        "maps": {"severity": {"A": "severe", "B": "severe", "C": "other"}},
        "rule": [_permit(rng, i) for i in range(permits)] + list(FORBIDS),
    }
    return parse_policy(document, CATALOG_V1)


@dataclass(frozen=True, slots=True)
class Ask:
    requester: Requester
    purpose: str
    query: Query
    case_ref: str
    legal_basis: str


def build_requests(seed: int, n: int) -> list[Ask]:
    """Requests of the kinds investigators send, from agencies in and out of the policy."""
    rng = random.Random(seed + 1)
    out = []
    for i in range(n):
        agency = rng.choice((*AGENCIES, "elsewhere", "nowhere", "atlantis"))
        attributes = {}
        if rng.random() < 0.7:
            attributes["clearance"] = rng.choice(CLEARANCES)
        if rng.random() < 0.3:
            attributes["unit"] = rng.choice(UNITS)
        requester = Requester(
            agency,
            f"inv-{i:06d}",
            rng.choice(ROLE_SETS),
            f"https://idp.{agency}.example",
            attributes,
        )
        dataset = rng.choice(sorted(MATCHABLE))
        op = rng.choices(list(Operation), (40, 15, 15, 30))[0]
        if op in (Operation.COUNT, Operation.COUNT_BY):
            purpose = "statistics" if rng.random() < 0.85 else rng.choice(CATALOG_V1.purposes)
            pool = COUNTABLE[dataset]
            names = rng.sample(pool, rng.randint(0, 1))
        else:
            purpose = rng.choice(CATALOG_V1.purposes[:3])
            pool = MATCHABLE[dataset]
            names = rng.sample(pool, rng.randint(1, 2))
        predicates = tuple(
            Predicate(name, Comparator.EQ, (SAMPLE_VALUES.get(name, "2024-01-01"),))
            for name in names
        )
        fields: tuple[str, ...] = ()
        if op is Operation.RECORDS:
            every = CATALOG_V1.dataset(dataset).field_names
            fields = tuple(rng.sample(every, rng.randint(1, 4)))
        group_by = rng.choice(COUNTABLE[dataset]) if op is Operation.COUNT_BY else None
        prefix = PREFIXES.get(agency, "XXX") if rng.random() < 0.8 else "TEST"
        out.append(
            Ask(
                requester,
                purpose,
                Query(dataset, op, predicates, fields, group_by),
                f"{prefix}-2026-{rng.randint(1, 9999):04d}",
                rng.choice(LEGAL_BASES) if rng.random() < 0.4 else "",
            )
        )
    return out


# --- the deciders -----------------------------------------------------------


def liaison_decider(policy: Policy, asks: Sequence[Ask]) -> Callable[[int], bool]:
    """Decide request ``i`` as a node does: the decision and its obligations."""

    def run(i: int) -> bool:
        a = asks[i]
        decision = decide(
            policy, a.requester, a.purpose, a.query, case_ref=a.case_ref, legal_basis=a.legal_basis
        )
        decision.obligations  # noqa: B018  the node computes them for every answer
        return decision.permitted

    return run


@dataclass(frozen=True)
class CedarInputs:
    policies: cedarpy.PolicySet
    entities: cedarpy.Entities  # every requester of the run, parsed once
    requests: list[dict[str, Any]]  # context as ready JSON text
    entities_json: list[str]  # each request's own entities, for the per-request diagnostic


def cedar_inputs(policy: Policy, asks: Sequence[Ask]) -> CedarInputs:
    requests = []
    per_request = []
    everyone: dict[str, dict[str, Any]] = {}
    for a in asks:
        translated = request_to_cedar(
            a.requester, a.purpose, a.query, case_ref=a.case_ref, legal_basis=a.legal_basis
        )
        request = translated.request()
        request["context"] = json.dumps(request["context"])
        requests.append(request)
        per_request.append(json.dumps(list(translated.entities)))
        for entity in translated.entities:
            everyone[json.dumps(entity["uid"], sort_keys=True)] = entity
    return CedarInputs(
        policies=cedarpy.PolicySet.from_str(policy_to_cedar(policy)),
        entities=cedarpy.Entities.from_json_str(json.dumps(list(everyone.values()))),
        requests=requests,
        entities_json=per_request,
    )


def cedar_decider(inputs: CedarInputs) -> Callable[[int], bool]:
    """The fastest public path: pre-parsed policies and entities, context as JSON text."""
    policies, entities, requests = inputs.policies, inputs.entities, inputs.requests

    def run(i: int) -> bool:
        return cedarpy.is_authorized(requests[i], policies, entities).allowed

    return run


def cedar_per_request_decider(inputs: CedarInputs) -> Callable[[int], bool]:
    """As a node would: the requester's entities arrive with the request and are parsed."""
    policies, entities, requests = inputs.policies, inputs.entities_json, inputs.requests

    def run(i: int) -> bool:
        return cedarpy.is_authorized(requests[i], policies, entities[i]).allowed

    return run


def cedar_floor_decider(inputs: CedarInputs) -> Callable[[int], bool]:
    """cedarpy's private extension call, without its Python wrapper: Cedar's floor."""
    policies, entities, requests = inputs.policies, inputs.entities, inputs.requests
    call = cedarpy._internal.is_authorized
    inner = entities._inner

    def run(i: int) -> bool:
        return '"Allow"' in call(requests[i], policies, inner, None, False)

    return run


# --- measuring --------------------------------------------------------------


def measure(
    paths: Mapping[str, Callable[[int], bool]],
    n: int,
    *,
    warmup: int,
    progress: TextIO,
) -> dict[str, list[float]]:
    """Each request through every path in turn, rotating which goes first."""
    keys = list(paths)
    samples: dict[str, list[float]] = {k: [] for k in keys}
    clock = time.perf_counter_ns
    step = max(1, n // 10)
    gc.collect()
    for i in range(warmup + n):
        turn = i % len(keys)
        for key in keys[turn:] + keys[:turn]:
            run = paths[key]
            started = clock()
            run(i % n)
            elapsed = clock() - started
            if i >= warmup:
                samples[key].append(elapsed / 1000)
        done = i + 1 - warmup
        if done == 0:
            print(f"  warm-up done ({warmup} requests)", file=progress)
        elif done > 0 and (done % step == 0 or done == n):
            print(f"  measured {done}/{n} requests", file=progress)
    return samples


def measure_in_blocks(
    paths: Mapping[str, Callable[[int], bool]], n: int, *, block: int, progress: TextIO
) -> dict[str, list[float]]:
    """``block`` requests through one path, then the same through the next, rotating.

    Still interleaved against drift, but each path runs with its own code and
    data warm in the CPU caches, as it would with no other work in between.
    """
    keys = list(paths)
    samples: dict[str, list[float]] = {k: [] for k in keys}
    clock = time.perf_counter_ns
    gc.collect()
    for round_, start in enumerate(range(0, n, block)):
        turn = round_ % len(keys)
        for key in keys[turn:] + keys[:turn]:
            run, out = paths[key], samples[key]
            for i in range(start, min(start + block, n)):
                started = clock()
                run(i)
                out.append((clock() - started) / 1000)
    print(f"  measured {n} requests in blocks of {block}", file=progress)
    return samples


def batch_throughput(
    decide_one: Callable[[int], bool], inputs: CedarInputs, n: int, progress: TextIO
) -> dict[str, float]:
    """Microseconds per decision over the whole set: a loop of ours, one batch call of Cedar's."""
    ours: list[float] = []
    cedar: list[float] = []
    for repeat in range(BATCH_REPEATS):
        for side in ("ours", "cedar") if repeat % 2 == 0 else ("cedar", "ours"):
            started = time.perf_counter_ns()
            if side == "ours":
                for i in range(n):
                    decide_one(i)
                ours.append((time.perf_counter_ns() - started) / 1000 / n)
            else:
                cedarpy.is_authorized_batch(inputs.requests, inputs.policies, inputs.entities)
                cedar.append((time.perf_counter_ns() - started) / 1000 / n)
        print(f"  batch round {repeat + 1}/{BATCH_REPEATS}", file=progress)
    liaison_us, cedar_us = statistics.median(ours), statistics.median(cedar)
    return {
        "liaison_loop_us": round(liaison_us, 2),
        "cedar_batch_us": round(cedar_us, 2),
        "ratio": round(cedar_us / liaison_us, 2),
    }


def profile(decide_one: Callable[[int], bool], n: int) -> list[dict[str, Any]]:
    """Where our decision spends its time (cProfile, own time per function)."""
    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(n):
        decide_one(i)
    profiler.disable()
    stats = pstats.Stats(profiler)
    # pstats keeps its table in an attribute its type stubs do not declare.
    table: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    total = sum(row[2] for row in table.values()) or 1.0
    rows = sorted(table.items(), key=lambda item: item[1][2], reverse=True)[:PROFILE_TOP]
    out = []
    for (filename, line, name), (_, calls, own, cumulative, _) in rows:
        where = filename.rsplit("/", 2)
        label = f"{'/'.join(where[-2:])}:{line}({name})" if line else name
        out.append(
            {
                "function": label,
                "calls_per_decision": round(calls / n, 2),
                "own_us_per_decision": round(own * 1e6 / n, 2),
                "own_share": round(own / total, 3),
                "cumulative_us_per_decision": round(cumulative * 1e6 / n, 2),
            }
        )
    return out


def agreement(
    ours: Callable[[int], bool], inputs: CedarInputs, asks: Sequence[Ask]
) -> tuple[int, list[str]]:
    """How many requests both allow, and every request on which the engines differ."""
    results = cedarpy.is_authorized_batch(inputs.requests, inputs.policies, inputs.entities)
    permitted, differ = 0, []
    for i, result in enumerate(results):
        mine = ours(i)
        if result.diagnostics.errors or mine != result.allowed:
            differ.append(
                f"request {i} {asks[i]!r}: liaison {'allows' if mine else 'denies'}, "
                f"Cedar {result.decision.value} {result.diagnostics.errors or ''}".rstrip()
            )
        permitted += mine and result.allowed
    return permitted, differ


# --- the run and its report -------------------------------------------------


def run(args: argparse.Namespace, progress: TextIO) -> dict[str, Any]:
    print(f"building the policy and {args.requests} requests (seed {args.seed})", file=progress)
    policy = build_policy(args.seed)
    asks = build_requests(args.seed, args.requests)
    inputs = cedar_inputs(policy, asks)
    ours = liaison_decider(policy, asks)
    print("checking that both engines decide every request alike", file=progress)
    permitted, differ = agreement(ours, inputs, asks)
    if differ:
        raise BenchFailed(
            f"{len(differ)} of {len(asks)} requests decided differently; first: {differ[0]}"
        )
    print(f"measuring {args.requests} requests after {args.warmup} warm-up requests", file=progress)
    samples = measure(
        {"liaison": ours, "cedar": cedar_decider(inputs)},
        args.requests,
        warmup=args.warmup,
        progress=progress,
    )
    summaries = {key: Summary.of(values) for key, values in samples.items()}
    print("measuring Cedar's other paths against its public one", file=progress)
    other_samples = measure(
        {
            "cedar": cedar_decider(inputs),
            "cedar_entities_per_request": cedar_per_request_decider(inputs),
            "cedar_private_floor": cedar_floor_decider(inputs),
        },
        args.requests,
        warmup=0,
        progress=progress,
    )
    others = {key: Summary.of(values) for key, values in other_samples.items()}
    print("measuring with warm caches (blocks of requests)", file=progress)
    warm = measure_in_blocks(
        {"liaison": ours, "cedar": cedar_decider(inputs)},
        args.requests,
        block=WARM_BLOCK,
        progress=progress,
    )
    warm_summaries = {key: Summary.of(values) for key, values in warm.items()}
    print("measuring batch throughput", file=progress)
    batch = batch_throughput(ours, inputs, args.requests, progress)
    liaison_s, cedar_s = summaries["liaison"], summaries["cedar"]
    ratio = ratios(cedar_s, liaison_s, digits=2)
    met = ratio["p50"] >= AIM_SPEEDUP
    top = None
    if not met or args.profile:
        print("profiling our decision", file=progress)
        top = profile(ours, args.requests)
    rules = policy.rules
    return {
        "machine": machine(cedarpy=version("cedarpy")),
        "settings": {
            "requests": args.requests,
            "warmup": args.warmup,
            "seed": args.seed,
            "node_answer_ms": args.node_answer_ms,
        },
        "policy": {
            "agencies": len(AGENCIES),
            "groups": len(GROUPS),
            "permits": sum(r.effect.value == "permit" for r in rules),
            "forbids": sum(r.effect.value == "forbid" for r in rules),
            "with_conditions": sum(
                bool(r.attributes or r.case_ref_pattern or r.legal_bases) for r in rules
            ),
            "with_obligations": sum(
                bool(r.transforms or r.row_filters or r.rate_limits or r.min_count) for r in rules
            ),
        },
        "requests": {"count": len(asks), "permitted": permitted, "disagreements": len(differ)},
        "cedar_api": (
            "cedarpy.is_authorized(request, PolicySet, Entities) with the context as JSON "
            "text: policies and entities parsed once (cedarpy's pre-parsed handles)"
        ),
        "latency_us": {key: s.as_dict(unit="us") for key, s in summaries.items()},
        "speedup_over_cedar": ratio,
        "cedar_paths_us": {key: s.as_dict(unit="us") for key, s in others.items()},
        "speedup_over_cedar_private_floor": ratios(
            others["cedar_private_floor"], liaison_s, digits=2
        ),
        "warm_latency_us": {
            "block": WARM_BLOCK,
            **{key: s.as_dict(unit="us") for key, s in warm_summaries.items()},
            "speedup_over_cedar": ratios(
                warm_summaries["cedar"], warm_summaries["liaison"], digits=2
            ),
        },
        "batch_us_per_decision": batch,
        "share_of_node_answer": {
            "liaison_p50": round(liaison_s.p50 / (args.node_answer_ms * 1000), 5),
            "cedar_p50": round(cedar_s.p50 / (args.node_answer_ms * 1000), 5),
        },
        "aim": {"speedup_at_least": AIM_SPEEDUP, "met": met},
        "profile": top,
    }


LABELS = {
    "liaison": "liaison: decide + obligations",
    "cedar": "cedar: is_authorized, pre-parsed policies and entities",
    "cedar_entities_per_request": "cedar: the requester's entities parsed per request",
    "cedar_private_floor": "cedar: private extension call, no wrapper (floor)",
}


def render_report(doc: dict[str, Any]) -> str:
    lat, st, mc, pol = doc["latency_us"], doc["settings"], doc["machine"], doc["policy"]
    warm, others = doc["warm_latency_us"], doc["cedar_paths_us"]

    def row(label: str, s: Mapping[str, float]) -> list[str]:
        return [label, f"{s['p50_us']:.1f}", f"{s['p99_us']:.1f}", f"{s['mean_us']:.1f}"]

    def ratio_row(label: str, r: Mapping[str, float]) -> list[str]:
        return [label, f"{r['p50']:.1f}x", f"{r['p99']:.1f}x", f"{r['mean']:.1f}x"]

    speedup = doc["speedup_over_cedar"]
    reqs = doc["requests"]
    main = [
        row(LABELS["liaison"], lat["liaison"]),
        row(LABELS["cedar"], lat["cedar"]),
        ratio_row("speed-up (cedar / liaison)", speedup),
    ]
    block = warm["block"]
    warm_rows = [
        row(LABELS["liaison"], warm["liaison"]),
        row(LABELS["cedar"], warm["cedar"]),
        ratio_row("speed-up (cedar / liaison)", warm["speedup_over_cedar"]),
    ]
    cedar_rows = [
        row(LABELS[key], others[key])
        for key in ("cedar", "cedar_entities_per_request", "cedar_private_floor")
    ] + [ratio_row("floor / liaison above", doc["speedup_over_cedar_private_floor"])]
    b = doc["batch_us_per_decision"]
    share = doc["share_of_node_answer"]
    node_us = st["node_answer_ms"] * 1000
    lines = [
        f"Policy decisions, microseconds per decision; {reqs['count']} requests, each through "
        f"both engines in turn, after {st['warmup']} warm-up requests",
        f"policy: {pol['agencies']} agencies, {pol['groups']} groups, {pol['permits']} permits, "
        f"{pol['forbids']} forbids ({pol['with_conditions']} with conditions, "
        f"{pol['with_obligations']} with obligations); seed {st['seed']}",
        f"requests: {reqs['permitted']} permitted, {reqs['count'] - reqs['permitted']} denied; "
        f"both engines agree on all {reqs['count']}",
        "",
        render.table(["path", "p50", "p99", "mean"], main),
        "",
        f"aim {'met' if doc['aim']['met'] else 'NOT met'}: liaison p50 is {speedup['p50']:.2f}x "
        f"faster than Cedar's (aim: at least {doc['aim']['speedup_at_least']:g}x)",
        f"share of a node's answer ({st['node_answer_ms']:g} ms): liaison "
        f"{share['liaison_p50']:.2%} ({lat['liaison']['p50_us']:.1f} of {node_us:.0f} us), "
        f"cedar {share['cedar_p50']:.2%}",
        "",
        f"with warm caches: {block} requests through one engine, then the same {block} "
        "through the other",
        render.table(["path", "p50", "p99", "mean"], warm_rows),
        "",
        "Cedar's other paths, interleaved with its public one",
        render.table(["path", "p50", "p99", "mean"], cedar_rows),
        "",
        render.table(
            ["batch throughput", "us per decision"],
            [
                ["liaison: loop of decide + obligations", f"{b['liaison_loop_us']:.1f}"],
                ["cedar: one is_authorized_batch call", f"{b['cedar_batch_us']:.1f}"],
                ["speed-up (cedar / liaison)", f"{b['ratio']:.1f}x"],
            ],
        ),
    ]
    if doc["profile"]:
        lines += [
            "",
            "where our decision spends its time (cProfile, which inflates small calls)",
            render.table(
                ["function", "calls", "own us", "own share", "cumulative us"],
                [
                    [
                        p["function"],
                        f"{p['calls_per_decision']:g}",
                        f"{p['own_us_per_decision']:.2f}",
                        f"{p['own_share']:.0%}",
                        f"{p['cumulative_us_per_decision']:.2f}",
                    ]
                    for p in doc["profile"]
                ],
            ),
        ]
    lines += [
        "",
        f"cedar API: {doc['cedar_api']}",
        f"machine: {mc['cpu_count']} CPUs ({mc['cpus_usable']} usable), {mc['python']}, "
        f"cedarpy {mc['cedarpy']}, {mc['platform']}",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m liaison.bench.policy",
        description="Our policy decisions against Cedar's (cedarpy) on the same requests.",
    )
    p.add_argument("--requests", type=at_least(2), default=5000, help="measured requests (5000)")
    p.add_argument("--warmup", type=at_least(0), default=500, help="unmeasured requests (500)")
    p.add_argument("--seed", type=int, default=2026, help="seed of the policy and requests")
    p.add_argument(
        "--node-answer-ms",
        type=positive,
        default=NODE_ANSWER_MS,
        help=f"a node's typical answer time, for scale ({NODE_ANSWER_MS:g})",
    )
    p.add_argument("--profile", action="store_true", help="profile our decision even if fast")
    return p


def main(argv: list[str] | None = None) -> int:
    return bench_main(argv, build_parser(), run, render_report)


if __name__ == "__main__":
    raise SystemExit(main())
