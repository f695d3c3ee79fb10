"""The shape of a query on the command line: `liaison query` and `liaison policy explain`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from liaison.errors import UsageError
from liaison.query import MAX_LIMIT, Comparator, Operation, Predicate, Query


def bounded(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from exc
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is not in {lo}..{hi}")
        return value

    return parse


def add_query_shape(p: argparse.ArgumentParser, *, limit: bool = True) -> None:
    """The dataset, operation, predicates (and limit) of a query: `query`, `policy explain`."""
    p.add_argument("dataset", help="media, accounts or cases")
    ops = p.add_mutually_exclusive_group(required=True)
    ops.add_argument("--match", action="store_true", help="hit/no-hit only")
    ops.add_argument("--count", action="store_true", help="number of matching records")
    ops.add_argument("--count-by", metavar="FIELD", help="number of records per value of FIELD")
    ops.add_argument("--fields", help="comma-separated fields to return")
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COND",
        help="FIELD=VALUE, FIELD>=VALUE or FIELD<=VALUE (repeat to AND)",
    )
    p.add_argument(
        "--any",
        action="append",
        default=[],
        metavar="FIELD=V1,V2",
        help="FIELD is one of the comma-separated values",
    )
    p.add_argument(
        "--near",
        action="append",
        default=[],
        metavar="FIELD=HASH[,HASH]",
        help="perceptual near-duplicates: FIELD (pdq) within --distance bits of a hash",
    )
    p.add_argument(
        "--distance",
        type=bounded(0, 64),
        default=None,
        metavar="BITS",
        help="largest Hamming distance for --near (0..64; default 31, Meta's recommendation)",
    )
    if limit:
        p.add_argument(
            "--limit",
            type=bounded(0, MAX_LIMIT),
            default=0,
            help=f"maximum records per agency (1..{MAX_LIMIT}; default: each node's)",
        )


def parse_predicates(
    where: list[str],
    any_of: list[str],
    near: list[str] | None = None,
    distance: int | None = None,
    *,
    image: bool = False,
) -> tuple[Predicate, ...]:
    out = []
    for cond in where:
        for symbol, comparator in (
            (">=", Comparator.GTE),
            ("<=", Comparator.LTE),
            ("=", Comparator.EQ),
        ):
            field, sep, value = cond.partition(symbol)
            if sep and field.strip():
                out.append(Predicate(field.strip(), comparator, (value.strip(),)))
                break
        else:
            raise UsageError(f"--where {cond!r}: write FIELD=VALUE, FIELD>=VALUE or FIELD<=VALUE")
    for cond in any_of:
        field, sep, values = cond.partition("=")
        if not sep or not field.strip() or not values:
            raise UsageError(f"--any {cond!r}: write FIELD=V1,V2,...")
        out.append(
            Predicate(field.strip(), Comparator.IN, tuple(v.strip() for v in values.split(",")))
        )
    for cond in near or []:
        field, sep, values = cond.partition("=")
        if not sep or not field.strip() or not values:
            raise UsageError(f"--near {cond!r}: write FIELD=HASH or FIELD=HASH1,HASH2,...")
        hashes = tuple(v.strip() for v in values.split(","))
        out.append(Predicate(field.strip(), Comparator.NEAR, hashes, distance))
    if distance is not None and not near and not image:
        raise UsageError("--distance applies to --near, --image or --hashes; add --near pdq=HASH")
    return tuple(out)


def query_from_args(args: argparse.Namespace) -> Query:
    if args.match:
        op, fields, group = Operation.MATCH, (), None
    elif args.count:
        op, fields, group = Operation.COUNT, (), None
    elif args.count_by:
        op, fields, group = Operation.COUNT_BY, (), args.count_by
    else:
        op, fields, group = (
            Operation.RECORDS,
            tuple(f.strip() for f in args.fields.split(",") if f.strip()),
            None,
        )
    predicates = parse_predicates(
        args.where,
        args.any,
        args.near,
        args.distance,
        image=bool(getattr(args, "image", None) or getattr(args, "hashes", None)),
    )
    return Query(args.dataset, op, predicates, fields, group, args.limit)
