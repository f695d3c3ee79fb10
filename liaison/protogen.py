"""Generate the Python modules of the wire contract, or check they are current.

protoc writes absolute imports (``from liaison.v1 import x_pb2``) that would
collide with this shared package's name, so they are rewritten to relative
imports; the rewrite is deterministic, which keeps ``--check`` meaningful.

    python -m liaison.protogen          # regenerate proto/liaison/v1/*_pb2*.py
    python -m liaison.protogen --check  # exit 1 if the committed modules drift
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent.parent / "proto"
PACKAGE_DIR = PROTO_ROOT / "liaison" / "v1"
_ABSOLUTE_IMPORT = re.compile(r"^from liaison\.v1 import ", re.MULTILINE)
_GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc  # deferred: only a developer dependency

    sources = sorted(PACKAGE_DIR.glob("*.proto"))
    rel = [str(p.relative_to(PROTO_ROOT)) for p in sources]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{Path(protoc.__file__).parent / '_proto'}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *rel,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    produced = sorted(
        p for p in (out_dir / "liaison" / "v1").iterdir() if p.name.endswith(_GENERATED_SUFFIXES)
    )
    for path in produced:
        path.write_text(_ABSOLUTE_IMPORT.sub("from . import ", path.read_text()))
    return produced


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if generated modules drift")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        produced = _generate(Path(tmp))
        if not args.check:
            for path in produced:
                (PACKAGE_DIR / path.name).write_text(path.read_text())
            print(f"generated {len(produced)} modules in {PACKAGE_DIR}")
            return 0
        stale = [
            p.name
            for p in produced
            if not (PACKAGE_DIR / p.name).exists()
            or (PACKAGE_DIR / p.name).read_text() != p.read_text()
        ]
        committed = {p.name for p in PACKAGE_DIR.iterdir() if p.name.endswith(_GENERATED_SUFFIXES)}
        orphans = sorted(committed - {p.name for p in produced})
        if stale or orphans:
            print(
                "generated protobuf modules are out of date: "
                f"{', '.join(stale + orphans)}; run `make proto` and commit the result",
                file=sys.stderr,
            )
            return 1
        print("generated protobuf modules are current")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
