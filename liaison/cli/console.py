"""`liaison console serve`: the web console for investigators, duty officers and auditors."""

from __future__ import annotations

import argparse
from pathlib import Path

from liaison.cli.inputs import check_output_file, read_text


def add_console(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "console", help="web console (HTTPS) for investigators, duty officers and auditors"
    )
    inner = p.add_subparsers(dest="action", required=True)
    s = inner.add_parser("serve", help="serve the console until SIGTERM or Ctrl-C")
    s.add_argument("--config", type=Path, required=True, help="console config file (TOML)")
    s.add_argument(
        "--port-file", type=Path, help="write HOST:PORT here once listening (useful with port 0)"
    )
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def cmd_console(args: argparse.Namespace) -> int:
    from liaison import logs
    from liaison.console.serve import serve_console

    read_text(args.config, "--config")
    if args.port_file is not None:
        check_output_file(args.port_file, "--port-file")
    logs.configure(args.log_level)
    serve_console(args.config, args.port_file)
    return 0
