"""A federation of many agencies over an emulated WAN, on loopback, and its controls.

Layout, in a federation folder as the demo writes it (``liaison.demo.federation``):

    DIR/nodes/<id>/...      every agency: keys, policy, SQLite records, receipts ledger
    DIR/wan/plan.json       each agency's capital, round-trip time, jitter and loss
    DIR/run/                logs, node host addresses, the proxy's log

Nodes run in host processes (``liaison.wan.nodehost``), several per process;
the gateway and the proxy (``liaison.wan.control``) in one each. The gateway
knows every node only by its proxy link's address, so everything it says to a
node crosses that node's emulated path. Every child process is in a session
of its own (a Ctrl-C reaches only this process, which then stops them in
order) and is killed by the kernel if this process dies without cleaning up.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

import sqlalchemy as sa

from liaison import client
from liaison.demo.data import INVESTIGATOR_AGENCY, agency_like, populate, probes
from liaison.demo.federation import (
    NodeLayout,
    write_dev_idp,
    write_gateway_config,
    write_gateway_keys,
    write_node,
    write_pki,
)
from liaison.demo.processes import (
    ProcessFailed,
    Service,
    die_with_parent,
    start_service,
    stop_service,
)
from liaison.demo.run import CASE_REF, investigator_token
from liaison.errors import ConfigError
from liaison.messages import SearchInput, SearchResult
from liaison.query import Comparator, Operation, Predicate, Query
from liaison.wan.control import ProxyControl, ProxyProcess, ProxyThread
from liaison.wan.latency import Site, plan
from liaison.wan.links import LinkMode, LinkProfile

# Local schemas are borrowed from the demo's three agencies, in turn.
TEMPLATES = ("ruritania", "freedonia", "sylvania")

WAN_POLICY = """\
# Policy of {name}, node {node_id}: an agency of the WAN test bed. Default deny.
version = 1
agency = {node_id_toml}

[[rule]]
id = "hash-hits"
effect = "permit"
description = "Any agency's investigator may learn whether we hold a file hash (hit/no-hit)."
agencies = ["*"]
roles = ["investigator"]
purposes = ["csam-investigation", "victim-identification"]
datasets = ["media"]
operations = ["match"]
match_fields = ["sha256", "md5"]

[[rule]]
id = "media-records"
effect = "permit"
description = "Investigators may see the category and month first seen of shareable records."
agencies = ["*"]
roles = ["investigator"]
purposes = ["csam-investigation", "victim-identification"]
datasets = ["media"]
operations = ["records"]
match_fields = ["sha256", "md5"]
release = ["sha256", "category", "first_seen"]
transforms = {{ first_seen = "month" }}
row_filters = [{{ field = "shareable", eq = "true" }}]
max_rows = 50
"""


@dataclass(frozen=True, slots=True)
class WanOptions:
    nodes: int = 100
    seed: int = 1
    rtt_scale: float = 1.0  # shrink every round trip (tests)
    max_loss: float = 0.03
    nodes_per_process: int = 10
    media: int = 300  # records per agency
    accounts: int = 100
    tls: bool = True  # mutual TLS between gateway and nodes, through the proxy
    deadline_ms: int = 5000  # the gateway's per-query deadline
    proxy_process: bool = True  # False: the proxy runs on a thread of this process
    start_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.nodes_per_process < 1:
            raise ConfigError("nodes_per_process must be at least 1")


def _toml_str(value: str) -> str:
    return json.dumps(value)


def build_testbed(
    root: Path, options: WanOptions, *, progress: TextIO = sys.stderr
) -> tuple[Site, ...]:
    """Write a federation of ``options.nodes`` agencies into ``root``; return their sites."""
    if root.exists() and any(root.iterdir()):
        raise ConfigError(f"{root} is not empty; give the test bed a new folder")
    sites = plan(
        options.nodes, options.seed, rtt_scale=options.rtt_scale, max_loss=options.max_loss
    )
    gateway_pub = write_gateway_keys(root)
    ids = [s.node_id for s in sites]
    if options.tls:
        write_pki(root, ids)
    write_dev_idp(root, INVESTIGATOR_AGENCY)
    for i, site in enumerate(sites):
        template = TEMPLATES[i % len(TEMPLATES)]
        agency = agency_like(template, site.node_id, site.name)
        folder = root / "nodes" / site.node_id
        folder.mkdir(parents=True, exist_ok=True)
        db = folder / "records.sqlite3"
        engine = sa.create_engine(f"sqlite:///{db}")
        try:
            populate(
                agency,
                engine,
                media=options.media,
                accounts=options.accounts,
                cases=50,
                index=i,
                part=template,
            )
        finally:
            engine.dispose()
        policy = WAN_POLICY.format(
            name=site.name, node_id=site.node_id, node_id_toml=_toml_str(site.node_id)
        )
        write_node(
            NodeLayout(
                node_id=site.node_id,
                folder=folder,
                database_url=f"sqlite:///{db.name}",
                mapping=agency.mapping,
                policy_text=policy,
                # The test bed measures queries; a hundred inboxes would only cost ports.
                inbox=False,
            ),
            gateway_pub,
            tls=options.tls,
        )
        if (i + 1) % 10 == 0 or i + 1 == len(sites):
            print(f"  built {i + 1}/{len(sites)} agencies", file=progress, flush=True)
    (root / "wan").mkdir(exist_ok=True)
    (root / "wan" / "plan.json").write_text(json.dumps([asdict(s) for s in sites], indent=1) + "\n")
    return sites


def probe_search() -> SearchInput:
    """A hit/no-hit question every test bed agency's policy answers."""
    return SearchInput(
        Query(
            dataset="media",
            operation=Operation.MATCH,
            predicates=(Predicate("sha256", Comparator.EQ, (probes().shared_sha256,)),),
        ),
        "csam-investigation",
        CASE_REF,
    )


@dataclass
class _Host:
    index: int
    node_ids: tuple[str, ...]
    configs: tuple[Path, ...]
    addresses: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None


def rss_kb(pid: int) -> int:
    """Resident memory of ``pid`` in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


@dataclass
class Timings:
    build_s: float = 0.0
    proxy_s: float = 0.0
    nodes_s: float = 0.0
    gateway_s: float = 0.0


@dataclass
class WanTestbed:
    """A running test bed; use :func:`running_testbed`, which stops it whatever happens."""

    root: Path
    options: WanOptions
    sites: tuple[Site, ...]
    progress: TextIO = sys.stderr
    proxy: ProxyControl | None = None
    gateway: Service | None = None
    hosts: list[_Host] = field(default_factory=list)
    node_addresses: dict[str, str] = field(default_factory=dict)
    link_addresses: dict[str, str] = field(default_factory=dict)
    planned: dict[str, LinkProfile] = field(default_factory=dict)
    timings: Timings = field(default_factory=Timings)
    _host_of: dict[str, _Host] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def gateway_address(self) -> str:
        if self.gateway is None:
            raise ConfigError("the test bed's gateway is not running; start the test bed first")
        return self.gateway.address

    @property
    def node_ids(self) -> list[str]:
        return [s.node_id for s in self.sites]

    def _say(self, text: str) -> None:
        print(text, file=self.progress, flush=True)

    # --- starting and stopping -------------------------------------------------------

    def start(self) -> None:
        """Proxy, node hosts, then the gateway; on any failure, stop what started and raise."""
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        if self.options.proxy_process:
            proxy = ProxyProcess(seed=self.options.seed, log=self.run_dir / "proxy.log")
            self.proxy = proxy
            (self.run_dir / "proxy.pid").write_text(f"{proxy.pid}\n")
        else:
            self.proxy = ProxyThread(seed=self.options.seed)
        self.timings.proxy_s = time.monotonic() - t0

        t0 = time.monotonic()
        per = self.options.nodes_per_process
        ids = self.node_ids
        for k in range(0, len(ids), per):
            group = tuple(ids[k : k + per])
            host = _Host(
                index=len(self.hosts),
                node_ids=group,
                configs=tuple(self.root / "nodes" / n / "node.toml" for n in group),
                addresses=self.run_dir / f"nodehost-{len(self.hosts)}.json",
                log=self.run_dir / f"nodehost-{len(self.hosts)}.log",
            )
            self.hosts.append(host)
            for n in group:
                self._host_of[n] = host
        self._say(
            f"  starting {len(ids)} nodes in {len(self.hosts)} process(es), {per} per process"
        )
        for host in self.hosts:
            self._spawn(host)
        self._await_hosts(self.hosts)
        self.timings.nodes_s = time.monotonic() - t0

        for site in self.sites:
            profile = LinkProfile.wan(site.rtt_ms, jitter_ms=site.jitter_ms, loss=site.loss)
            self.planned[site.node_id] = profile
            port = self.proxy.add_link(site.node_id, self.node_addresses[site.node_id], profile)
            self.link_addresses[site.node_id] = f"127.0.0.1:{port}"

        t0 = time.monotonic()
        write_gateway_config(
            self.root,
            [INVESTIGATOR_AGENCY],
            self.link_addresses,
            tls=self.options.tls,
            deadline_ms=self.options.deadline_ms,
        )
        self.gateway = start_service(
            "gateway",
            "gateway",
            self.root / "gateway" / "gateway.toml",
            self.run_dir,
            timeout_s=self.options.start_timeout_s,
            orphan_proof=True,
        )
        self.timings.gateway_s = time.monotonic() - t0
        self._say(f"  gateway listening on {self.gateway.address}")

    def _spawn(self, host: _Host) -> None:
        host.addresses.unlink(missing_ok=True)
        with host.log.open("ab") as log:
            host.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "liaison.wan.nodehost",
                    "--addresses",
                    str(host.addresses),
                    *map(str, host.configs),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # Its own session: a Ctrl-C reaches us only, and we stop it in order.
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        (self.run_dir / f"nodehost-{host.index}.pid").write_text(f"{host.process.pid}\n")

    def _await_hosts(self, hosts: list[_Host]) -> None:
        deadline = time.monotonic() + self.options.start_timeout_s
        waiting = list(hosts)
        while waiting:
            for host in list(waiting):
                assert host.process is not None
                if host.addresses.exists():
                    bound: dict[str, str] = json.loads(host.addresses.read_text())
                    self.node_addresses.update(bound)
                    waiting.remove(host)
                    done = len(hosts) - len(waiting)
                    self._say(f"  node host {host.index} up ({done}/{len(hosts)})")
                elif host.process.poll() is not None:
                    raise ProcessFailed(
                        f"node host {host.index} exited while starting:\n{_tail(host.log)}"
                    )
            if waiting and time.monotonic() > deadline:
                raise ProcessFailed(
                    f"{len(waiting)} node host(s) did not start within "
                    f"{self.options.start_timeout_s:.0f} s:\n{_tail(waiting[0].log)}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the gateway, every node host and the proxy; safe to call more than once."""
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if self.gateway is not None:
            stop_service(self.gateway)
            self.gateway = None
        for host in self.hosts:
            if host.process is not None and host.process.poll() is None:
                host.process.send_signal(signal.SIGTERM)
        for host in self.hosts:
            _reap(host.process, 10)
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None

    def pids(self) -> dict[str, int]:
        """Every live child process of the test bed, by name."""
        out = {}
        if self.gateway is not None and self.gateway.process.poll() is None:
            out["gateway"] = self.gateway.process.pid
        for host in self.hosts:
            if host.process is not None and host.process.poll() is None:
                out[f"nodehost-{host.index}"] = host.process.pid
        if isinstance(self.proxy, ProxyProcess) and self.proxy.process.poll() is None:
            out["proxy"] = self.proxy.pid
        return out

    def memory_kb(self) -> dict[str, int]:
        """Resident memory (KiB) of every child process, by name."""
        return {name: rss_kb(pid) for name, pid in self.pids().items()}

    # --- asking ----------------------------------------------------------------------

    def token(self) -> str:
        return investigator_token(self.root)

    def search(
        self, search_input: SearchInput | None = None, timeout_s: float = 60
    ) -> SearchResult:
        """Ask through the gateway (by default :func:`probe_search`) as the investigator.

        The investigator reaches the gateway in the clear: both are on loopback,
        with no emulated WAN between them.
        """
        return client.search(
            self.gateway_address, self.token(), search_input or probe_search(), timeout_s=timeout_s
        )

    # --- links -----------------------------------------------------------------------

    def _proxy(self) -> ProxyControl:
        if self.proxy is None:
            raise ConfigError("the test bed's proxy is not running; start the test bed first")
        return self.proxy

    def _check(self, node_id: str) -> None:
        if node_id not in self.planned:
            raise ConfigError(f"no node {node_id!r} in this test bed")

    def set_link(self, node_id: str, profile: LinkProfile) -> None:
        self._check(node_id)
        self._proxy().set_profile(node_id, profile)

    def link(self, node_id: str) -> LinkProfile:
        self._check(node_id)
        return self._proxy().profile(node_id)

    def link_down(self, node_id: str) -> None:
        """The node's address refuses connections, open ones are reset."""
        self.set_link(node_id, self.planned[node_id].with_mode(LinkMode.DOWN))

    def blackhole(self, node_id: str) -> None:
        """Connections to the node hang: accepted, but nothing crosses."""
        self.set_link(node_id, self.planned[node_id].with_mode(LinkMode.BLACKHOLE))

    def resetting(self, node_id: str) -> None:
        """Every connection to the node, open or new, is reset (RST)."""
        self.set_link(node_id, self.planned[node_id].with_mode(LinkMode.RESET))

    def reset_connections(self, node_id: str) -> int:
        """Reset the node's open connections once (a middlebox restarting); the link stays up."""
        self._check(node_id)
        return self._proxy().reset(node_id)

    def slow(
        self, node_id: str, rtt_ms: float, *, bandwidth_bps: float | None = None
    ) -> LinkProfile:
        """Give the node's path round-trip time ``rtt_ms`` (and a bandwidth), its loss kept."""
        planned = self.planned[node_id]
        profile = LinkProfile.wan(
            rtt_ms,
            jitter_ms=planned.to_target.jitter_ms,
            loss=planned.to_target.loss,
            bandwidth_bps=bandwidth_bps,
        )
        self.set_link(node_id, profile)
        return profile

    def lossy(self, node_id: str, loss: float) -> LinkProfile:
        """Give the node's path a loss rate ``loss`` (felt as retransmission stalls)."""
        planned = self.planned[node_id]
        profile = LinkProfile.wan(planned.rtt_ms, jitter_ms=planned.to_target.jitter_ms, loss=loss)
        self.set_link(node_id, profile)
        return profile

    def restore(self, node_id: str) -> None:
        """Back to the path the plan gave the node."""
        self.set_link(node_id, self.planned[node_id])

    def restore_all(self) -> None:
        for node_id in self.planned:
            self.restore(node_id)

    # --- nodes -----------------------------------------------------------------------

    def colocated(self, node_id: str) -> tuple[str, ...]:
        """The nodes that share ``node_id``'s process (itself included)."""
        self._check(node_id)
        return self._host_of[node_id].node_ids

    def kill_node(self, node_id: str) -> tuple[str, ...]:
        """SIGKILL the process serving ``node_id``: a crash of every node it hosts (returned)."""
        host = self._host_of[node_id]
        if host.process is not None and host.process.poll() is None:
            host.process.kill()
            host.process.wait()
        return host.node_ids

    def start_node(self, node_id: str) -> tuple[str, ...]:
        """Start the process of ``node_id`` again, with the same keys, databases and ledgers."""
        host = self._host_of[node_id]
        if host.process is not None and host.process.poll() is None:
            return host.node_ids
        return self.restart_nodes([node_id])

    def restart_node(self, node_id: str) -> tuple[str, ...]:
        """SIGKILL and start again (same state); every node sharing its process restarts too."""
        return self.restart_nodes([node_id])

    def restart_nodes(self, node_ids: Iterable[str]) -> tuple[str, ...]:
        """SIGKILL the processes of ``node_ids`` at once, start them again together.

        Returns every node restarted, those sharing a process included: with
        10 nodes per process, restarting 2 processes restarts 20 nodes.
        """
        hosts = {self._host_of[n].index: self._host_of[n] for n in node_ids}
        for host in hosts.values():
            self.kill_node(host.node_ids[0])
        for host in hosts.values():
            self._spawn(host)
        self._await_hosts(list(hosts.values()))
        restarted = tuple(n for host in hosts.values() for n in host.node_ids)
        for n in restarted:
            # A new process listens on new ports: the links follow.
            self._proxy().set_target(n, self.node_addresses[n])
        return restarted


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _reap(process: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    if process is None:
        return
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def running_testbed(
    root: Path, options: WanOptions, *, progress: TextIO = sys.stderr, build: bool = True
) -> Iterator[WanTestbed]:
    """Build (unless ``build`` is False) and start a test bed in ``root``; stop it on exit."""
    t0 = time.monotonic()
    if build:
        sites = build_testbed(root, options, progress=progress)
    else:
        doc = json.loads((root / "wan" / "plan.json").read_text())
        sites = tuple(_site_from_dict(d) for d in doc)
    bed = WanTestbed(root, options, sites, progress)
    bed.timings.build_s = time.monotonic() - t0 if build else 0.0
    bed.start()
    try:
        yield bed
    finally:
        bed.stop()


def _site_from_dict(doc: dict[str, object]) -> Site:
    from liaison.wan.latency import Capital

    cap = doc["capital"]
    assert isinstance(cap, dict)
    return Site(
        node_id=str(doc["node_id"]),
        name=str(doc["name"]),
        capital=Capital(**cap),
        rtt_ms=float(str(doc["rtt_ms"])),
        jitter_ms=float(str(doc["jitter_ms"])),
        loss=float(str(doc["loss"])),
    )
