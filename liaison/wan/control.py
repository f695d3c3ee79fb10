"""Steering a :class:`~liaison.wan.proxy.WanProxy` from synchronous code: in a thread, or a process.

Both facades offer the same methods (:class:`ProxyControl`). The process runs

    python -m liaison.wan.control [--seed N]

and takes one JSON command per line on its stdin, answering one JSON line on
its stdout, for example::

    {"op": "add", "name": "ruritania", "target": "127.0.0.1:50061", "profile": {...}}
    {"ok": true, "result": 40123}
    {"op": "profile", "name": "ruritania", "profile": {"mode": "down"}}
    {"op": "stats", "name": "ruritania"}
    {"op": "reset", "name": "ruritania"}

Operations: add, profile (set it; without "profile", read it), target,
reset, stats, port, remove, quit. The process stops when its stdin closes,
so it never outlives the program that started it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol, TypeVar

from liaison.errors import ConfigError, LiaisonError
from liaison.wan.links import LinkProfile, LinkStats
from liaison.wan.proxy import WanProxy

T = TypeVar("T")


class ProxyFailed(LiaisonError):
    """The proxy process is gone or answered nonsense; its log says why."""


class ProxyControl(Protocol):
    def add_link(
        self, name: str, target: str, profile: LinkProfile | None = None, *, port: int = 0
    ) -> int: ...
    def set_profile(self, name: str, profile: LinkProfile) -> None: ...
    def profile(self, name: str) -> LinkProfile: ...
    def set_target(self, name: str, target: str) -> None: ...
    def reset(self, name: str) -> int: ...
    def stats(self, name: str) -> LinkStats: ...
    def close(self) -> None: ...


class ProxyThread:
    """A proxy on an event loop of its own in a background thread of this process."""

    def __init__(self, *, seed: int = 0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="wan-proxy", daemon=True
        )
        self._thread.start()
        self.proxy = WanProxy(seed=seed)
        self._closed = False

    def _run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 10) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout_s)

    def _call(self, fn: Any, *args: Any) -> Any:
        async def call() -> Any:
            return fn(*args)

        return self._run(call())

    def add_link(
        self, name: str, target: str, profile: LinkProfile | None = None, *, port: int = 0
    ) -> int:
        return self._run(self.proxy.add_link(name, target, profile, port=port))

    def set_profile(self, name: str, profile: LinkProfile) -> None:
        self._run(self.proxy.set_profile(name, profile))

    def profile(self, name: str) -> LinkProfile:
        result: LinkProfile = self._call(self.proxy.profile, name)
        return result

    def set_target(self, name: str, target: str) -> None:
        self._call(self.proxy.set_target, name, target)

    def reset(self, name: str) -> int:
        result: int = self._call(self.proxy.reset, name)
        return result

    def stats(self, name: str) -> LinkStats:
        result: LinkStats = self._call(self.proxy.stats, name)
        return result

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self.proxy.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()

    def __enter__(self) -> ProxyThread:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ProxyProcess:
    """A proxy in a process of its own (``python -m liaison.wan.control``), steered over stdin."""

    def __init__(self, *, seed: int = 0, log: Path | None = None) -> None:
        self._log_path = log
        log_fh: IO[bytes] | int = log.open("ab") if log is not None else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "liaison.wan.control", "--seed", str(seed)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_fh,
                text=True,
            )
        finally:
            if not isinstance(log_fh, int):
                log_fh.close()
        self._lock = threading.Lock()
        self._call("ping")

    @property
    def pid(self) -> int:
        return self.process.pid

    def _call(self, op: str, **args: Any) -> Any:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None
        assert stdout is not None
        with self._lock:
            try:
                stdin.write(json.dumps({"op": op, **args}) + "\n")
                stdin.flush()
                line = stdout.readline()
            except (BrokenPipeError, ValueError):
                line = ""
        if not line:
            where = f"; see {self._log_path}" if self._log_path else ""
            raise ProxyFailed(f"the WAN proxy process (pid {self.pid}) is gone{where}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise ConfigError(str(reply.get("error")))
        return reply.get("result")

    def add_link(
        self, name: str, target: str, profile: LinkProfile | None = None, *, port: int = 0
    ) -> int:
        doc = (profile or LinkProfile()).to_dict()
        return int(self._call("add", name=name, target=target, profile=doc, port=port))

    def set_profile(self, name: str, profile: LinkProfile) -> None:
        self._call("profile", name=name, profile=profile.to_dict())

    def profile(self, name: str) -> LinkProfile:
        return LinkProfile.from_dict(self._call("profile", name=name))

    def set_target(self, name: str, target: str) -> None:
        self._call("target", name=name, target=target)

    def reset(self, name: str) -> int:
        return int(self._call("reset", name=name))

    def stats(self, name: str) -> LinkStats:
        return LinkStats.from_dict(self._call("stats", name=name))

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProxyFailed):
                self._call("quit")
            if self.process.stdin is not None:
                self.process.stdin.close()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


async def _execute(proxy: WanProxy, cmd: dict[str, Any]) -> Any:
    op = cmd.get("op")
    name = str(cmd.get("name", ""))
    if op == "ping":
        return "pong"
    if op == "add":
        profile = LinkProfile.from_dict(cmd.get("profile") or {})
        return await proxy.add_link(name, str(cmd["target"]), profile, port=int(cmd.get("port", 0)))
    if op == "profile":
        if "profile" in cmd:
            await proxy.set_profile(name, LinkProfile.from_dict(cmd["profile"]))
            return None
        return proxy.profile(name).to_dict()
    if op == "target":
        proxy.set_target(name, str(cmd["target"]))
        return None
    if op == "reset":
        return proxy.reset(name)
    if op == "stats":
        return proxy.stats(name).to_dict()
    if op == "port":
        return proxy.port(name)
    if op == "remove":
        await proxy.remove_link(name)
        return None
    raise ConfigError(
        f"unknown operation {op!r}; use add, profile, target, reset, stats, port, remove or quit"
    )


async def serve_stdin(seed: int) -> None:
    """Run a proxy steered by JSON lines on stdin until ``quit`` or the end of stdin."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    proxy = WanProxy(seed=seed)
    try:
        while line := await reader.readline():
            try:
                cmd = json.loads(line)
                if not isinstance(cmd, dict):
                    raise ConfigError("a command is a JSON object with an 'op'")
                if cmd.get("op") == "quit":
                    print(json.dumps({"ok": True, "result": None}), flush=True)
                    break
                reply = {"ok": True, "result": await _execute(proxy, cmd)}
            except (LiaisonError, KeyError, ValueError, OSError) as exc:
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(reply), flush=True)
    finally:
        await proxy.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m liaison.wan.control",
        description="A fault-injecting TCP proxy steered by JSON lines on stdin.",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of jitter and losses")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve_stdin(args.seed))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
