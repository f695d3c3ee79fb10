"""Several nodes in one process, each with its own identity and state.

    python -m liaison.wan.nodehost --addresses FILE CONFIG [CONFIG ...]

A node process holds about 110 MB and takes 3 s of CPU to start, mostly
imports; a hundred of them would take 11 GB and minutes on two cores. Here
each config gets its own node exactly as ``liaison node serve`` builds it
(its keys, policy, database, receipts ledger, replay state and gRPC server on
a port of its own) and they share only the interpreter. Once all listen, the
host writes ``{node_id: "HOST:PORT"}`` to FILE as JSON, atomically. SIGTERM
or SIGINT stops them all; SIGKILL is a crash of every node in the host.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path

import grpc

from liaison.catalog import CATALOG_V1
from liaison.config import load_node_config
from liaison.serving import Shutdown, host_of
from node.answering import close_core
from node.server import build_node, serve_node

# Each node's share of threads: a federated query asks a node once.
WORKERS_PER_NODE = 8


def _stop(server: grpc.Server) -> None:
    server.stop(grace=1).wait()


def serve_nodes(configs: list[Path], addresses: Path) -> None:
    shutdown = Shutdown().install()
    with ExitStack() as stack:
        bound: dict[str, str] = {}
        for path in configs:
            config = load_node_config(path, CATALOG_V1)
            core = build_node(config)
            stack.callback(close_core, core)
            served = serve_node(core, config.listen, WORKERS_PER_NODE, config.tls)
            stack.callback(_stop, served.server)
            bound[core.node_id] = f"{host_of(config.listen)}:{served.port}"
        # As `liaison node serve`: what is loaded now lives as long as the process.
        gc.collect()
        gc.freeze()
        tmp = addresses.with_suffix(addresses.suffix + ".tmp")
        tmp.write_text(json.dumps(bound))
        os.replace(tmp, addresses)
        shutdown.wait_requested()


def main(argv: list[str] | None = None) -> int:
    from liaison import logs

    parser = argparse.ArgumentParser(
        prog="python -m liaison.wan.nodehost", description="Serve several nodes in one process."
    )
    parser.add_argument("--addresses", type=Path, required=True, help="write node addresses here")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("configs", type=Path, nargs="+", help="node.toml of each node")
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    serve_nodes(args.configs, args.addresses)
    return 0


if __name__ == "__main__":
    sys.exit(main())
