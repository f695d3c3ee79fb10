"""``liaison node check`` and ``liaison gateway check``: print the checks, return the exit code.

Exit codes: 0 every check passed, 1 any failed, 2 usage error (no such
config file). ``--json`` prints ``{"ok": bool, "checks": [{"name", "status",
"detail"}]}`` with status ``ok``, ``FAILED`` or ``skipped``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from liaison.checks import CheckResult, as_json, render

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _report(config: Path, as_json_output: bool, run: Callable[[Path], list[CheckResult]]) -> int:
    if not config.is_file():
        print(f"error: --config {config}: no such file", file=sys.stderr)
        return EXIT_USAGE
    results = run(config)
    if as_json_output:
        print(json.dumps(as_json(results), indent=2))
    else:
        print(render(results))
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


def node_check(config: Path, as_json: bool) -> int:
    """Check the node configured at ``config`` without serving; print; return the exit code."""
    from node.check import check_node  # the node's modules load only for this command

    return _report(config, as_json, check_node)


def gateway_check(config: Path, as_json: bool) -> int:
    """Check the gateway configured at ``config`` without serving; print; return the exit code."""
    from gateway.check import check_gateway

    return _report(config, as_json, check_gateway)


if __name__ == "__main__":
    # For tests and until the subcommands are wired: python -m liaison.cli.check node|gateway
    # CONFIG [--json]
    args = sys.argv[1:]
    json_flag = "--json" in args
    rest = [a for a in args if a != "--json"]
    if len(rest) != 2 or rest[0] not in ("node", "gateway"):
        print("usage: python -m liaison.cli.check node|gateway CONFIG [--json]", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    command = node_check if rest[0] == "node" else gateway_check
    sys.exit(command(Path(rest[1]), json_flag))
