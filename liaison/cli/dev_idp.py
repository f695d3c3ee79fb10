"""`liaison dev-idp serve`: the development OpenID Connect provider (demos and tests only)."""

from __future__ import annotations

import argparse
from pathlib import Path

from liaison.cli.inputs import check_output_file, read_text


def add_dev_idp(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dev-idp",
        help="development OpenID Connect provider for the console (demos and tests only)",
        description="Signs anyone in as any configured user, without a password. "
        "Never use it in production.",
    )
    inner = p.add_subparsers(dest="action", required=True)
    s = inner.add_parser("serve", help="serve until SIGTERM or Ctrl-C")
    s.add_argument("--config", type=Path, required=True, help="dev-idp config file (TOML)")
    s.add_argument(
        "--port-file", type=Path, help="write HOST:PORT here once listening (useful with port 0)"
    )


def cmd_dev_idp(args: argparse.Namespace) -> int:
    # Imported here so that `liaison --help` does not load the web stack.
    from liaison.identity.dev_oidc import build_app
    from liaison.identity.dev_oidc_config import load_dev_idp_config
    from liaison.web_serving import listening_socket, serve, url_host

    read_text(args.config, "--config")
    if args.port_file is not None:
        check_output_file(args.port_file, "--port-file")
    config = load_dev_idp_config(args.config)
    sock = listening_socket(config.host, config.port)
    shown_host, port = url_host(sock)
    scheme = "https" if config.tls else "http"
    app = build_app(config, f"{scheme}://{shown_host}:{port}")
    print(
        f"development identity provider (NOT for production) at {scheme}://{shown_host}:{port}/"
        f"<agency>: {', '.join(sorted(config.agencies))}",
        flush=True,
    )
    tls = (config.tls_cert, config.tls_key) if config.tls_cert and config.tls_key else None
    # URLs carry codes and state: no access log.
    serve(app, sock, tls=tls, port_file=args.port_file, access_log=False, where=str(args.config))
    return 0
