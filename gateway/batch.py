"""A batch of up to 100,000 values in one call: chunked, asked and answered at the gateway.

A seized device's hashes arrive as one client stream. The gateway cuts them
into chunks and asks the federation about each chunk exactly as it answers a
Search: checked, signed, logged before any node hears of it, its outcome
logged before the investigator sees it. Each node's policy, rate limits and
receipts therefore apply to each chunk as to any request. At most
``CONCURRENT_CHUNKS`` chunks are in flight: reading the client's stream waits
while they are, so a large batch is paced by the federation, not buffered.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

from gateway.search import GatewayCore
from liaison.errors import InvalidQuery
from liaison.messages import BatchChunkResult, BatchHeader, Requester
from liaison.query import MAX_IN_VALUES, Comparator

MAX_BATCH_VALUES = 100_000
CONCURRENT_CHUNKS = 4


def _check_header(header: BatchHeader) -> int:
    """The chunk size ``header`` asks for; InvalidQuery if anything about it is wrong."""
    predicate = header.predicate
    if predicate.comparator not in (Comparator.IN, Comparator.NEAR):
        raise InvalidQuery("a batch matches values with 'in' (exact) or 'near' (perceptual)")
    if predicate.values:
        raise InvalidQuery("a batch header's predicate holds no values: send them after it")
    size = header.chunk_size or MAX_IN_VALUES
    if not 1 <= size <= MAX_IN_VALUES:
        raise InvalidQuery(f"a chunk holds 1 to {MAX_IN_VALUES} values, got {size}")
    if not 1 <= header.value_count <= MAX_BATCH_VALUES:
        raise InvalidQuery(
            f"a batch takes 1 to {MAX_BATCH_VALUES:,} values, the header announces "
            f"{header.value_count:,}; split the device's hashes into several batches"
        )
    return size


async def run_batch(
    core: GatewayCore,
    requester: Requester,
    parts: AsyncIterator[BatchHeader | tuple[str, ...]],
) -> AsyncIterator[BatchChunkResult]:
    """Ask the federation about every chunk of the batch in ``parts``; yield results as they come.

    The first part must be the header, every later one values. A value sent
    twice is asked once. A chunk the gateway refuses (a malformed value, a
    purpose not allowed), or a stream that breaks off, ends the batch with that
    refusal once the chunks already asked have been answered (and are yielded).
    """
    header = await anext(parts, None)
    if not isinstance(header, BatchHeader):
        raise InvalidQuery("a batch starts with its header (the search and the predicate)")
    size = _check_header(header)
    done: asyncio.Queue[BatchChunkResult | Exception | None] = asyncio.Queue()
    slots = asyncio.Semaphore(CONCURRENT_CHUNKS)
    asking: set[asyncio.Task[None]] = set()

    async def ask(chunk: int, first: int, values: tuple[str, ...]) -> None:
        try:
            query = replace(
                header.search.query,
                predicates=(
                    *header.search.query.predicates,
                    replace(header.predicate, values=values),
                ),
            )
            result = await core.search(requester, replace(header.search, query=query))
            done.put_nowait(BatchChunkResult(chunk, first, len(values), result))
        except Exception as exc:  # handed to the stream, which raises it
            done.put_nowait(exc)
        finally:
            slots.release()

    async def start(chunk: int, first: int, values: list[str]) -> None:
        await slots.acquire()
        task = asyncio.get_running_loop().create_task(ask(chunk, first, tuple(values)))
        asking.add(task)
        task.add_done_callback(asking.discard)

    async def read() -> None:
        seen: set[str] = set()
        pending: list[str] = []
        chunks = 0
        sent = 0
        try:
            async for part in parts:
                if isinstance(part, BatchHeader):
                    raise InvalidQuery("a batch has one header, first; later messages hold values")
                sent += len(part)
                if sent > header.value_count:
                    raise InvalidQuery(
                        f"the batch holds more values than its header announced "
                        f"({header.value_count:,}); nothing more was asked"
                    )
                for value in part:
                    if value in seen:
                        continue
                    seen.add(value)
                    pending.append(value)
                    if len(pending) == size:
                        await start(chunks, len(seen) - size, pending)
                        chunks += 1
                        pending = []
            if sent < header.value_count:
                raise InvalidQuery(
                    f"the batch ended after {sent:,} of the {header.value_count:,} values its "
                    "header announced; the chunks asked so far stand"
                )
            if pending:
                await start(chunks, len(seen) - len(pending), pending)
            await asyncio.gather(*asking)
            done.put_nowait(None)
        except Exception as exc:  # handed to the stream, which raises it
            done.put_nowait(exc)

    async def drain() -> None:
        await asyncio.gather(*asking, return_exceptions=True)
        done.put_nowait(None)

    loop = asyncio.get_running_loop()
    reader = loop.create_task(read())
    draining: asyncio.Task[None] | None = None
    failure: Exception | None = None
    try:
        while True:
            item = await done.get()
            if item is None:
                break
            if isinstance(item, Exception):
                if failure is None:
                    # Ask nothing more, but let the chunks in flight finish: each is
                    # logged and on its way, and the investigator is owed its answer.
                    failure = item
                    reader.cancel()
                    draining = loop.create_task(drain())
                continue
            yield item
        if failure is not None:
            raise failure
    finally:
        reader.cancel()
        if draining is not None:
            draining.cancel()
        for task in list(asking):
            task.cancel()
