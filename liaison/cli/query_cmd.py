"""`liaison query`: ask the federation through a gateway.

Everything the client can check is checked here before any connection: the
query's shape and values against the catalog, the purpose, the case reference,
every line of ``--hashes``. A mistake there exits with ``ExitCode.USAGE`` and
nothing is sent. Then the exit code says whether every agency answered (see
``liaison.cli.exits``). Where node keys are known, every answer is checked
against what its agency signed (``liaison.cli.verify_answers``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from liaison.cli.exits import epilog, outcome
from liaison.cli.inputs import check_folder, read_text, read_token
from liaison.cli.query_args import add_query_shape, bounded, query_from_args
from liaison.cli.verify_answers import Verification, add_verify_args, verification_from_args
from liaison.errors import CatalogError, InvalidQuery, LiaisonError, UsageError
from liaison.messages import NodeStatus, SearchInput
from liaison.query import Predicate

if TYPE_CHECKING:
    from liaison.cli.batch import BatchResult

SCHEMA_FILE = "query-output.schema.json"


def query_output_schema() -> str:
    """The JSON Schema (draft 2020-12) of `liaison query --json`, as shipped in the package."""
    from importlib import resources

    return resources.files("liaison.cli").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")


class _PrintSchema(argparse.Action):
    """``--schema``: print the output schema and exit, whatever else is (or is not) given."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        sys.stdout.write(query_output_schema())
        parser.exit()


def add_query(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "query",
        help="ask the federation through a gateway",
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--schema",
        action=_PrintSchema,
        nargs=0,
        help="print the JSON Schema of the --json output and exit",
    )
    add_query_shape(p)
    p.add_argument("--purpose", required=True, help="e.g. csam-investigation")
    p.add_argument("--case-ref", required=True, help="your case reference")
    p.add_argument(
        "--legal-basis",
        default="",
        help="the legal basis you cite, where a node's policy requires one "
        "(e.g. eu-2016-680-art-8)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="show what each node's policy would decide, without reading or releasing any data",
    )
    p.add_argument(
        "--image",
        action="append",
        default=[],
        type=Path,
        metavar="FILE|DIR",
        help="hash these images here (SHA-256 and PDQ) and ask for them; repeatable. "
        "No image byte leaves this machine",
    )
    p.add_argument(
        "--hashes",
        type=Path,
        metavar="FILE|-",
        help="ask for the hashes listed in FILE (- for standard input): one a line, blank "
        "lines and # comments ignored, or the output of `liaison hash --json`; up to "
        "100,000, sent in chunks like --image. Use --fields sha256 to learn which are held",
    )
    p.add_argument(
        "--hash-field",
        metavar="FIELD",
        help="with --hashes: the field every listed hash is (sha256, md5 or pdq; default: "
        "by length, 64 hex digits sha256 and 32 md5; sha256 for `liaison hash --json`)",
    )
    p.add_argument(
        "--chunk-size",
        type=bounded(1, 1000),
        default=1000,
        metavar="N",
        help="with --image or --hashes: hashes per federated request (default 1000; smaller "
        "for nodes whose rate limits count each hash)",
    )
    p.add_argument(
        "--progress",
        action="store_true",
        help="report progress (done/total, rate, time left) on standard error even when it "
        "is not a terminal; shown on a terminal anyway",
    )
    p.add_argument("--nodes", help="comma-separated agencies to ask (default: all)")
    p.add_argument(
        "--deadline-ms",
        type=bounded(0, 600_000),
        default=0,
        help="overall deadline in ms (default: the gateway's)",
    )
    p.add_argument(
        "--gateway",
        help="gateway address HOST:PORT; for replicas of one gateway, several, comma-separated "
        "(one that is down or cannot log is passed over for the next)",
    )
    p.add_argument("--token", help="bearer JWT (or --token-file)")
    p.add_argument("--token-file", type=Path, help="a file holding the bearer JWT")
    p.add_argument(
        "--tls-ca", type=Path, help="connect with TLS, verifying the gateway against this CA (PEM)"
    )
    p.add_argument(
        "--federation", type=Path, help="a demo folder: take gateway address and token from it"
    )
    p.add_argument(
        "--stream",
        action="store_true",
        help="print each agency's answer as it arrives (each is in the gateway's ledger "
        "before it is sent), then who did not answer; with --json, one line per answer, "
        "then the whole search",
    )
    add_verify_args(p)
    p.add_argument("--json", action="store_true", help="print JSON (see --schema)")


def _usage(exc: LiaisonError) -> UsageError:
    return UsageError(str(exc))


def check_locally(search: SearchInput, *batch: Predicate) -> SearchInput:
    """``search`` with canonical values, or UsageError: what the gateway would refuse.

    ``batch``: a sample of each predicate a batch adds to every chunk, so the
    shape is checked with it (a match query needs a predicate to match on).
    """
    from liaison.catalog import CATALOG_V1
    from liaison.cli.batch import MAX_BATCH_VALUES
    from liaison.query import MAX_IN_VALUES, validate_case_ref, validate_legal_basis, validate_query

    for p in search.query.predicates:
        if len(p.values) > MAX_IN_VALUES:
            raise UsageError(
                f"{p.field}: at most {MAX_IN_VALUES} values in one query, got {len(p.values)}; "
                "for more, list them in a file, one a line, and ask with --hashes FILE "
                f"(up to {MAX_BATCH_VALUES:,}, sent in chunks)"
            )
    try:
        query = search.query
        if not batch:
            query = validate_query(query, CATALOG_V1)
        for predicate in batch:
            checked = validate_query(
                replace(query, predicates=(*search.query.predicates, predicate)), CATALOG_V1
            )
            # The user's own predicates, canonical; each chunk brings its own values.
            query = replace(query, predicates=checked.predicates[:-1])
        try:
            CATALOG_V1.check_purpose(search.purpose)
        except CatalogError as exc:
            raise InvalidQuery(f"--purpose: {exc}") from exc
        case_ref = validate_case_ref(search.case_ref)
        legal_basis = validate_legal_basis(search.legal_basis)
    except (InvalidQuery, CatalogError) as exc:
        raise _usage(exc) from exc
    return replace(search, query=query, case_ref=case_ref, legal_basis=legal_basis)


def gateway_and_token(args: argparse.Namespace) -> tuple[str, str]:
    gateway, token = args.gateway, args.token
    if args.token_file is not None:
        token = read_token(args.token_file, "--token-file")
    if args.federation is not None:
        fed: Path = args.federation
        check_folder(fed, "--federation")
        addr = fed / "run" / "gateway.addr"
        if gateway is None and addr.exists():
            gateway = read_text(addr, "--federation").strip()
        jwt = fed / "investigator.jwt"
        if token is None and jwt.exists():
            token = read_token(jwt, "--federation")
    if not gateway:
        raise LiaisonError("name the gateway with --gateway HOST:PORT (or --federation DIR)")
    if not token:
        raise LiaisonError("give a bearer token with --token, --token-file or --federation")
    if args.tls_ca is not None:
        from liaison.client import read_ca

        read_ca(args.tls_ca)  # a bad CA file is said now, not at the first connection
    return gateway, token


def cmd_query(args: argparse.Namespace) -> int:
    if args.image and args.hashes is not None:
        raise UsageError("--image and --hashes are two batches: ask one at a time")
    if args.hash_field and args.hashes is None:
        raise UsageError("--hash-field applies to --hashes")
    batch = bool(args.image) or args.hashes is not None
    if batch and args.dry_run:
        raise UsageError("--dry-run asks about one query; leave out --image and --hashes")
    if batch and (args.count or args.count_by):
        raise UsageError(
            "--image and --hashes ask --match (which chunks hold a hit) or --fields (which "
            "hashes are held); counts of chunks do not add up"
        )
    if args.stream and (batch or args.dry_run):
        raise UsageError(
            "--stream shows one search's answers as they come; leave out "
            "--dry-run, --image and --hashes"
        )
    if args.dry_run and args.verify:
        raise UsageError("--dry-run releases no answers, so there is nothing to --verify")
    template = SearchInput(
        query=query_from_args(args),
        purpose=args.purpose,
        case_ref=args.case_ref,
        nodes=tuple(n.strip() for n in (args.nodes or "").split(",") if n.strip()),
        deadline_ms=args.deadline_ms,
        legal_basis=args.legal_basis,
    )
    # The keys are loaded before anything is sent: a bad folder is said first.
    verification = (
        Verification.off("a dry run releases no answers")
        if args.dry_run
        else verification_from_args(args)
    )
    if args.hashes is not None:
        return _query_hashes(args, template, verification)
    if args.image:
        return _query_images(args, template, verification)
    search = check_locally(template)
    gateway, token = gateway_and_token(args)
    return _ask(args, gateway, token, search, verification)


def _ask(
    args: argparse.Namespace,
    gateway: str,
    token: str,
    search: SearchInput,
    verification: Verification,
) -> int:
    from liaison import client
    from liaison.cli import render
    from liaison.cli.verify_answers import counted_statuses, exit_code, nobody_asked, report

    if args.dry_run:
        dry = client.dry_run(gateway, token, search, tls_ca=args.tls_ca)
        if args.json:
            print(render.to_json(render.dry_run_to_dict(dry)))
        else:
            print(render.render_dry_run(dry, args.purpose, args.case_ref))
        return outcome(
            NodeStatus.ANSWERED if r.decision is not None else NodeStatus.ERROR for r in dry.results
        )
    if args.stream:
        from liaison.cli.stream_query import ask_streamed

        return ask_streamed(
            gateway, token, search, verification, as_json=args.json, tls_ca=args.tls_ca
        )
    result, check = verification.search(gateway, token, search, tls_ca=args.tls_ca)
    if check is not None:
        report(check.nodes)
    nobody = nobody_asked(result)
    if nobody:
        print(f"liaison query: {nobody}", file=sys.stderr)
    if args.json:
        print(render.to_json(render.result_to_dict(result, check, verification.source)))
    else:
        print(render.render_result(result, args.purpose, args.case_ref, check))
    return exit_code(outcome(counted_statuses(result, check)), bool(check and check.failed))


def _query_hashes(
    args: argparse.Namespace, template: SearchInput, verification: Verification
) -> int:
    from liaison.catalog import CATALOG_V1
    from liaison.cli.hash_list import (
        HashTriage,
        batch_predicate,
        hash_triage_to_dict,
        read_hash_list,
        render_hash_triage,
        with_field,
    )
    from liaison.cli.image_query import ask_batch, verify_report
    from liaison.cli.progress import wanted
    from liaison.cli.render import to_json

    hashes = read_hash_list(args.hashes, template.query.dataset, args.hash_field)
    if args.distance is not None and not any(
        CATALOG_V1.dataset(template.query.dataset).field(name).near for name in hashes.values
    ):
        raise UsageError("--distance applies to PDQ hashes: add --hash-field pdq")
    dataset = CATALOG_V1.dataset(template.query.dataset)
    predicates = {
        name: batch_predicate(dataset.field(name), list(values), args.distance)
        for name, values in hashes.values.items()
    }
    templates = {
        name: check_locally(with_field(template, name), replace(p, values=p.values[:1]))
        for name, p in predicates.items()
    }
    gateway, token = gateway_and_token(args)
    show = wanted(args.progress)
    batches = {
        name: ask_batch(
            gateway,
            token,
            templates[name],
            predicate,
            label=f"asking ({name})",
            chunk_size=args.chunk_size,
            tls_ca=args.tls_ca,
            show_progress=show,
            verification=verification,
        )
        for name, predicate in predicates.items()
    }
    triage = HashTriage(hashes, batches)
    verify_report(*batches.values())
    _say_if_nobody_asked(template.query.dataset, *batches.values())
    if args.json:
        print(to_json(hash_triage_to_dict(triage)))
    else:
        print(render_hash_triage(triage))
    return triage.exit_code()


def _query_images(
    args: argparse.Namespace, template: SearchInput, verification: Verification
) -> int:
    from liaison.cli import render
    from liaison.cli.image_query import (
        exit_code,
        image_triage_to_dict,
        render_image_triage,
        run_image_query,
        verify_report,
    )
    from liaison.cli.progress import wanted
    from liaison.query import DEFAULT_NEAR_DISTANCE, Comparator

    distance = DEFAULT_NEAR_DISTANCE if args.distance is None else args.distance
    search = check_locally(
        template,
        Predicate("sha256", Comparator.IN, ("0" * 64,)),
        Predicate("pdq", Comparator.NEAR, ("0" * 64,), distance),
    )
    gateway, token = gateway_and_token(args)
    triage = run_image_query(
        gateway,
        token,
        search,
        args.image,
        distance=args.distance,
        tls_ca=args.tls_ca,
        chunk_size=args.chunk_size,
        show_progress=wanted(args.progress),
        verification=verification,
    )
    if triage.exact is None and triage.near is None:
        reasons = "; ".join(f"{path}: {why}" for path, why in triage.refused[:3])
        raise LiaisonError(f"--image: no file could be read, nothing was asked ({reasons})")
    verify_report(triage.exact, triage.near)
    _say_if_nobody_asked(search.query.dataset, triage.exact, triage.near)
    if args.json:
        print(render.to_json(image_triage_to_dict(triage)))
    else:
        print(render_image_triage(triage))
    return exit_code(triage.exact, triage.near)


def _say_if_nobody_asked(dataset: str, *batches: BatchResult | None) -> None:
    """A batch no agency was asked about exits 4; standard error says why."""
    statuses = [s for b in batches if b is not None for s in b.statuses()]
    if all(s is NodeStatus.NOT_ASKED for s in statuses):
        print(
            f"liaison query: no agency was asked: none offers dataset {dataset!r}",
            file=sys.stderr,
        )
