"""An asyncio TCP proxy that fronts many links, each on a listening port of its own.

Every accepted connection is relayed to the link's target through two pipes,
one per direction. A pipe stamps each chunk it reads with the time it may
arrive (now + delay ± jitter, never earlier than the chunk before it, so
bytes keep their order), then delivers the chunks one after another, adding
the time the link's bandwidth needs and, for a chunk that loses a segment, a
retransmission pause that holds back everything behind it, as TCP does.

The profile of a link can be replaced at any time and applies to the next
chunk; a change of mode applies at once (see :class:`~liaison.wan.links.LinkMode`).
Loopback skips the TCP handshake's round trip, so the first request bytes of a
connection wait one round trip more, as they would on the real path.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from dataclasses import dataclass

from liaison.errors import ConfigError
from liaison.wan.links import Direction, LinkMode, LinkProfile, LinkStats

LOOPBACK = "127.0.0.1"
CHUNK_BYTES = 16 * 1024
# Chunks a pipe holds before it stops reading: the sender then feels back-pressure.
QUEUE_CHUNKS = 64


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"not an address: {address!r}; expected HOST:PORT, e.g. 127.0.0.1:50061")
    return host, int(port)


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Close at once with a TCP reset (SO_LINGER 0), as a middlebox or a crashed peer does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _reset_backlog(listener: socket.socket) -> int:
    """Accept and reset every connection waiting in ``listener``'s accept queue."""
    reset = 0
    with contextlib.suppress(OSError):  # BlockingIOError: the queue is empty
        while True:
            conn, _ = listener.accept()
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            reset += 1
    return reset


@dataclass
class _Counters:
    connections: int = 0
    bytes_to_target: int = 0
    bytes_to_client: int = 0
    stalls: int = 0
    resets: int = 0


class _Pipe:
    """One direction of one connection."""

    def __init__(
        self,
        link: Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        to_target: bool,
        not_before: float,
    ) -> None:
        self._link = link
        self._reader = reader
        self._writer = writer
        self._to_target = to_target
        self._queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
        self._last_arrival = not_before
        self._link_free = 0.0

    def _direction(self) -> Direction:
        p = self._link.profile
        return p.to_target if self._to_target else p.to_client

    async def run(self) -> None:
        """Relay until the source closes (then half-close the sink); raise on a broken socket."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._read())
            tasks.create_task(self._deliver())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        rng = self._link.rng
        while True:
            await self._link.flowing.wait()
            data = await self._reader.read(CHUNK_BYTES)
            d = self._direction()
            delay_ms = d.delay_ms
            if d.jitter_ms:
                delay_ms = max(0.0, delay_ms + rng.uniform(-d.jitter_ms, d.jitter_ms))
            self._last_arrival = max(loop.time() + delay_ms / 1000, self._last_arrival)
            await self._queue.put((self._last_arrival, data))
            if not data:
                return

    async def _deliver(self) -> None:
        loop = asyncio.get_running_loop()
        counters = self._link.counters
        while True:
            arrival, data = await self._queue.get()
            d = self._direction()
            if data and self._link.rng.random() < d.stall_probability(len(data)):
                arrival += d.stall_ms / 1000
                counters.stalls += 1
            if data and d.bandwidth_bps is not None:
                arrival = max(arrival, self._link_free) + d.transmission_s(len(data))
                self._link_free = arrival
            wait = arrival - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._link.flowing.wait()
            if not data:
                if self._writer.can_write_eof():
                    self._writer.write_eof()
                return
            self._writer.write(data)
            await self._writer.drain()
            if self._to_target:
                counters.bytes_to_target += len(data)
            else:
                counters.bytes_to_client += len(data)


class _Connection:
    def __init__(self, link: Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._link = link
        self._client_reader = reader
        self._client = writer
        self._upstream: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self.aborted = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        # A blackholed link keeps the connection but answers nothing, not even upstream.
        await self._link.flowing.wait()
        try:
            up_reader, self._upstream = await asyncio.open_connection(*self._link.target)
        except OSError:
            # The target refused or is gone: the client sees its connection reset.
            self.abort()
            return
        # The client's first bytes left one handshake round trip after it began to connect.
        profile = self._link.profile
        first_s = (profile.rtt_ms + profile.to_target.delay_ms) / 1000
        requests = _Pipe(
            self._link,
            self._client_reader,
            self._upstream,
            to_target=True,
            not_before=accepted + first_s,
        )
        answers = _Pipe(self._link, up_reader, self._client, to_target=False, not_before=accepted)
        broken = False
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(requests.run())
                tasks.create_task(answers.run())
        except* OSError:
            broken = True
        if broken:
            # One side broke (reset, refused write): the other side learns it the same way.
            self.abort()
        else:
            for w in (self._client, self._upstream):
                w.close()

    def abort(self) -> None:
        """Reset both sides (RST) and stop relaying."""
        if self.aborted:
            return
        self.aborted = True
        self._link.counters.resets += 1
        _abort_with_rst(self._client)
        if self._upstream is not None:
            _abort_with_rst(self._upstream)
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()


class Link:
    """One listening port relayed to one target under one (replaceable) profile."""

    def __init__(self, name: str, target: str, profile: LinkProfile, *, seed: int = 0) -> None:
        self.name = name
        self.target = parse_address(target)
        self.profile = profile
        # Each link draws its own jitter and losses: runs with the same seed repeat.
        self.rng = random.Random(f"{seed}:{name}")
        self.counters = _Counters()
        self.flowing = asyncio.Event()
        self.port = 0
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: set[_Connection] = set()
        self._apply_flow()

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    async def listen(self, port: int = 0) -> int:
        # A listening socket of our own rather than asyncio.start_server: closing an
        # asyncio.Server while a connection is half-accepted loses that connection
        # (Python 3.11), and a port going down must reset every connection it took.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((LOOPBACK, port or self.port))
            sock.listen(512)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._listener = sock
        self.port = sock.getsockname()[1]
        asyncio.get_running_loop().add_reader(sock.fileno(), self._take_connections)
        return self.port

    def _take_connections(self) -> None:
        # Accepting and handing over in one callback: no connection is ever held by a
        # task that a change of mode could cancel before it is handed over.
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # BlockingIOError: nothing more waits
                return
            conn.setblocking(False)
            task = asyncio.create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn)
        except OSError:
            conn.close()
            return
        await self._accept(reader, writer)

    def _stop_listening(self) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            # Closing the listening socket is what makes the port refuse (ECONNREFUSED);
            # connections the kernel accepted that we did not take yet are reset first,
            # or they would hang: Linux does not reset them when the listener closes.
            self.counters.resets += _reset_backlog(self._listener)
            self._listener.close()
            self._listener = None

    def _apply_flow(self) -> None:
        if self.profile.mode is LinkMode.BLACKHOLE:
            self.flowing.clear()
        else:
            self.flowing.set()

    async def apply(self, profile: LinkProfile) -> None:
        self.profile = profile
        self._apply_flow()
        if profile.mode in (LinkMode.RESET, LinkMode.DOWN):
            self.reset_connections()
        if profile.mode is LinkMode.DOWN:
            self._stop_listening()
        elif self._listener is None:
            await self.listen(self.port)

    def reset_connections(self) -> int:
        """Reset every open connection (RST both ways); the link's mode is unchanged."""
        victims = list(self._connections)
        for conn in victims:
            conn.abort()
        return len(victims)

    def stats(self) -> LinkStats:
        c = self.counters
        return LinkStats(
            connections=c.connections,
            open_connections=len(self._connections),
            bytes_to_target=c.bytes_to_target,
            bytes_to_client=c.bytes_to_client,
            stalls=c.stalls,
            resets=c.resets,
        )

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counters.connections += 1
        if self.profile.mode in (LinkMode.RESET, LinkMode.DOWN):
            self.counters.resets += 1
            _abort_with_rst(writer)
            return
        conn = _Connection(self, reader, writer)
        conn._task = asyncio.current_task()
        self._connections.add(conn)
        try:
            await conn.run()
        except asyncio.CancelledError:
            if not conn.aborted:
                raise
        finally:
            self._connections.discard(conn)

    async def close(self) -> None:
        self._stop_listening()
        self.reset_connections()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        # Let the cancelled relays unwind before the loop goes.
        await asyncio.gather(*tasks, return_exceptions=True)


class WanProxy:
    """Many links in one event loop; every method runs on that loop."""

    def __init__(self, *, seed: int = 0) -> None:
        self._seed = seed
        self._links: dict[str, Link] = {}

    def _link(self, name: str) -> Link:
        try:
            return self._links[name]
        except KeyError:
            raise ConfigError(
                f"no link named {name!r}; known: {', '.join(sorted(self._links)) or 'none'}"
            ) from None

    async def add_link(
        self, name: str, target: str, profile: LinkProfile | None = None, *, port: int = 0
    ) -> int:
        """Listen for ``name`` (on ``port``, or any free one) and relay to ``target``; the port."""
        if name in self._links:
            raise ConfigError(f"a link named {name!r} exists already; remove it first")
        link = Link(name, target, profile or LinkProfile(), seed=self._seed)
        self._links[name] = link
        try:
            # A link born down still takes its port, so that it can come up on it later.
            await link.listen(port)
            if link.profile.mode is LinkMode.DOWN:
                await link.apply(link.profile)
        except BaseException:
            del self._links[name]
            raise
        return link.port

    async def set_profile(self, name: str, profile: LinkProfile) -> None:
        await self._link(name).apply(profile)

    def profile(self, name: str) -> LinkProfile:
        return self._link(name).profile

    def set_target(self, name: str, target: str) -> None:
        """Relay new connections to ``target`` (a restarted node on a new port)."""
        self._link(name).target = parse_address(target)

    def reset(self, name: str) -> int:
        return self._link(name).reset_connections()

    def stats(self, name: str) -> LinkStats:
        return self._link(name).stats()

    def port(self, name: str) -> int:
        return self._link(name).port

    @property
    def names(self) -> list[str]:
        return list(self._links)

    async def remove_link(self, name: str) -> None:
        await self._link(name).close()
        del self._links[name]

    async def close(self) -> None:
        for name in list(self._links):
            await self.remove_link(name)
