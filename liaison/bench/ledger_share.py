"""The ledger's share of a federated query, from each service's own structured log.

A federated query waits for three durable ledger writes in a row: the
gateway's request entry (before any node hears of it), the receipt of the
node it waits for longest (before that node's answer leaves), and the
gateway's outcome entry (before the investigator sees anything). Each service
logs what those waits cost it, one JSON line per query:

* the gateway: ``"msg": "search"`` with ``ledger_ms`` (request + outcome);
* every node: ``"msg": "answered"`` with ``receipt_ms``.

The slowest node is the one whose answer the gateway saw last (its
``latency_ms`` in the response); its receipt is on the critical path, the
other nodes' receipts overlap it. The logs are read once the federation has
stopped, so every line is flushed. Lines not found (a log format that
changed) make the share unmeasured, with the reason, not a failed run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liaison.bench.runner import Summary


@dataclass(frozen=True, slots=True)
class Measured:
    """One timed search: its id, the node the gateway waited for longest, the client's ms."""

    query_id: str
    slowest_node: str
    client_ms: float


def _log_values(path: Path, msg: str, key: str) -> dict[str, float]:
    """``key`` of every JSON line of ``path`` whose message is ``msg``, by query id."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return {}
    marker = f'"{key}"'
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("{") or marker not in line:
            continue  # the JSON formatter writes one object per line
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if not isinstance(obj, dict) or obj.get("msg") != msg:
            continue
        value = obj.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and "query_id" in obj:
            found[str(obj["query_id"])] = float(value)
    return found


def ledger_share(
    measured: Sequence[Measured], run_dir: Path, nodes: Sequence[str]
) -> dict[str, Any]:
    """Ledger waits on the critical path of ``measured``, and their share of its p50."""
    gateway = _log_values(run_dir / "gateway.log", "search", "ledger_ms")
    receipts = {n: _log_values(run_dir / f"{n}.log", "answered", "receipt_ms") for n in nodes}
    found = [
        m
        for m in measured
        if m.query_id in gateway and all(m.query_id in receipts[n] for n in nodes)
    ]
    if len(found) < max(2, len(measured) // 2):
        return {
            "measured": False,
            "why": (
                f"only {len(found)} of {len(measured)} measured searches have a 'search' line "
                "with ledger_ms in the gateway's log and an 'answered' line with receipt_ms in "
                "every node's log: the log format changed"
            ),
        }
    critical = [gateway[m.query_id] + receipts[m.slowest_node][m.query_id] for m in found]
    widest = [gateway[m.query_id] + max(receipts[n][m.query_id] for n in nodes) for m in found]
    client = Summary.of([m.client_ms for m in found])
    wait = Summary.of(critical)
    shares = Summary.of([c / m.client_ms for c, m in zip(critical, found, strict=True)])
    return {
        "measured": True,
        "searches": len(found),
        "of_searches": len(measured),
        "gateway_ledger_ms": Summary.of([gateway[m.query_id] for m in found]).as_dict("ms"),
        "receipt_ms": {
            n: Summary.of([receipts[n][m.query_id] for m in found]).as_dict("ms") for n in nodes
        },
        "critical_path_ledger_ms": wait.as_dict("ms"),
        "with_slowest_receipt_ms": Summary.of(widest).as_dict("ms"),
        "federated_p50_ms": round(client.p50, 3),
        # The aim's measure: the p50 ledger wait over the p50 federated query.
        "share_of_p50": round(wait.p50 / client.p50, 4),
        "per_query_share_p50": round(shares.p50, 4),
    }


def share_of(found: Mapping[str, Any]) -> float | None:
    """The aim's measure, or None when it could not be measured."""
    value = found.get("share_of_p50") if found.get("measured") else None
    return float(value) if isinstance(value, int | float) else None
