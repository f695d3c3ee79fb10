"""The wire contract for other languages: proto/liaison/v1 generates and compiles.

- TypeScript: ts-proto (grpc-js services) from ``.tools/wire-ts`` (``make
  wire-tools`` installs it from npm), then ``tsc --noEmit`` over the generated
  code and a small client of the gateway (tests/wire_contract/client.ts).
  Under CI (CI=true) this must run: ``make test`` installs the tools first.
- Java: ``protoc --java_out`` and ``javac`` against a protobuf-java jar of the
  same protobuf release as that protoc (Debian's ``protobuf-compiler`` and
  ``libprotobuf-java``, or PROTOC / PROTOBUF_JAVA_JAR). The protoc inside
  grpcio-tools has no Java generator, and Maven Central is not reachable here,
  so without those packages it skips and says so.
- Go: ``protoc-gen-go`` and ``go build`` where ``go`` is installed; skips otherwise.
- C#: generated (``protoc --csharp_out``) where a protoc is there; compiling
  needs dotnet and the Google.Protobuf package, which this check does not fetch.

Every language's options are checked from the descriptors themselves, always.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from proto.liaison.v1 import envelope_pb2, gateway_pb2, node_pb2, query_pb2

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"
PROTOS = sorted(
    str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "liaison" / "v1").glob("*.proto")
)
WIRE_TS = REPO / ".tools" / "wire-ts"
CONTRACT = Path(__file__).resolve().parent / "wire_contract"
IN_CI = os.environ.get("CI", "").lower() == "true"
TIMEOUT_S = 120

GO_PACKAGE = "liaison/gen/go/liaison/v1;liaisonv1"


def run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    """Run a tool; on failure show what it printed."""
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, (
        f"{args[0]} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
    )


def missing(reason: str) -> NoReturn:
    print(f"wire contract: skipped: {reason}", file=sys.stderr)
    pytest.skip(reason)


@pytest.mark.parametrize(
    "module", [envelope_pb2, gateway_pb2, node_pb2, query_pb2], ids=lambda m: m.__name__
)
def test_every_file_names_its_package_for_every_language(module: object) -> None:
    options = module.DESCRIPTOR.GetOptions()  # type: ignore[attr-defined]  # a generated module
    assert options.go_package == GO_PACKAGE
    assert options.java_package == "liaison.v1"
    assert options.java_multiple_files is True
    assert options.java_outer_classname.endswith("Proto")
    assert options.csharp_namespace == "Liaison.V1"


# --- TypeScript ---------------------------------------------------------------------


@pytest.fixture
def ts_work() -> Iterator[Path]:
    """A scratch folder inside .tools/wire-ts, so that its node_modules resolve."""
    tsc = WIRE_TS / "node_modules" / "typescript" / "bin" / "tsc"
    plugin = WIRE_TS / "node_modules" / ".bin" / "protoc-gen-ts_proto"
    node = shutil.which("node")
    if node is None or not tsc.exists() or not plugin.exists():
        reason = (
            "TypeScript tools are not installed: run `make wire-tools` (needs node and npm)"
            if node
            else "node is not installed"
        )
        if IN_CI:
            pytest.fail(f"{reason}; `make test` installs them before the tests run")
        missing(reason)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=WIRE_TS))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_a_typescript_client_generates_and_compiles(ts_work: Path) -> None:
    gen = ts_work / "gen"
    gen.mkdir()
    run(
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--plugin=protoc-gen-ts_proto={WIRE_TS / 'node_modules' / '.bin' / 'protoc-gen-ts_proto'}",
        f"--ts_proto_out={gen}",
        "--ts_proto_opt=outputServices=grpc-js,esModuleInterop=true,env=node",
        *PROTOS,
        cwd=PROTO_ROOT,
    )
    assert sorted(p.name for p in (gen / "liaison" / "v1").iterdir()) == [
        "envelope.ts",
        "followup.ts",
        "gateway.ts",
        "node.ts",
        "query.ts",
    ]
    shutil.copy(CONTRACT / "client.ts", ts_work)
    shutil.copy(CONTRACT / "tsconfig.json", ts_work)
    run("node", WIRE_TS / "node_modules" / "typescript" / "bin" / "tsc", "-p", ts_work)


def test_the_typescript_check_fails_on_a_client_that_does_not_fit(ts_work: Path) -> None:
    """The compile step can fail: a field the contract lacks is an error."""
    gen = ts_work / "gen"
    gen.mkdir()
    run(
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--plugin=protoc-gen-ts_proto={WIRE_TS / 'node_modules' / '.bin' / 'protoc-gen-ts_proto'}",
        f"--ts_proto_out={gen}",
        "--ts_proto_opt=outputServices=grpc-js,esModuleInterop=true,env=node",
        "liaison/v1/envelope.proto",
        cwd=PROTO_ROOT,
    )
    (ts_work / "bad.ts").write_text(
        'import { Envelope } from "./gen/liaison/v1/envelope";\n'
        "export const id: string = Envelope.fromPartial({}).keyIdentifier;\n"
    )
    shutil.copy(CONTRACT / "tsconfig.json", ts_work)
    with pytest.raises(AssertionError, match="Property 'keyIdentifier' does not exist"):
        run("node", WIRE_TS / "node_modules" / "typescript" / "bin" / "tsc", "-p", ts_work)


# --- Java, Go, C#: where their toolchains are ---------------------------------------------


def system_protoc() -> str | None:
    """A protoc with the built-in Java and C# generators (grpcio-tools' has only Python)."""
    return os.environ.get("PROTOC") or shutil.which("protoc")


def test_java_messages_generate_and_compile(tmp_path: Path) -> None:
    javac = shutil.which("javac")
    protoc = system_protoc()
    jar = Path(os.environ.get("PROTOBUF_JAVA_JAR", "/usr/share/java/protobuf.jar"))
    if javac is None:
        missing("javac is not installed")
    if protoc is None or not jar.exists():
        missing(
            "no protoc with a matching protobuf-java jar: Maven Central is not reachable here "
            "and grpcio-tools' protoc has no Java generator; install Debian's "
            "`protobuf-compiler libprotobuf-java` (or set PROTOC and PROTOBUF_JAVA_JAR)"
        )
    src, classes = tmp_path / "src", tmp_path / "classes"
    src.mkdir()
    classes.mkdir()
    run(protoc, f"-I{PROTO_ROOT}", f"--java_out={src}", *PROTOS, cwd=PROTO_ROOT)
    package = src / "liaison" / "v1"
    # One class per message (java_multiple_files), in the package the options name.
    assert {"NodeResult.java", "SearchResponse.java", "Envelope.java", "GatewayProto.java"} <= {
        p.name for p in package.iterdir()
    }
    shutil.copy(CONTRACT / "Client.java", package / "Client.java")
    run(javac, "-d", classes, "-cp", jar, *sorted(package.glob("*.java")))
    assert (classes / "liaison" / "v1" / "Client.class").exists()


def test_go_messages_generate_and_build(tmp_path: Path) -> None:
    go = shutil.which("go")
    plugin = shutil.which("protoc-gen-go")
    if go is None:
        missing("go is not installed (a Go check also needs protoc-gen-go on PATH)")
    if plugin is None:
        missing(
            "protoc-gen-go is not on PATH: "
            "`go install google.golang.org/protobuf/cmd/protoc-gen-go@latest`"
        )
    out = tmp_path / "liaisonv1"
    out.mkdir()
    run(
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--plugin=protoc-gen-go={plugin}",
        f"--go_out={out}",
        "--go_opt=paths=source_relative",
        *PROTOS,
        cwd=PROTO_ROOT,
    )
    (tmp_path / "go.mod").write_text("module liaison\n\ngo 1.21\n")
    env = {**os.environ, "GOFLAGS": "-mod=mod"}
    tidy = subprocess.run(
        [go, "mod", "tidy"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    if tidy.returncode != 0:
        missing(f"google.golang.org/protobuf cannot be had: {tidy.stderr.strip()[:200]}")
    run(go, "build", "./...", cwd=tmp_path, env=env)


def test_csharp_messages_generate(tmp_path: Path) -> None:
    protoc = system_protoc()
    if protoc is None:
        missing("no protoc with the C# generator (grpcio-tools' protoc has only Python)")
    run(protoc, f"-I{PROTO_ROOT}", f"--csharp_out={tmp_path}", *PROTOS, cwd=PROTO_ROOT)
    gateway = (tmp_path / "Gateway.cs").read_text()
    assert "namespace Liaison.V1 {" in gateway
    assert "SignedAnswer" in gateway
