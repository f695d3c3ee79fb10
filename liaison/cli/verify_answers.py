"""`liaison query --verify`: check every answer shown against what its agency signed.

The keys are the nodes' public keys the investigator holds locally, never
keys the gateway hands out: ``--node-keys DIR``, else ``$LIAISON_NODE_KEYS``,
else the nodes of the ``--federation`` folder (written by ``liaison init`` or
``liaison demo``). Verification is on whenever keys are known; ``--no-verify``
turns it off, and ``--verify`` without keys is a usage error.

The checking itself is ``liaison.answer_check``; this module resolves the
keys, prints one ``verify:`` line per agency on standard error, and turns the
verdicts into the ``verification`` objects of ``--json`` and the exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from liaison.answer_check import (
    AnswerCheck,
    NodeCheck,
    SearchWindow,
    Verdict,
    check_answers,
    load_node_keys,
    now_ms,
)
from liaison.cli.exits import ExitCode
from liaison.cli.render import NOT_VERIFIED
from liaison.errors import ConfigError, UsageError
from liaison.keys import VerifyingKey
from liaison.messages import NodeStatus, SearchInput, SearchResult

ENV_VAR = "LIAISON_NODE_KEYS"
NOT_CHECKED = "not checked"

_OFF = "verification is off (--no-verify)"
_NO_KEYS = f"no node keys: give --node-keys DIR or set {ENV_VAR} to check the answers"


def add_verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--node-keys",
        type=Path,
        metavar="DIR",
        help="the agencies' node public keys, as you hold them (never from the gateway): a "
        "folder of <node_id>.pub files, or a federation folder written by `liaison init` "
        f"(or its nodes/ folder). Default: ${ENV_VAR}, else the --federation folder's nodes",
    )
    p.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="check that every answer shown is what its agency signed (default: on when node "
        "keys are known). An answer that fails is shown as NOT VERIFIED, exit status 5",
    )


@dataclass(frozen=True, slots=True)
class Verification:
    """The node keys a command checks answers against, or why it does not check."""

    keys: Mapping[str, VerifyingKey] | None
    # Where the keys came from, or why nothing is checked.
    source: str

    @property
    def on(self) -> bool:
        return self.keys is not None

    def check(
        self, result: SearchResult, asked: SearchInput, window: SearchWindow
    ) -> AnswerCheck | None:
        if self.keys is None:
            return None
        return check_answers(result, asked, self.keys, window=window)

    def search(
        self, address: str, token: str, asked: SearchInput, *, tls_ca: Path | None
    ) -> tuple[SearchResult, AnswerCheck | None]:
        """Ask through the gateway, timing the call, and check the result against that time.

        The time is what proves the result fresh: a request the nodes
        answered before this call was made is an earlier result served again.
        With verification off, the check is None.
        """
        from liaison import client

        sent = now_ms()
        result = client.search(address, token, asked, tls_ca=tls_ca)
        return result, self.check(result, asked, SearchWindow(sent, now_ms()))

    @classmethod
    def off(cls, reason: str = _OFF) -> Verification:
        return cls(None, reason)


def verification_from_args(args: argparse.Namespace) -> Verification:
    """The keys named by the command line or the environment; loaded before anything is sent."""
    if args.verify is False:
        return Verification.off()
    named: tuple[Path, str] | None = None
    if args.node_keys is not None:
        named = (args.node_keys, "--node-keys")
    elif os.environ.get(ENV_VAR, "").strip():
        named = (Path(os.environ[ENV_VAR].strip()).expanduser(), ENV_VAR)
    elif args.federation is not None and _holds_node_keys(args.federation):
        named = (args.federation, "--federation")
    if named is None:
        if args.verify:
            raise UsageError(
                "--verify needs the nodes' public keys: give --node-keys DIR (a folder of "
                "<node_id>.pub files, or a federation folder written by `liaison init`) or "
                f"set {ENV_VAR}"
            )
        return Verification.off(_NO_KEYS)
    path, option = named
    try:
        keys = load_node_keys(path)
    except ConfigError as exc:
        raise ConfigError(f"{option}: {exc}") from None
    return Verification(keys, f"{option} {path}")


def _holds_node_keys(folder: Path) -> bool:
    return (folder / "nodes").is_dir() and any((folder / "nodes").glob("*/node.pub"))


# --- verdicts, as shown ------------------------------------------------------------------


def report(checks: Iterable[NodeCheck], stream: TextIO | None = None) -> None:
    """One ``verify:`` line per agency on standard error; a closing warning when one FAILED."""
    out = stream or sys.stderr
    failed = []
    for node in checks:
        print(f"verify: {node}", file=out)
        if node.verdict is Verdict.FAILED:
            failed.append(node.node_id)
    if failed:
        print(
            f"verify: {NOT_VERIFIED}: what the gateway shows for {', '.join(failed)} is not what "
            "the agency signed; do not rely on it",
            file=out,
        )


def verification_to_dict(node: NodeCheck | None, off_reason: str) -> dict[str, Any]:
    """The ``verification`` object of --json: both keys always present."""
    if node is None:
        return {"verdict": NOT_CHECKED, "reason": off_reason}
    return {"verdict": node.verdict.value, "reason": node.reason or None}


def overall(node_id: str, checks: Sequence[NodeCheck], unit: str = "requests") -> NodeCheck:
    """One verdict for several checks: of one agency (the chunks of a batch), or of a search.

    FAILED if any failed; else unverifiable if any could not be checked; else
    verified if any answer was checked; else not answered.
    """
    for verdict in (Verdict.FAILED, Verdict.UNVERIFIABLE, Verdict.VERIFIED):
        hits = [c for c in checks if c.verdict is verdict]
        if hits:
            break
    else:
        verdict = Verdict.NOT_ANSWERED
        hits = list(checks)
    if not hits:
        return NodeCheck(node_id, Verdict.NOT_ANSWERED, "nothing was asked")
    if verdict is Verdict.VERIFIED:
        return NodeCheck(node_id, verdict)
    reason = hits[0].reason
    if len(checks) > 1:
        reason = f"{len(hits)} of {len(checks)} {unit}: {reason}"
    return NodeCheck(node_id, verdict, reason)


def search_verification(check: AnswerCheck | None, off_reason: str) -> dict[str, Any]:
    """The top-level ``verification`` of a search: FAILED names every failed agency."""
    if check is None:
        return verification_to_dict(None, off_reason)
    failed = check.failed
    if failed:
        return {
            "verdict": Verdict.FAILED.value,
            "reason": "; ".join(str(n) for n in failed),
        }
    return verification_to_dict(overall("", check.nodes, "agencies"), off_reason)


def counted_statuses(result: SearchResult, check: AnswerCheck | None) -> list[NodeStatus]:
    """The statuses the exit code counts: with verification on, an answer nothing could
    check (no key held here) is the gateway's word alone, so it is not counted as answered.
    """
    unverified = (
        {n.node_id for n in check.nodes if n.verdict is Verdict.UNVERIFIABLE} if check else set()
    )
    return [
        NodeStatus.ERROR
        if r.status is NodeStatus.ANSWERED and r.node_id in unverified
        else r.status
        for r in result.results
    ]


def nobody_asked(result: SearchResult) -> str:
    """The line for standard error when no agency was asked; "" when one was."""
    if any(r.status is not NodeStatus.NOT_ASKED for r in result.results):
        return ""
    dataset = result.query.dataset
    if not result.results:
        return (
            "no agency was asked: the gateway's result names no agency that offers dataset "
            f"{dataset!r}"
        )
    return (
        f"no agency was asked: none of {', '.join(r.node_id for r in result.results)} "
        f"offers dataset {dataset!r}"
    )


def exit_code(code: ExitCode, failed: bool) -> ExitCode:
    """A FAILED verdict outranks "some (or no) agencies answered"."""
    return ExitCode.NOT_VERIFIED if failed else code
