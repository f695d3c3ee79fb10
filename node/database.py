"""The agency's database, opened read-only and mapped onto the catalog.

Read-only is enforced by the database session itself (not only by the code
never writing), so a bug in query compilation still cannot change data.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from liaison.catalog import Catalog, Dataset, FieldType
from liaison.config import DatasetMapping, HexCase
from liaison.databases import (
    classify_connection_error,
    driver_hint,
    masked,
    normalise,
    parse_url,
)
from liaison.errors import BackendError, ConfigError

log = logging.getLogger("liaison.node")

# Values read from each hex column at start to tell how it spells hex: the
# first in storage order, and the first and last in the column's index order.
HEX_SAMPLE = 1000
_HEX_TYPES = (FieldType.HEX256, FieldType.HEX128)

_READ_ONLY_SQL = {
    "sqlite": "PRAGMA query_only = ON",
    "postgresql": "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "mysql": "SET SESSION TRANSACTION READ ONLY",
    "mariadb": "SET SESSION TRANSACTION READ ONLY",
}


def open_read_only(url: str | sa.URL, *, connect_timeout_s: int | None = None) -> Engine:
    """Create an engine whose every connection refuses writes.

    ``url`` may be spelled as agencies write it (``postgres://``, ``mysql://``):
    see :func:`liaison.databases.normalise`. Nothing connects yet.
    ``connect_timeout_s`` bounds each connection attempt on PostgreSQL and
    MariaDB/MySQL unless the URL sets ``connect_timeout`` itself.
    """
    parsed = parse_url(url) if isinstance(url, str) else normalise(url)
    if parsed.get_backend_name() == "sqlite":
        _require_sqlite_file(parsed)
    connect_args: dict[str, Any] = {}
    if (
        connect_timeout_s is not None
        and parsed.get_backend_name() != "sqlite"
        and "connect_timeout" not in parsed.query
    ):
        # Both libpq (psycopg) and PyMySQL call it connect_timeout, in seconds.
        connect_args["connect_timeout"] = connect_timeout_s
    try:
        # hide_parameters: a failing query's exception text (and so any log
        # line or traceback quoting it) must not carry the selectors asked.
        # A server database may have dropped a pooled connection (a restart, an
        # idle timeout): ping it at checkout. A SQLite file has nothing to drop,
        # and the ping cost about 3% of a node's CPU per query.
        engine = sa.create_engine(
            parsed,
            pool_pre_ping=parsed.get_backend_name() != "sqlite",
            hide_parameters=True,
            connect_args=connect_args,
        )
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise ConfigError(f"cannot use database_url ({driver_hint(parsed, exc)})") from None
    statement = _READ_ONLY_SQL.get(engine.dialect.name)
    if statement is None:
        raise ConfigError(
            f"no read-only mode is known for database {engine.dialect.name!r}; "
            f"supported: {', '.join(sorted(_READ_ONLY_SQL))}"
        )

    @sa.event.listens_for(engine, "connect")
    def _read_only(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(statement)
        finally:
            cursor.close()
        # PostgreSQL and MySQL drivers open a transaction for the SET; end it
        # so the session setting, not a half-open transaction, is what lasts.
        if engine.dialect.name != "sqlite":
            dbapi_connection.commit()

    return engine


@dataclass(frozen=True, slots=True)
class HexSpelling:
    """How one hex column stores hashes, so SQL is asked for them as stored.

    Queries carry canonical lower-case hex; an equality on the column as it
    is (no ``LOWER(column)``, which would defeat its index) finds a hash only
    in the spelling it was stored in. ``case`` is LOWER, UPPER or MIXED (both
    spellings asked), never DETECT. ``aliases`` holds other spellings met in a
    full read of the column (padded, or mixing cases within one hash), by
    canonical hash: the PDQ index learns them on every rebuild.
    """

    case: HexCase
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # The case was read from the column (DETECT), not configured: whoever reads
    # the whole column (the PDQ index) may settle it.
    detected: bool = field(default=False, compare=False)

    def base_forms(self, canonical: str) -> tuple[str, ...]:
        if self.case is HexCase.UPPER:
            return (canonical.upper(),)
        if self.case is HexCase.MIXED:
            return (canonical, canonical.upper())
        return (canonical,)

    def forms(self, canonical: str) -> tuple[str, ...]:
        """Every spelling of ``canonical`` to ask the database for."""
        base = self.base_forms(canonical)
        extra = tuple(a for a in self.aliases.get(canonical, ()) if a not in base)
        return base + extra

    def covers(self, canonical: str, stored: str) -> bool:
        """Whether asking for :meth:`base_forms` finds ``stored``."""
        return stored in self.base_forms(canonical)


@dataclass(frozen=True, slots=True)
class MappedDataset:
    """A catalog dataset bound to a reflected local table."""

    dataset: Dataset
    table: sa.Table
    columns: Mapping[str, sa.Column[Any]]  # catalog field -> local column
    # Hex fields mapped to text columns -> how the column spells hex. Entries
    # are replaced whole (see learn_aliases), never changed in place.
    spellings: dict[str, HexSpelling] = field(default_factory=dict)
    # What the mapped name is in the database: table, view or materialized view.
    relation: str = "table"
    # The column naming one row, for the PDQ index to fetch matches by: the
    # table's primary key when it is a single integer column, or the mapping's
    # configured key column. None: the index holds hashes only.
    row_key: sa.Column[Any] | None = None

    def spelling(self, field: str) -> HexSpelling | None:
        return self.spellings.get(field)

    def learn_aliases(self, field: str, aliases: Mapping[str, Iterable[str]]) -> None:
        """Replace the spellings of ``field`` met beyond its case (from a full read)."""
        current = self.spellings.get(field)
        if current is not None:
            self.spellings[field] = replace(
                current, aliases={k: tuple(sorted(set(v))) for k, v in aliases.items()}
            )

    def set_spelling(self, field: str, case: HexCase, aliases: Mapping[str, Iterable[str]]) -> None:
        """Replace how ``field`` is spelled, from a read of the whole column (the PDQ index)."""
        current = self.spellings.get(field)
        if current is not None:
            self.spellings[field] = replace(
                current,
                case=case if current.detected else current.case,
                aliases={k: tuple(sorted(set(v))) for k, v in aliases.items()},
            )

    @property
    def provided_fields(self) -> tuple[str, ...]:
        return tuple(f for f in self.dataset.field_names if self.holds(f))

    def holds(self, field: str) -> bool:
        """Whether this node can answer with ``field``: mapped, or computed from a mapped one."""
        if field in self.columns:
            return True
        source = (
            self.dataset.field(field).computed_from if field in self.dataset.field_names else ""
        )
        return bool(source) and source in self.columns


def _require_sqlite_file(url: sa.URL) -> None:
    """Refuse a SQLite path that does not exist: connecting would create an empty database."""
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return
    if not Path(database).is_file():
        raise ConfigError(
            f"database_url: the SQLite database file {database} does not exist; check the path "
            "(a relative path is relative to the config file)"
        )


def split_table(text: str) -> tuple[str | None, str]:
    """``table`` of a dataset mapping as (schema, name): ``name`` or ``schema.name``.

    A part holding a dot (or a double quote) is written in double quotes, a
    quote inside doubled, as in SQL: ``"agency.v2"."seized files"``. Names are
    matched exactly as the database lists them (no case folding).
    """
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            j, name = i + 1, []
            while True:
                if j >= n:
                    raise ConfigError(f"table {text!r}: a double quote is not closed")
                if text[j] == '"':
                    if j + 1 < n and text[j + 1] == '"':
                        name.append('"')
                        j += 2
                        continue
                    break
                name.append(text[j])
                j += 1
            parts.append("".join(name))
            i = j + 1
        else:
            j = i
            while j < n and text[j] not in '."':
                j += 1
            parts.append(text[i:j])
            i = j
        if i >= n:
            break
        if text[i] != ".":
            raise ConfigError(
                f"table {text!r}: after a quoted name comes a dot or the end; quote whole "
                'names, e.g. "evidencia"."seized.files"'
            )
        i += 1
    if len(parts) > 2 or not all(parts):
        raise ConfigError(
            f"table {text!r}: write TABLE or SCHEMA.TABLE (on MariaDB/MySQL: DATABASE.TABLE); "
            'put a name holding a dot in double quotes, e.g. "evidencia"."seized.files"'
        )
    return (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def _relations(inspector: sa.Inspector, schema: str | None) -> dict[str, str]:
    """Tables, views and materialized views in ``schema`` (None: the default), by name."""
    found = {name: "view" for name in inspector.get_view_names(schema)}
    with contextlib.suppress(NotImplementedError):  # a database without materialized views
        found.update(
            (name, "materialized view") for name in inspector.get_materialized_view_names(schema)
        )
    found.update((name, "table") for name in inspector.get_table_names(schema))
    return found


def _missing_relation(mapping: DatasetMapping, schema: str | None, existing: dict[str, str]) -> str:
    place = f"schema {schema!r}" if schema else "the database"
    tables = sorted(n for n, kind in existing.items() if kind == "table")
    views = sorted(n for n, kind in existing.items() if kind != "table")
    message = (
        f"dataset {mapping.dataset!r} maps to table {mapping.table!r}, which does not exist "
        f"in {place}; tables there: {', '.join(tables) or '(none)'}"
    )
    if views:
        message += f"; views there: {', '.join(views)}"
    if schema is None:
        message += "; for a table in another schema write SCHEMA.TABLE"
    return message


def connect(engine: Engine, what: str = "the agency database") -> sa.Connection:
    """A connection from ``engine``, or BackendError saying why none could be made."""
    try:
        return engine.connect()
    except (SQLAlchemyError, OSError) as exc:
        # OSError: drivers load TLS files (ssl_ca=...) before SQLAlchemy wraps anything.
        failure = classify_connection_error(exc, engine.url, what)
        raise BackendError(failure.message) from exc


def bind_schema(
    engine: Engine, mappings: tuple[DatasetMapping, ...], catalog: Catalog
) -> dict[str, MappedDataset]:
    """Reflect the mapped tables or views; a missing one, or column, stops the node, named."""
    metadata = sa.MetaData()
    where = {m.dataset: split_table(m.table) for m in mappings}
    with connect(engine) as conn:
        try:
            inspector = sa.inspect(conn)
            schemas: list[str] | None = None
            bound: dict[str, MappedDataset] = {}
            for mapping in mappings:
                schema, name = where[mapping.dataset]
                if schema is not None:
                    if schemas is None:
                        schemas = inspector.get_schema_names()
                    if schema not in schemas:
                        raise ConfigError(
                            f"dataset {mapping.dataset!r} maps to {mapping.table!r}, but schema "
                            f"{schema!r} does not exist or this account cannot see it; schemas "
                            f"there: {', '.join(sorted(schemas)) or '(none)'}"
                        )
                existing = _relations(inspector, schema)
                if name not in existing:
                    raise ConfigError(_missing_relation(mapping, schema, existing))
                table = sa.Table(name, metadata, schema=schema, autoload_with=conn)
                columns = {}
                for field_name, column_name in mapping.columns.items():
                    if column_name not in table.c:
                        raise ConfigError(
                            f"field {mapping.dataset}.{field_name} maps to column "
                            f"{mapping.table}.{column_name}, which does not exist; columns of "
                            f"{mapping.table}: {', '.join(c.name for c in table.c)}"
                        )
                    columns[field_name] = table.c[column_name]
                dataset = catalog.dataset(mapping.dataset)
                spellings = {
                    name: _hex_spelling(
                        conn, mapping, name, column, indexed=dataset.field(name).near
                    )
                    for name, column in columns.items()
                    if dataset.field(name).type in _HEX_TYPES and isinstance(column.type, sa.String)
                }
                bound[mapping.dataset] = MappedDataset(
                    dataset,
                    table,
                    columns,
                    spellings,
                    relation=existing[name],
                    row_key=_row_key(mapping, table),
                )
                if conn.dialect.name in ("mysql", "mariadb"):
                    _check_collations(conn, mapping, dataset, schema, name)
            return bound
        except SQLAlchemyError as exc:
            detail = describe_database_error(exc)
            code = f", code {detail['code']}" if "code" in detail else ""
            raise BackendError(
                f"cannot read the mapped tables of the agency database at {masked(engine.url)} "
                f"({type(exc).__name__}{code}); check that the account may read them"
            ) from exc


def _hex_spelling(
    conn: sa.Connection,
    mapping: DatasetMapping,
    name: str,
    column: sa.Column[Any],
    *,
    indexed: bool = False,
) -> HexSpelling:
    """The configured case of a hex column, or the one a sample of it shows.

    ``indexed``: the node's PDQ index reads every value of the column (once,
    then as it changes, and remembers what it found across restarts) and
    settles its case itself, so only the cheap sample in storage order is
    read here: sorting or scanning a large column without an index of its own
    would hold up the node's start.
    """
    configured = mapping.hex_case.get(name, HexCase.DETECT)
    if configured is not HexCase.DETECT:
        return HexSpelling(configured)
    present = column.is_not(None)
    sample: list[str] = []
    selects = [sa.select(column).where(present).limit(HEX_SAMPLE)]
    if not indexed:
        selects += [
            sa.select(column).where(present).order_by(column).limit(HEX_SAMPLE),
            sa.select(column).where(present).order_by(column.desc()).limit(HEX_SAMPLE),
        ]
    for select in selects:
        sample.extend(str(v) for v in conn.execute(select).scalars())
    lower = sum(1 for v in sample if v != v.upper())
    upper = sum(1 for v in sample if v != v.lower())
    within = sum(1 for v in sample if v != v.upper() and v != v.lower())
    padded = sum(1 for v in sample if v != v.strip())
    if lower and not upper:
        case = HexCase.LOWER
    elif upper and not lower:
        case = HexCase.UPPER
    else:
        # Both spellings, or nothing to tell by (an empty column): ask for both.
        case = HexCase.MIXED
    if case is not HexCase.MIXED and not indexed:
        # A sample misses a rare other spelling (a small legacy import), and a
        # held hash must never read as "no hit": one scan at start settles it.
        fold = sa.func.lower if case is HexCase.LOWER else sa.func.upper
        other = conn.execute(sa.select(column).where(present, column != fold(column)).limit(1))
        if other.first() is not None:
            if case is HexCase.LOWER:
                upper += 1
            else:
                lower += 1
            case = HexCase.MIXED
    where = {
        "dataset": mapping.dataset,
        "field": name,
        "column": f"{mapping.table}.{column.name}",
        "sampled": len(sample),
    }
    log.info("hex case detected", extra={**where, "case": case.value})
    if (lower and upper) or padded:
        log.warning(
            "hex column spelled inconsistently",
            extra={
                **where,
                "lower_case": lower - within,
                "upper_case": upper - within,
                "mixed_within_a_value": within,
                "padded": padded,
                "fix": (
                    "both cases are asked for, so lower- and upper-case hashes match; a hash "
                    "mixing cases within itself or padded with spaces matches only where the "
                    "database ignores them: normalise the column (e.g. UPDATE ... SET col = "
                    "LOWER(TRIM(col))) and set hex_case under [datasets.<name>.hex_case]"
                ),
            },
        )
    return HexSpelling(case, detected=True)


def _row_key(mapping: DatasetMapping, table: sa.Table) -> sa.Column[Any] | None:
    """The column that names one row: configured, or a single integer primary key."""
    configured = mapping.key
    column: sa.Column[Any]
    if configured:
        if configured not in table.c:
            raise ConfigError(
                f"dataset {mapping.dataset!r}: key column {configured!r} does not exist in "
                f"{mapping.table}; columns: {', '.join(c.name for c in table.c)}"
            )
        column = table.c[configured]
    else:
        primary = list(table.primary_key.columns)
        if len(primary) != 1:
            return None
        column = primary[0]
    if not isinstance(column.type, sa.Integer):
        if configured:
            raise ConfigError(
                f"dataset {mapping.dataset!r}: key column {configured!r} is "
                f"{column.type}, not an integer; name a unique integer column"
            )
        return None
    return column


def _check_collations(
    conn: sa.Connection,
    mapping: DatasetMapping,
    dataset: Dataset,
    schema: str | None,
    name: str,
) -> None:
    """Warn about selector columns whose collation makes equality ignore case.

    MariaDB's and MySQL's default collations (``*_ci``) compare ``'Alice'``
    equal to ``'alice '``: a selector asked for could hit another person's
    record. Hex fields are asked for in every spelling anyway; for them the
    warning says the same, since a binary collation keeps lookups exact.
    """
    rows = conn.execute(
        sa.text(
            "SELECT COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = COALESCE(:schema, DATABASE()) AND TABLE_NAME = :table"
        ),
        {"schema": schema, "table": name},
    )
    collations = {str(c): str(k) for c, k in rows if k is not None}
    for name, column_name in mapping.columns.items():
        collation = collations.get(column_name)
        if not dataset.field(name).selector or collation is None:
            continue
        if not collation.lower().endswith("_ci"):
            continue
        log.warning(
            "selector column collation ignores case",
            extra={
                "dataset": mapping.dataset,
                "field": name,
                "column": f"{mapping.table}.{column_name}",
                "collation": collation,
                "fix": (
                    "equality on this column ignores case (and, with a PAD SPACE collation, "
                    "trailing spaces), so a selector can match another spelling of it; give "
                    f"the column a binary collation, e.g. ALTER TABLE {mapping.table} MODIFY "
                    f"{column_name} VARCHAR(n) COLLATE utf8mb4_bin"
                ),
            },
        )


def describe_database_error(exc: BaseException) -> dict[str, str]:
    """Log fields for a failed query that never carry the values it was asked for.

    The driver's message is left out: it can quote a bound value (PostgreSQL's
    ``invalid input syntax for type ...: "<value>"``). The SQLSTATE or error
    number says what went wrong, and the statement holds only placeholders.
    """
    detail = {"error": type(exc).__name__}
    orig = getattr(exc, "orig", None)
    if orig is not None:
        detail["driver_error"] = type(orig).__name__
        code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        if code is None and isinstance(getattr(orig, "args", None), tuple) and orig.args:
            code = orig.args[0] if isinstance(orig.args[0], int) else None
        if code is None:
            code = getattr(orig, "sqlite_errorname", None)
        if code is not None:
            detail["code"] = str(code)
    statement = getattr(exc, "statement", None)
    if isinstance(statement, str):
        detail["statement"] = " ".join(statement.split())[:2000]
    return detail
