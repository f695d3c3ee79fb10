"""Starting and stopping node and gateway processes for the demo and tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from liaison.errors import LiaisonError


class ProcessFailed(LiaisonError):
    """A node or gateway process did not start; its log says why."""


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    address: str
    log: Path


def die_with_parent() -> None:
    """In a child before exec: be killed (SIGKILL) when the process that started us dies.

    Linux only (PR_SET_PDEATHSIG); elsewhere a no-op. The signal comes when the
    *thread* that started the child ends, so start children from a thread that
    lives as long as they should.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def start_service(
    name: str,
    role: str,
    config: Path,
    run_dir: Path,
    timeout_s: float = 20,
    detach: bool = False,
    *,
    orphan_proof: bool = False,
) -> Service:
    """Run ``liaison <role> serve`` and wait until it reports its bound address.

    With ``orphan_proof``, the service dies with this process even when this
    one is killed outright (SIGKILL leaves no time to clean up).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    port_file = run_dir / f"{name}.addr"
    port_file.unlink(missing_ok=True)
    log = run_dir / f"{name}.log"
    with log.open("ab") as log_fh:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "liaison",
                role,
                "serve",
                "--config",
                str(config),
                "--port-file",
                str(port_file),
            ],
            stdout=log_fh,
            stderr=log_fh,
            stdin=subprocess.DEVNULL,
            start_new_session=detach,
            preexec_fn=die_with_parent if orphan_proof else None,
        )
    (run_dir / f"{name}.pid").write_text(f"{process.pid}\n")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_file.exists():
            return Service(name, process, port_file.read_text().strip(), log)
        if process.poll() is not None:
            raise ProcessFailed(f"{name} exited while starting:\n{_tail(log)}")
        time.sleep(0.05)
    process.kill()
    raise ProcessFailed(f"{name} did not start within {timeout_s:.0f} s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def stop_service(service: Service, timeout_s: float = 10) -> None:
    if service.process.poll() is None:
        service.process.send_signal(signal.SIGTERM)
        try:
            service.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_in(run_dir: Path) -> list[str]:
    """Names of the processes recorded in ``run_dir`` that are still alive."""
    alive = []
    for pid_file in sorted(run_dir.glob("*.pid")):
        try:
            pid = int(pid_file.read_text().strip())
        except ValueError:
            continue
        if _alive(pid):
            alive.append(pid_file.stem)
    return alive


def stop_run_dir(run_dir: Path, timeout_s: float = 10) -> list[str]:
    """Stop every process recorded in ``run_dir`` (from ``demo --keep-running``)."""
    stopped: dict[str, int] = {}
    for pid_file in sorted(run_dir.glob("*.pid")):
        try:
            pid = int(pid_file.read_text().strip())
        except ValueError:
            pid_file.unlink()
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            stopped[pid_file.stem] = pid
        pid_file.unlink()
        (run_dir / f"{pid_file.stem}.addr").unlink(missing_ok=True)
    deadline = time.monotonic() + timeout_s
    while any(_alive(p) for p in stopped.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in stopped.values():
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return list(stopped)
