"""What every benchmark shares: its command line, its failure, its machine, its summaries.

Each benchmark module builds its own parser, runs, and renders its own report;
``bench_main`` does the rest alike for all of them, so that a failed run looks
the same whichever benchmark it was:

* ``--json`` prints the report's document instead of its tables;
* a ``LiaisonError`` (``BenchFailed`` among them) is one line on stderr and
  exit status 1, not a traceback: the benchmark found something wrong, it did
  not crash; so is a gRPC error, for the benchmarks that make gRPC calls;
* Ctrl-C is exit status 130, as a shell reports it;
* a report that carries ``"failed": "<why>"`` (``FAILED``) is printed in full,
  then its reason as an error line, with exit status 1: the run measured
  everything but found something wrong that its numbers depend on.

The modules import nothing from each other for this plumbing, only from here.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from liaison import __version__
from liaison.cli import render
from liaison.errors import LiaisonError

Report = dict[str, Any]
# The key of a report that measured everything but must fail the run; its value says why.
FAILED = "failed"


class BenchFailed(LiaisonError):
    """A measured step did not do what the benchmark relies on: its numbers would mean nothing."""


# --- arguments ----------------------------------------------------------------


def at_least(lo: int) -> Callable[[str], int]:
    """An argparse type for whole numbers of at least ``lo``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {value}")
        return value

    return parse


def positive(text: str) -> float:
    """An argparse type for numbers above 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def with_preset(args: argparse.Namespace, preset: Mapping[str, Any]) -> dict[str, Any]:
    """Each of ``preset``'s settings, or its option's value where that was given.

    The options a preset covers default to None, so that "not given" and "given
    as the full run's value" stay apart under ``--quick``.
    """
    given = {name: getattr(args, name) for name in preset}
    return {name: preset[name] if value is None else value for name, value in given.items()}


# --- what every report carries ------------------------------------------------


def machine(**versions: str) -> dict[str, Any]:
    """The machine and software a report was measured on; ``versions`` of what it measures."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        usable = os.cpu_count() or 0
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        **versions,
        "liaison": __version__,
    }


def loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages: how busy the shared machine was."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not on every platform
        return None


@dataclass(frozen=True, slots=True)
class Summary:
    """Latencies of one path, in the unit its samples are in (ms or us)."""

    samples: int
    p50: float
    p99: float
    mean: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        if len(samples) < 2:
            raise ValueError("percentiles need at least two samples")
        return cls(
            samples=len(samples),
            p50=statistics.median(samples),
            p99=statistics.quantiles(samples, n=100, method="inclusive")[98],
            mean=statistics.fmean(samples),
            minimum=min(samples),
            maximum=max(samples),
        )

    def as_dict(self, unit: str = "ms", digits: int = 3) -> dict[str, float]:
        """The summary with keys named for ``unit``, the unit its samples are in."""
        return {
            "samples": self.samples,
            f"p50_{unit}": round(self.p50, digits),
            f"p99_{unit}": round(self.p99, digits),
            f"mean_{unit}": round(self.mean, digits),
            f"min_{unit}": round(self.minimum, digits),
            f"max_{unit}": round(self.maximum, digits),
        }


def ratios(over: Summary, under: Summary, digits: int = 3) -> dict[str, float]:
    return {
        "p50": round(over.p50 / under.p50, digits),
        "p99": round(over.p99 / under.p99, digits),
        "mean": round(over.mean / under.mean, digits),
    }


# --- main ---------------------------------------------------------------------


def bench_main(
    argv: list[str] | None,
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace, TextIO], Report],
    render_report: Callable[[Report], str],
    *,
    rpc_call: str | None = None,
) -> int:
    """Parse ``argv`` (``parser`` gains ``--json``), run, print the report; the exit status.

    ``run`` writes its progress to the stream it is given (stderr), so stdout
    holds only the report. ``rpc_call`` says what a failed gRPC call was (``"a
    measured call"``), for the benchmarks that make them.
    """
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    rpc_errors: tuple[type[Exception], ...] = ()
    if rpc_call is not None:
        # Imported only here: the PDQ benchmark's worker processes import this
        # module, make no gRPC calls, and report their own memory.
        import grpc

        rpc_errors = (grpc.RpcError,)
    try:
        doc = run(args, sys.stderr)
    except LiaisonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except rpc_errors as exc:
        # Raised by a stub, an RpcError is also a grpc.Call; the type stubs do not say so.
        code, details = getattr(exc, "code", None), getattr(exc, "details", None)
        print(
            f"error: {rpc_call} failed ({code().name if callable(code) else 'no status'}): "
            f"{details() if callable(details) else exc}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 130
    print(render.to_json(doc) if args.json else render_report(doc))
    if doc.get(FAILED):
        print(f"error: {doc[FAILED]}", file=sys.stderr)
        return 1
    return 0
