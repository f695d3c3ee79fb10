"""Near-duplicate lookups: a PDQ index per mapped perceptual-hash column, kept current.

The index is built from the agency's own table when the node starts and
rebuilt in the background every ``refresh_s`` seconds, then swapped in whole,
so a hash the agency deletes stops matching within one refresh (plus the
build) and a lookup never sees a half-built index. Lookups are exact: every
stored hash within the distance, nothing beyond it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from liaison.errors import BackendError, InvalidValue
from liaison.hashing.pdq import words_from_hex
from node.database import MappedDataset
from node.pdq_index import PdqIndex

log = logging.getLogger("liaison.node")

DEFAULT_REFRESH_S = 30.0
READ_BATCH = 100_000


@dataclass(frozen=True, slots=True)
class NearColumn:
    dataset: str
    field: str


def near_columns(schema: Mapping[str, MappedDataset]) -> list[NearColumn]:
    """Every perceptual-hash field this node maps."""
    return [
        NearColumn(name, f.name)
        for name, mapped in sorted(schema.items())
        for f in mapped.dataset.fields
        if f.near and f.name in mapped.columns
    ]


def load_index(engine: Engine, mapped: MappedDataset, field: str) -> tuple[PdqIndex, int, int]:
    """Build an index of the column's distinct hashes.

    Also returns the values skipped (not 64 hex digits) and those stored in a
    spelling beyond the column's hex case (padded, or mixing cases): the
    dataset learns those spellings, so SQL is asked for them as stored.
    """
    column = mapped.columns[field]
    spelling = mapped.spelling(field)
    aliases: dict[str, list[str]] = {}
    hexes: list[str] = []
    skipped = 0
    noncanonical = 0
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=READ_BATCH).execute(
            sa.select(column).where(column.is_not(None)).distinct()
        )
        for (value,) in result:
            text = str(value).strip().lower()
            if len(text) == 64:
                hexes.append(text)
                if spelling is not None and not spelling.covers(text, str(value)):
                    aliases.setdefault(text, []).append(str(value))
                    noncanonical += 1
            else:
                skipped += 1
    try:
        words = words_from_hex(hexes)
    except InvalidValue:
        # A stray malformed value must not take the whole index down: keep the good ones.
        good = []
        for text in hexes:
            try:
                words_from_hex([text])
            except InvalidValue:
                skipped += 1
                continue
            good.append(text)
        words = words_from_hex(good)
    index = PdqIndex.build(words)
    mapped.learn_aliases(field, aliases)
    return index, skipped, noncanonical


class NearIndexes:
    """The node's PDQ indexes, one per mapped perceptual-hash field, refreshed in the background."""

    def __init__(
        self,
        engine: Engine,
        schema: Mapping[str, MappedDataset],
        *,
        refresh_s: float = DEFAULT_REFRESH_S,
    ) -> None:
        self.engine = engine
        self.schema = dict(schema)
        self.refresh_s = refresh_s
        self._indexes: dict[NearColumn, PdqIndex] = {}
        self.built_at: dict[NearColumn, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for column in near_columns(self.schema):
            self._rebuild(column)

    def start(self) -> None:
        """Keep the indexes current until :meth:`close`."""
        if self._thread is None and self._indexes:
            self._thread = threading.Thread(target=self._run, name="pdq-refresh", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            for column in list(self._indexes):
                # Logged; the previous index keeps serving until the next try.
                with contextlib.suppress(BackendError):
                    self._rebuild(column)

    def refresh(self) -> None:
        """Rebuild every index now (tests, and operators after a bulk load)."""
        for column in list(self._indexes) or near_columns(self.schema):
            self._rebuild(column)

    def _rebuild(self, column: NearColumn) -> None:
        started = time.perf_counter()
        try:
            index, skipped, noncanonical = load_index(
                self.engine, self.schema[column.dataset], column.field
            )
        except SQLAlchemyError as exc:
            log.error(
                "pdq index refresh failed",
                extra={"dataset": column.dataset, "error": type(exc).__name__},
            )
            raise BackendError(
                "the agency database could not be read for the PDQ index; the node operator's "
                "log has details"
            ) from exc
        self._indexes[column] = index
        self.built_at[column] = time.time()
        log.info(
            "pdq index built",
            extra={
                "dataset": column.dataset,
                "field": column.field,
                "hashes": index.size,
                "bytes": index.nbytes,
                "skipped": skipped,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
        if noncanonical:
            log.warning(
                "pdq values spelled unusually",
                extra={
                    "dataset": column.dataset,
                    "field": column.field,
                    "values": noncanonical,
                    "fix": "they match as stored; store PDQ hashes as 64 hex digits of one "
                    "case, without spaces, to keep lookups to one spelling",
                },
            )

    def in_use(self) -> list[tuple[NearColumn, int, float]]:
        """Each index in use: its column, its number of hashes, when it was built (time.time())."""
        return [(c, i.size, self.built_at.get(c, 0.0)) for c, i in list(self._indexes.items())]

    def index(self, dataset: str, field: str) -> PdqIndex | None:
        return self._indexes.get(NearColumn(dataset, field))

    def lookup(
        self, dataset: str, field: str, values: Sequence[str], max_distance: int
    ) -> dict[str, int]:
        """Stored hashes within ``max_distance`` of any of ``values``, with the nearest distance."""
        index = self.index(dataset, field)
        if index is None or index.size == 0:
            return {}
        queries = words_from_hex(list(values))
        _query, positions, found = index.search_many(queries, max_distance)
        nearest: dict[int, int] = {}
        for position, distance in zip(positions.tolist(), found.tolist(), strict=True):
            if position not in nearest or distance < nearest[position]:
                nearest[position] = distance
        if not nearest:
            return {}
        order = list(nearest)
        return dict(
            zip(
                index.hex_at(np.asarray(order, dtype=np.intp)),
                (nearest[p] for p in order),
                strict=True,
            )
        )
