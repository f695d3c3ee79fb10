"""The auditors' plots: what a gateway ledger shows over time, as numbers and as PNG images.

The numbers come first (:func:`plot_data`, from the rows of
:mod:`liaison.ledger.views`): each page shows them as a table beside the
image, for screen readers and for anyone who wants the figures. The images are
drawn with matplotlib's object API on the Agg backend, one ``Figure`` per
image and no pyplot state, so two requests can draw at once.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import matplotlib

matplotlib.use("Agg")

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from liaison.ledger.views import Row

# Bucket widths: the narrowest that keeps a timeline under ~200 bars.
BUCKETS: tuple[tuple[str, int], ...] = (
    ("minute", 60_000),
    ("hour", 3_600_000),
    ("day", 86_400_000),
)
MAX_BUCKETS = 200
# Statuses whose latency is the time a node took to answer (a timeout's is the deadline).
ANSWERING = ("answered", "denied")
NO_RULE = "(no rule named)"


@dataclass(frozen=True, slots=True)
class Timeline:
    """Counts per label per time bucket; ``starts`` are the buckets' starts (ms, UTC)."""

    bucket: str
    width_ms: int
    starts: tuple[int, ...]
    counts: Mapping[str, tuple[int, ...]]

    @property
    def total(self) -> int:
        return sum(sum(c) for c in self.counts.values())

    def table(self) -> list[tuple[str, tuple[int, ...]]]:
        """Rows of the data table: each bucket that holds anything, with a count per label."""
        labels = sorted(self.counts)
        found = []
        for i, start in enumerate(self.starts):
            row = tuple(self.counts[label][i] for label in labels)
            if any(row):
                found.append((bucket_label(start, self.bucket), row))
        return found


@dataclass(frozen=True, slots=True)
class Latency:
    node: str
    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return _quantile(self.samples, 0.5)

    @property
    def p95(self) -> float:
        return _quantile(self.samples, 0.95)


@dataclass(frozen=True, slots=True)
class PlotData:
    """Everything the plots page shows of one gateway ledger of ``size`` entries."""

    size: int
    queries: int
    by_agency: Timeline
    by_purpose: Timeline
    # (rule, node) -> denials, most first.
    denials: tuple[tuple[str, str, int], ...]
    latency: tuple[Latency, ...]


def _quantile(samples: tuple[float, ...], q: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bucket_label(start_ms: int, bucket: str) -> str:
    moment = datetime.fromtimestamp(start_ms / 1000, UTC)
    shape = {"minute": "%Y-%m-%d %H:%M", "hour": "%Y-%m-%d %H:00", "day": "%Y-%m-%d"}[bucket]
    return moment.strftime(shape)


def _timeline(times: list[tuple[int, str]]) -> Timeline:
    if not times:
        return Timeline("minute", 60_000, (), {})
    first = min(t for t, _ in times)
    last = max(t for t, _ in times)
    name, width = next(
        ((n, w) for n, w in BUCKETS if last // w - first // w < MAX_BUCKETS), BUCKETS[-1]
    )
    base = first // width
    n = last // width - base + 1
    counts: dict[str, list[int]] = {}
    for t, label in times:
        counts.setdefault(label, [0] * n)[t // width - base] += 1
    starts = tuple((base + i) * width for i in range(n))
    return Timeline(name, width, starts, {k: tuple(v) for k, v in counts.items()})


def plot_data(rows: Iterable[Row], size: int) -> PlotData:
    """Queries by agency and purpose over time, denials by rule, latency per node."""
    agencies: list[tuple[int, str]] = []
    purposes: list[tuple[int, str]] = []
    # A streamed search logs several outcome entries for one request: the later the truer.
    outcomes: dict[tuple[str, str], dict[str, Mapping[str, Any]]] = {}
    for row in rows:
        if row.kind == "request":
            agencies.append((row.time_ms, row.agency or "(none)"))
            purposes.append((row.time_ms, row.purpose or "(none)"))
        elif row.kind == "outcome":
            asked = (row.query_id, str(row.entry.get("request_digest", "")))
            results = row.entry.get("results", [])
            outcomes.setdefault(asked, {}).update(
                (str(r.get("node_id", "")), r) for r in results if isinstance(r, dict)
            )
    denials: Counter[tuple[str, str]] = Counter()
    latency: dict[str, list[float]] = {}
    for results in outcomes.values():
        for node, result in results.items():
            status = result.get("status")
            if status == "denied":
                rules = [str(r) for r in result.get("rules", []) if r] or [NO_RULE]
                for rule in rules:
                    denials[(rule, node)] += 1
            ms = result.get("latency_ms")
            if status in ANSWERING and isinstance(ms, int | float) and not isinstance(ms, bool):
                latency.setdefault(node, []).append(float(ms))
    return PlotData(
        size=size,
        queries=len(agencies),
        by_agency=_timeline(agencies),
        by_purpose=_timeline(purposes),
        denials=tuple(
            (rule, node, n)
            for (rule, node), n in sorted(denials.items(), key=lambda kv: (-kv[1], kv[0]))
        ),
        latency=tuple(Latency(node, tuple(v)) for node, v in sorted(latency.items())),
    )


# -- drawing -----------------------------------------------------------------

WIDTH_IN, HEIGHT_IN, DPI = 8.0, 3.6, 100
# Colour-blind-safe (Okabe-Ito), and each series has its own marker too.
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
HATCHES = ("", "//", "..", "xx", "\\\\", "++", "oo")
AXIS_FORMAT = {"minute": "%H:%M", "hour": "%m-%d %H:00", "day": "%Y-%m-%d"}


def _figure() -> Figure:
    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def _empty(fig: Figure, message: str) -> bytes:
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=13)
    return _png(fig)


def timeline_png(timeline: Timeline, title: str) -> bytes:
    fig = _figure()
    if not timeline.total:
        return _empty(fig, f"{title}: no queries in the ledger yet")
    ax = fig.add_subplot()
    # Milliseconds since the epoch on the axis, labelled as UTC times.
    xs = [float(start) for start in timeline.starts]
    width = timeline.width_ms
    below = [0] * len(xs)
    # Stacked bars: each label its colour and its hatching, so print and
    # colour-blind readers tell them apart too.
    for i, label in enumerate(sorted(timeline.counts)):
        counts = timeline.counts[label]
        ax.bar(
            xs,
            counts,
            width=width * 0.8,
            bottom=below,
            align="edge",
            label=label,
            color=COLOURS[i % len(COLOURS)],
            hatch=HATCHES[i % len(HATCHES)],
            edgecolor="white",
        )
        below = [b + c for b, c in zip(below, counts, strict=True)]
    ax.set_title(title)
    ax.set_ylabel(f"queries per {timeline.bucket}")
    ax.set_xlabel("time (UTC)")
    ax.set_ylim(bottom=0)
    # A lone bucket would otherwise fill the whole axis.
    ax.set_xlim(xs[0] - width, xs[-1] + 2 * width)
    # Ticks on bucket starts, at most ~12 of them.
    ax.set_xticks(xs[:: -(-len(xs) // 12)])
    shape = AXIS_FORMAT[timeline.bucket]
    ax.xaxis.set_major_formatter(
        FuncFormatter(lambda value, _pos: datetime.fromtimestamp(value / 1000, UTC).strftime(shape))
    )
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(True, alpha=0.3)
    fig.autofmt_xdate()
    return _png(fig)


def denials_png(denials: tuple[tuple[str, str, int], ...]) -> bytes:
    fig = _figure()
    if not denials:
        return _empty(fig, "Denials by rule: no denials in the ledger")
    shown = denials[:15]
    ax = fig.add_subplot()
    labels = [f"{rule} ({node})" for rule, node, _ in shown]
    ax.barh(labels[::-1], [n for _, _, n in shown][::-1], color=COLOURS[1])
    ax.set_title("Denials by rule (node)" + (", top 15" if len(denials) > 15 else ""))
    ax.set_xlabel("denials")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)


def latency_png(latency: tuple[Latency, ...]) -> bytes:
    fig = _figure()
    if not latency:
        return _empty(fig, "Answer latency: no answers in the ledger yet")
    ax = fig.add_subplot()
    ax.boxplot(
        [list(lat.samples) for lat in latency],
        tick_labels=[lat.node for lat in latency],
        orientation="horizontal",
        showfliers=True,
    )
    ax.set_title("Answer latency per node, as the gateway measured it")
    ax.set_xlabel("milliseconds")
    ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)
