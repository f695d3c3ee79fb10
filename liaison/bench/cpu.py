"""CPU time of the federation's processes and of this client, read around a measured window.

Each process's own counters (Linux ``/proc/<pid>/stat``, user plus system, all
threads) say what a query cost it, whatever the others were doing meanwhile.
Elsewhere the readings are None and the reports say CPU was not measured.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CLIENT = "client"


def process_cpu_s(pid: int) -> float | None:
    """User plus system CPU seconds of ``pid`` so far (Linux), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def server_pids(run_dir: Path) -> dict[str, int]:
    """The federation's processes by name, as ``running_federation`` recorded them."""
    return {p.stem: int(p.read_text().strip()) for p in sorted(run_dir.glob("*.pid"))}


@dataclass(frozen=True, slots=True)
class CpuReading:
    """CPU seconds so far of every server process, of this process (the client), and wall time."""

    servers: Mapping[str, float | None]
    client_s: float
    wall_s: float

    @classmethod
    def now(cls, pids: Mapping[str, int]) -> CpuReading:
        return cls(
            {name: process_cpu_s(pid) for name, pid in pids.items()},
            time.process_time(),
            time.perf_counter(),
        )


def cpu_ms_per_query(
    before: CpuReading, after: CpuReading, queries: int
) -> dict[str, float] | None:
    """CPU ms per query of each process, ``client``, their ``total``, and ``wall`` ms per query.

    None when a server's counters could not be read (not Linux, or it exited).
    """
    if queries <= 0:
        return None
    out: dict[str, float] = {}
    for name, b in before.servers.items():
        a = after.servers.get(name)
        if a is None or b is None:
            return None
        out[name] = round((a - b) * 1000 / queries, 3)
    out[CLIENT] = round((after.client_s - before.client_s) * 1000 / queries, 3)
    out["total"] = round(sum(out.values()), 3)
    out["wall"] = round((after.wall_s - before.wall_s) * 1000 / queries, 3)
    return out
