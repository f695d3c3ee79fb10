"""Exit status of `liaison query`, in one place, so that scripts can tell outcomes apart.

0 and 2 mean what they mean for every command (done; usage error, as argparse
exits). 3 and 4 say that the federation was asked but not every agency
answered: a script that must know whether *everyone* was asked checks for 0.
5 says that an answer the gateway showed is not what its agency signed.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum

from liaison.errors import LiaisonError
from liaison.messages import NodeStatus


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
    # Some agencies answered, some did not (denied, timed out, unreachable, error).
    SOME_NOT_ANSWERED = 3
    # No agency answered: every one asked denied, timed out, was unreachable or failed.
    NONE_ANSWERED = 4
    # With verification (--verify, on when node keys are known): an answer the
    # gateway showed is not what the agency signed. Outranks 3 and 4: the
    # result as a whole cannot be relied on.
    NOT_VERIFIED = 5


# Not a failure: the gateway left the agency out because it said it does not
# offer the dataset, so there was nothing to ask it.
NOT_FAILURES = frozenset({NodeStatus.ANSWERED, NodeStatus.NOT_ASKED})


class UsageError(LiaisonError):
    """The command line (or a value in a file it names) is malformed; nothing was sent.

    The CLI raises it around an error from the tree (``InvalidQuery``,
    ``CatalogError``) found by a local check, so that `liaison query` exits
    with ``ExitCode.USAGE`` for what the user must fix in the command.
    """


def outcome(statuses: Iterable[NodeStatus]) -> ExitCode:
    """The exit code for the agencies' statuses (one per agency, or per agency and chunk)."""
    asked = [s for s in statuses if s is not NodeStatus.NOT_ASKED]
    answered = sum(1 for s in asked if s is NodeStatus.ANSWERED)
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
    "or failed); the others' answers are printed",
    ExitCode.NONE_ANSWERED: "no agency answered",
    ExitCode.NOT_VERIFIED: "an answer shown is not what the agency signed (checked with the "
    "node keys of --node-keys, LIAISON_NODE_KEYS or the --federation folder): it is marked "
    "NOT VERIFIED, do not rely on it; takes precedence over 3 and 4",
}
NOTES = (
    "With --image or --hashes, an agency counts as answered when it answered every request "
    "of the batch. With --dry-run, an agency whose published policy could not be had counts "
    "as not answered; a policy that would deny is an answer. An agency without a key held "
    "here is reported unverifiable: a warning, not exit 5. --json output follows the JSON "
    "Schema that `liaison query --schema` prints."
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
