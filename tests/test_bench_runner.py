"""The benchmarks' shared main: output, failures and exit statuses, presets.

Prepare: a parser and a ``run`` that returns a report or raises.
Execute: ``bench_main`` as each benchmark's ``main`` calls it.
Assert: what reaches stdout and stderr, and the exit status.
"""

from __future__ import annotations

import argparse
import json
from typing import TextIO

import grpc
import pytest

from liaison.bench.runner import FAILED, BenchFailed, Report, bench_main, with_preset


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench")
    p.add_argument("--rounds", type=int, default=3)
    return p


def _report(doc: Report) -> str:
    return f"table of {doc['rounds']} rounds"


def _measures(args: argparse.Namespace, progress: TextIO) -> Report:
    print("measuring", file=progress)
    return {"rounds": args.rounds}


def test_prints_tables_or_json_and_progress_goes_to_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert bench_main(["--rounds", "5"], _parser(), _measures, _report) == 0
    out, err = capsys.readouterr()
    assert out == "table of 5 rounds\n" and err == "measuring\n"

    assert bench_main(["--json"], _parser(), _measures, _report) == 0
    out, _ = capsys.readouterr()
    assert json.loads(out) == {"rounds": 3}


def _fails(args: argparse.Namespace, progress: TextIO) -> Report:
    raise BenchFailed("the engines disagreed on request 7")


class _Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection refused"


def _rpc_fails(args: argparse.Namespace, progress: TextIO) -> Report:
    raise _Unavailable()


def _interrupted(args: argparse.Namespace, progress: TextIO) -> Report:
    raise KeyboardInterrupt


def test_a_failure_is_one_line_and_status_1_and_ctrl_c_is_130(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert bench_main([], _parser(), _fails, _report) == 1
    assert capsys.readouterr() == ("", "error: the engines disagreed on request 7\n")

    assert bench_main([], _parser(), _rpc_fails, _report, rpc_call="a measured call") == 1
    assert capsys.readouterr() == (
        "",
        "error: a measured call failed (UNAVAILABLE): connection refused\n",
    )

    assert bench_main([], _parser(), _interrupted, _report) == 130
    assert capsys.readouterr() == ("", "")


def _measures_then_fails(args: argparse.Namespace, progress: TextIO) -> Report:
    return {"rounds": args.rounds, FAILED: "ledger check failed: 1 query missing"}


def test_a_report_that_failed_is_printed_then_fails_with_status_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert bench_main([], _parser(), _measures_then_fails, _report) == 1
    assert capsys.readouterr() == (
        "table of 3 rounds\n",
        "error: ledger check failed: 1 query missing\n",
    )


def test_a_grpc_error_is_not_caught_where_no_rpc_call_is_named() -> None:
    with pytest.raises(_Unavailable):
        bench_main([], _parser(), _rpc_fails, _report)


def test_with_preset_takes_the_given_options_and_the_preset_for_the_rest() -> None:
    args = argparse.Namespace(entries=None, searches=7, quick=True)

    picked = with_preset(args, {"entries": 50_000, "searches": 50})

    assert picked == {"entries": 50_000, "searches": 7}
