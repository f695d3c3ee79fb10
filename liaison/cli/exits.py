"""Exit status of `liaison query`, in one place, so that scripts can tell outcomes apart.

0 and 2 mean what they mean for every command (done; usage error, as argparse
exits). 3 and 4 say that the federation was asked but not every agency
answered: a script that must know whether *everyone* was asked checks for 0.
5 says that an answer the gateway showed is not what its agency signed.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum

from liaison.errors import UsageError
from liaison.messages import NodeStatus

__all__ = ["EXPLAINED", "NOT_FAILURES", "ExitCode", "UsageError", "epilog", "outcome"]


class ExitCode(IntEnum):
    """What `liaison query` exits with."""

    # Every agency asked answered: a hit, no hit, records, a count (even zero).
    OK = 0
    # Nothing was asked, or the gateway refused the whole query: the gateway
    # cannot be reached, the token is refused, a file cannot be read, ...
    ERROR = 1
    # The command line is wrong, and nothing was sent: argparse's own errors,
    # a value the client refuses before connecting (a hash that is not hex, a
    # field the catalog lacks, too many values), a bad line in --hashes.
    USAGE = 2
    # Some agencies answered, some did not (denied, timed out, unreachable, error),
    # or, with verification on, answered without a key held here to check it.
    SOME_NOT_ANSWERED = 3
    # No agency answered (verifiably): every one asked denied, timed out, was
    # unreachable, failed or is unverifiable; or no agency was asked at all.
    NONE_ANSWERED = 4
    # With verification (--verify, on when node keys are known): an answer the
    # gateway showed is not what the agency signed. Outranks 3 and 4: the
    # result as a whole cannot be relied on.
    NOT_VERIFIED = 5


# Not a failure: the gateway left the agency out because it said it does not
# offer the dataset, so there was nothing to ask it.
NOT_FAILURES = frozenset({NodeStatus.ANSWERED, NodeStatus.NOT_ASKED})


def outcome(statuses: Iterable[NodeStatus]) -> ExitCode:
    """The exit code for the agencies' statuses (one per agency, or per agency and chunk).

    Nobody asked is not "everyone answered": a script must not take it for a
    search of the whole federation that found nothing.
    """
    asked = [s for s in statuses if s is not NodeStatus.NOT_ASKED]
    answered = sum(1 for s in asked if s is NodeStatus.ANSWERED)
    if not asked:
        return ExitCode.NONE_ANSWERED
    if answered == len(asked):
        return ExitCode.OK
    return ExitCode.SOME_NOT_ANSWERED if answered else ExitCode.NONE_ANSWERED


EXPLAINED = {
    ExitCode.OK: "every agency asked answered (a hit, no hit, records or a count); agencies "
    "the gateway did not ask because they do not offer the dataset do not count",
    ExitCode.ERROR: "the query was not run: gateway unreachable, token refused, the gateway "
    "refused the query, a file cannot be read",
    ExitCode.USAGE: "usage error: a bad option or value, refused here before anything was "
    "sent (a bad line in --hashes is named by its number)",
    ExitCode.SOME_NOT_ANSWERED: "some agencies did not answer (denied, timed out, unreachable "
    "or failed), or not verifiably: with verification on, an answer from an agency whose key "
    "is not held here (UNVERIFIED) rests on the gateway's word and does not count; the "
    "others' answers are printed",
    ExitCode.NONE_ANSWERED: "no agency answered (verifiably), or no agency was asked at all "
    "(none offers the dataset): a line on standard error says which",
    ExitCode.NOT_VERIFIED: "an answer shown is not what the agency signed, or not an answer "
    "to this search (a stale or replayed result), checked with the "
    "node keys of --node-keys, LIAISON_NODE_KEYS or the --federation folder: it is marked "
    "NOT VERIFIED, do not rely on it; takes precedence over 3 and 4",
}
NOTES = (
    "With --image or --hashes, an agency counts as answered when it answered every request "
    "of the batch. With --dry-run, an agency whose published policy could not be had counts "
    "as not answered; a policy that would deny is an answer. An agency without a key held "
    "here is reported unverifiable and marked UNVERIFIED: not exit 5, but not an answer for "
    "exit 0 either. A result whose signed request was issued outside the time this search "
    "was under way (give or take 30 s of clock skew) is stale or replayed: every agency "
    "FAILED, exit 5. --json output follows the JSON Schema that `liaison query --schema` "
    "prints."
)


def epilog(width: int = 79) -> str:
    """The exit status table printed by `liaison query --help`."""
    import textwrap

    lines = ["exit status:"]
    for code, text in EXPLAINED.items():
        lines += textwrap.wrap(
            text, width, initial_indent=f"  {code:d}  ", subsequent_indent=" " * 5
        )
    return "\n".join([*lines, "", *textwrap.wrap(NOTES, width)])
