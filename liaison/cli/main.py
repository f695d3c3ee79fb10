"""The `liaison` command line.

This module is the composition root: it is the one place in the shared core
that reaches into ``node`` and ``gateway``, and it does so lazily, inside the
commands that need them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from liaison import __version__
from liaison.cli.audit import add_audit, cmd_audit
from liaison.cli.hashes import add_hash, cmd_hash
from liaison.errors import LiaisonError
from liaison.query import MAX_LIMIT, Comparator, Operation, Predicate, Query

if TYPE_CHECKING:
    from policies.analysis import Finding, NodeMapping
    from policies.model import Policy

EXIT_USAGE = 2
EXIT_ERROR = 1


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser], role: str) -> None:
    p = sub.add_parser(role, help=f"run a {role}")
    inner = p.add_subparsers(dest="action", required=True)
    s = inner.add_parser("serve", help=f"serve the {role} until SIGTERM or Ctrl-C")
    s.add_argument("--config", type=Path, required=True, help=f"{role} config file (TOML)")
    s.add_argument(
        "--port-file", type=Path, help="write HOST:PORT here once listening (useful with port 0)"
    )
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _bounded(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from exc
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is not in {lo}..{hi}")
        return value

    return parse


def _add_query_shape(p: argparse.ArgumentParser, *, limit: bool = True) -> None:
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
        type=_bounded(0, 64),
        default=None,
        metavar="BITS",
        help="largest Hamming distance for --near (0..64; default 31, Meta's recommendation)",
    )
    if limit:
        p.add_argument(
            "--limit",
            type=_bounded(0, MAX_LIMIT),
            default=0,
            help=f"maximum records per agency (1..{MAX_LIMIT}; default: each node's)",
        )


def _add_policy(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("policy", help="check, explain and test a node's policy before deploying it")
    inner = p.add_subparsers(dest="action", required=True)

    c = inner.add_parser(
        "check",
        help="validate a policy against the catalog and warn about rules that cannot work",
        description="Exit status: 0 when the policy loads (and, with --strict, has no "
        "warnings); 1 otherwise.",
    )
    c.add_argument("file", type=Path, help="the policy (TOML)")
    c.add_argument(
        "--node-config",
        type=Path,
        metavar="NODE_TOML",
        help="also check the policy against this node's dataset mappings",
    )
    c.add_argument("--strict", action="store_true", help="fail (exit 1) on warnings too")
    c.add_argument("--json", action="store_true", help="print JSON")

    e = inner.add_parser(
        "explain",
        help="decide one request under a policy and show every rule's part in it",
        description="Decides as the node would, from the policy alone: no data is read.",
    )
    e.add_argument("file", type=Path, help="the policy (TOML)")
    _add_query_shape(e, limit=False)
    e.set_defaults(limit=0)  # a decision does not depend on the limit
    e.add_argument("--agency", required=True, help="the requesting agency's id")
    e.add_argument(
        "--role",
        action="append",
        default=[],
        required=True,
        metavar="ROLE",
        help="the investigator's role (repeat, or separate with commas)",
    )
    e.add_argument(
        "--attr",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an attribute of the investigator's token, e.g. clearance=secret (repeatable)",
    )
    e.add_argument("--purpose", required=True, help="e.g. csam-investigation")
    e.add_argument("--case-ref", required=True, help="the case reference")
    e.add_argument("--legal-basis", default="", help="the legal basis cited, if any")
    e.add_argument("--json", action="store_true", help="print JSON")

    t = inner.add_parser(
        "test",
        help="run the policy's test cases (expected decisions and released fields)",
        description="Exit status: 0 when every case passes; 1 when one fails or a file "
        "is malformed.",
    )
    t.add_argument("file", type=Path, help="the policy (TOML)")
    t.add_argument(
        "cases",
        type=Path,
        nargs="?",
        help="the cases (TOML; default: the policy's name with .cases.toml)",
    )
    t.add_argument("--json", action="store_true", help="print JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liaison",
        description="Federated, policy-filtered, signed queries between agencies.",
    )
    parser.add_argument("--version", action="version", version=f"liaison {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create keys and configs for a new federation in a folder")
    p.add_argument("folder", type=Path)
    p.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="ID",
        help="an agency node to create (repeat for several)",
    )
    p.add_argument(
        "--agency",
        action="append",
        default=[],
        metavar="ID",
        help="an investigators' agency with a development identity provider",
    )
    p.add_argument(
        "--base-port",
        type=int,
        default=50060,
        help="gateway port; nodes take the following ports (default 50060)",
    )

    _add_serve(sub, "node")
    _add_serve(sub, "gateway")

    p = sub.add_parser("token", help="development identity provider (demos and tests only)")
    inner = p.add_subparsers(dest="action", required=True)
    t = inner.add_parser(
        "issue",
        help="sign a JWT with a development identity provider key; NOT for production",
    )
    t.add_argument("--key", type=Path, required=True, help="development IdP private key (PEM)")
    t.add_argument("--agency", required=True)
    t.add_argument("--subject", required=True, help="the investigator's id")
    t.add_argument("--roles", default="investigator", help="comma-separated roles")
    t.add_argument("--issuer", help="issuer URL (default: the dev IdP URL of the agency)")
    t.add_argument("--audience", default="liaison-gateway")
    t.add_argument("--ttl", type=int, default=3600, help="seconds the token is valid")
    t.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="write the token to FILE, readable by its owner only (default: print it)",
    )

    p = sub.add_parser("query", help="ask the federation through a gateway")
    _add_query_shape(p)
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
        "--chunk-size",
        type=_bounded(1, 1000),
        default=1000,
        metavar="N",
        help="with --image: hashes per federated request (default 1000; smaller for nodes "
        "whose rate limits count each hash)",
    )
    p.add_argument("--nodes", help="comma-separated agencies to ask (default: all)")
    p.add_argument(
        "--deadline-ms",
        type=_bounded(0, 600_000),
        default=0,
        help="overall deadline in ms (default: the gateway's)",
    )
    p.add_argument("--gateway", help="gateway address HOST:PORT")
    p.add_argument("--token", help="bearer JWT (or --token-file)")
    p.add_argument("--token-file", type=Path)
    p.add_argument(
        "--tls-ca", type=Path, help="connect with TLS, verifying the gateway against this CA (PEM)"
    )
    p.add_argument(
        "--federation", type=Path, help="a demo folder: take gateway address and token from it"
    )
    p.add_argument("--json", action="store_true", help="print JSON")

    _add_policy(sub)
    add_audit(sub)
    add_hash(sub)

    p = sub.add_parser("demo", help="run a whole federation on this machine and query it")
    p.add_argument("--workdir", type=Path, help="keep the federation in this folder")
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="leave nodes and gateway running for `liaison query`",
    )
    p.add_argument(
        "--stop", action="store_true", help="stop a federation left running in --workdir"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    return parser


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
            raise LiaisonError(f"--where {cond!r}: write FIELD=VALUE, FIELD>=VALUE or FIELD<=VALUE")
    for cond in any_of:
        field, sep, values = cond.partition("=")
        if not sep or not field.strip() or not values:
            raise LiaisonError(f"--any {cond!r}: write FIELD=V1,V2,...")
        out.append(
            Predicate(field.strip(), Comparator.IN, tuple(v.strip() for v in values.split(",")))
        )
    for cond in near or []:
        field, sep, values = cond.partition("=")
        if not sep or not field.strip() or not values:
            raise LiaisonError(f"--near {cond!r}: write FIELD=HASH or FIELD=HASH1,HASH2,...")
        hashes = tuple(v.strip() for v in values.split(","))
        out.append(Predicate(field.strip(), Comparator.NEAR, hashes, distance))
    if distance is not None and not near and not image:
        raise LiaisonError("--distance applies to --near or --image; add --near pdq=HASH")
    return tuple(out)


def _query_from_args(args: argparse.Namespace) -> Query:
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
        args.where, args.any, args.near, args.distance, image=bool(getattr(args, "image", []))
    )
    return Query(args.dataset, op, predicates, fields, group, args.limit)


def _cmd_query(args: argparse.Namespace) -> int:
    from liaison import client
    from liaison.cli import render
    from liaison.messages import SearchInput

    gateway, token = args.gateway, args.token
    if args.token_file:
        token = args.token_file.read_text().strip()
    if args.federation:
        fed = args.federation
        addr = fed / "run" / "gateway.addr"
        if gateway is None and addr.exists():
            gateway = addr.read_text().strip()
        if token is None and (fed / "investigator.jwt").exists():
            token = (fed / "investigator.jwt").read_text().strip()
    if not gateway:
        raise LiaisonError("name the gateway with --gateway HOST:PORT (or --federation DIR)")
    if not token:
        raise LiaisonError("give a bearer token with --token, --token-file or --federation")
    if args.image:
        return _query_images(args, gateway, token)
    search_input = SearchInput(
        query=_query_from_args(args),
        purpose=args.purpose,
        case_ref=args.case_ref,
        nodes=tuple(n.strip() for n in (args.nodes or "").split(",") if n.strip()),
        deadline_ms=args.deadline_ms,
        legal_basis=args.legal_basis,
    )
    if args.dry_run:
        dry = client.dry_run(gateway, token, search_input, tls_ca=args.tls_ca)
        if args.json:
            print(render.to_json(render.dry_run_to_dict(dry)))
        else:
            print(render.render_dry_run(dry, args.purpose, args.case_ref))
        return 0
    result = client.search(gateway, token, search_input, tls_ca=args.tls_ca)
    if args.json:
        print(render.to_json(render.result_to_dict(result)))
    else:
        print(render.render_result(result, args.purpose, args.case_ref))
    return 0


def _query_images(args: argparse.Namespace, gateway: str, token: str) -> int:
    from liaison.cli import render
    from liaison.cli.image_query import image_triage_to_dict, render_image_triage, run_image_query
    from liaison.messages import SearchInput

    if args.dry_run:
        raise LiaisonError("--dry-run asks about one query; leave out --image")
    template = SearchInput(
        query=_query_from_args(args),
        purpose=args.purpose,
        case_ref=args.case_ref,
        nodes=tuple(n.strip() for n in (args.nodes or "").split(",") if n.strip()),
        deadline_ms=args.deadline_ms,
        legal_basis=args.legal_basis,
    )
    triage = run_image_query(
        gateway,
        token,
        template,
        args.image,
        distance=args.distance,
        tls_ca=args.tls_ca,
        chunk_size=args.chunk_size,
    )
    if args.json:
        print(render.to_json(image_triage_to_dict(triage)))
    else:
        print(render_image_triage(triage))
    return 0


def _cmd_policy(args: argparse.Namespace) -> int:
    if args.action == "check":
        return _policy_check(args)
    if args.action == "explain":
        return _policy_explain(args)
    return _policy_test(args)


def _policy_check(args: argparse.Namespace) -> int:
    from liaison.catalog import CATALOG_V1
    from liaison.cli import render
    from liaison.config import load_node_config
    from policies.analysis import NodeMapping, Severity

    node = None
    if args.node_config is not None:
        node = NodeMapping.from_config(load_node_config(args.node_config, CATALOG_V1))
    policy, findings = _check_policy_file(args.file, node)
    if args.json:
        report = render.findings_to_dict(args.file, policy, findings, strict=args.strict)
        print(render.to_json(report))
    else:
        print(render.render_findings(args.file, policy, findings))
    failing = {Severity.ERROR, Severity.WARNING} if args.strict else {Severity.ERROR}
    return EXIT_ERROR if any(f.severity in failing for f in findings) else 0


def _check_policy_file(
    path: Path, node: NodeMapping | None
) -> tuple[Policy | None, tuple[Finding, ...]]:
    """The loaded policy (None if it does not load) and every finding about it."""
    import tomllib

    from liaison.catalog import CATALOG_V1
    from liaison.errors import PolicyError
    from policies import load_policy
    from policies.analysis import Finding, Kind, Severity, analyse, policy_errors

    try:
        policy = load_policy(path, CATALOG_V1)
    except PolicyError as exc:
        # Unreadable or not TOML: one error says it all. Otherwise list every
        # problem, not only the first one the loader met.
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            raise exc from None
        return None, policy_errors(document, CATALOG_V1)
    findings = analyse(policy, node)
    if node is not None and Path(node.policy_file).resolve() != path.resolve():
        note = Finding(
            Severity.NOTE,
            Kind.OTHER_POLICY,
            "",
            f"the node config loads {node.policy_file}, not this file; this file was checked "
            "against its mappings all the same",
        )
        findings += (note,)
    return policy, findings


def _split(values: list[str]) -> tuple[str, ...]:
    return tuple(
        dict.fromkeys(v.strip() for value in values for v in value.split(",") if v.strip())
    )


def _policy_explain(args: argparse.Namespace) -> int:
    from liaison.catalog import CATALOG_V1
    from liaison.cli import render
    from liaison.errors import CatalogError
    from liaison.messages import Requester
    from liaison.query import validate_case_ref, validate_legal_basis, validate_query
    from policies import load_policy
    from policies.analysis import explain

    policy = load_policy(args.file, CATALOG_V1)
    roles = _split(args.role)
    if not roles:
        raise LiaisonError("--role needs at least one role")
    attributes: dict[str, str] = {}
    for item in args.attr:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise LiaisonError(f"--attr {item!r}: write NAME=VALUE, e.g. clearance=secret")
        attributes[name.strip()] = value.strip()
    try:
        CATALOG_V1.check_purpose(args.purpose)
    except CatalogError as exc:
        raise LiaisonError(f"--purpose: {exc}") from exc
    query = validate_query(_query_from_args(args), CATALOG_V1)
    case_ref = validate_case_ref(args.case_ref)
    legal_basis = validate_legal_basis(args.legal_basis)
    requester = Requester(args.agency, "policy-explain", roles, "", attributes)
    explanation = explain(
        policy, requester, args.purpose, query, case_ref=case_ref, legal_basis=legal_basis
    )
    context = {
        "purpose": args.purpose,
        "case_ref": case_ref,
        "legal_basis": legal_basis,
        "query": query,
        "agency": args.agency,
        "roles": roles,
        "attributes": attributes,
    }
    if args.json:
        print(render.to_json(render.explanation_to_dict(explanation, **context)))
    else:
        print(render.render_explanation(explanation, **context))
    return 0


def _policy_test(args: argparse.Namespace) -> int:
    from liaison.catalog import CATALOG_V1
    from liaison.cli import render
    from liaison.errors import CaseFileError
    from policies import load_policy
    from policies.cases import cases_path_for, load_cases, run_cases

    policy = load_policy(args.file, CATALOG_V1)
    cases_path = args.cases or cases_path_for(args.file)
    if args.cases is None and not cases_path.exists():
        raise CaseFileError(
            f"no policy tests found: expected {cases_path} beside the policy; "
            "write one or name the cases file"
        )
    results = run_cases(policy, load_cases(cases_path, CATALOG_V1))
    if args.json:
        print(render.to_json(render.case_results_to_dict(args.file, cases_path, results)))
    else:
        print(render.render_case_results(args.file, cases_path, results))
    return 0 if all(r.passed for r in results) else EXIT_ERROR


def _cmd_token(args: argparse.Namespace) -> int:
    from liaison.keys import SigningKey
    from liaison.tokens import dev_issuer, issue_dev_token

    roles = tuple(r.strip() for r in args.roles.split(",") if r.strip())
    if not roles:
        raise LiaisonError("--roles needs at least one role")
    if not 1 <= args.ttl <= 12 * 3600:
        raise LiaisonError("--ttl must be between 1 and 43200 seconds")
    key = SigningKey.from_pem_file(args.key)
    token = issue_dev_token(
        key,
        issuer=args.issuer or dev_issuer(args.agency),
        audience=args.audience,
        agency=args.agency,
        subject=args.subject,
        roles=roles,
        ttl_s=args.ttl,
    )
    if args.out is None:
        print(token)
    else:
        from liaison.demo.federation import write_private_text

        # A bearer token: whoever reads the file can ask as this investigator.
        write_private_text(args.out, token + "\n")
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    from liaison.demo.federation import init_federation

    agencies = args.agency or ["investigators"]
    init_federation(args.folder, args.node, agencies, args.base_port)
    print(
        f"federation written to {args.folder}: gateway, {len(args.node)} node(s), "
        f"development identity provider(s) for {', '.join(agencies)}"
    )
    print(
        "next: load each node's data, edit its policy.toml, then `liaison node serve "
        "--config <folder>/nodes/<id>/node.toml`"
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from liaison.demo.processes import stop_run_dir
    from liaison.demo.run import run_demo

    if args.stop:
        if args.workdir is None:
            raise LiaisonError("--stop needs the --workdir of the running federation")
        stopped = stop_run_dir(args.workdir / "run")
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        return 0
    if args.keep_running and args.workdir is None:
        raise LiaisonError("--keep-running needs --workdir, so you can find the federation")
    return run_demo(args.workdir, keep_running=args.keep_running, as_json=args.json)


def _cmd_serve(args: argparse.Namespace) -> int:
    from liaison import logs

    logs.configure(args.log_level)
    if args.command == "node":
        from node.server import serve as serve_node

        serve_node(args.config, args.port_file)
    else:
        from gateway.server import serve as serve_gateway

        serve_gateway(args.config, args.port_file)
    return 0


COMMANDS = {
    "init": _cmd_init,
    "node": _cmd_serve,
    "gateway": _cmd_serve,
    "token": _cmd_token,
    "query": _cmd_query,
    "policy": _cmd_policy,
    "demo": _cmd_demo,
    "audit": cmd_audit,
    "hash": cmd_hash,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except LiaisonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (`| head`) went away: not an error worth a traceback.
        # Point stdout at /dev/null so the interpreter's final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
