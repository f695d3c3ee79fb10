"""The agency's database, opened read-only and mapped onto the catalog.

Read-only is enforced by the database session itself (not only by the code
never writing), so a bug in query compilation still cannot change data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from liaison.catalog import Catalog, Dataset
from liaison.config import DatasetMapping
from liaison.errors import BackendError, ConfigError

_READ_ONLY_SQL = {
    "sqlite": "PRAGMA query_only = ON",
    "postgresql": "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "mysql": "SET SESSION TRANSACTION READ ONLY",
    "mariadb": "SET SESSION TRANSACTION READ ONLY",
}


def open_read_only(url: str) -> Engine:
    """Create an engine whose every connection refuses writes."""
    try:
        engine = sa.create_engine(url, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise ConfigError(
            f"cannot use database_url ({exc}); install the driver, e.g. "
            "`pip install liaison[postgresql]` or `liaison[mysql]`"
        ) from exc
    except ImportError as exc:
        raise ConfigError(
            f"the database driver is not installed ({exc}); install it, e.g. "
            "`pip install liaison[postgresql]` or `liaison[mysql]`"
        ) from exc
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
class MappedDataset:
    """A catalog dataset bound to a reflected local table."""

    dataset: Dataset
    table: sa.Table
    columns: Mapping[str, sa.Column[Any]]  # catalog field -> local column

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


def bind_schema(
    engine: Engine, mappings: tuple[DatasetMapping, ...], catalog: Catalog
) -> dict[str, MappedDataset]:
    """Reflect the mapped tables; a missing table or column stops the node, named."""
    metadata = sa.MetaData()
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            existing = set(inspector.get_table_names())
            bound: dict[str, MappedDataset] = {}
            for mapping in mappings:
                if mapping.table not in existing:
                    raise ConfigError(
                        f"dataset {mapping.dataset!r} maps to table {mapping.table!r}, which "
                        f"does not exist in the database; tables there: "
                        f"{', '.join(sorted(existing)) or '(none)'}"
                    )
                table = sa.Table(mapping.table, metadata, autoload_with=conn)
                columns = {}
                for field_name, column_name in mapping.columns.items():
                    if column_name not in table.c:
                        raise ConfigError(
                            f"field {mapping.dataset}.{field_name} maps to column "
                            f"{mapping.table}.{column_name}, which does not exist; columns of "
                            f"{mapping.table}: {', '.join(c.name for c in table.c)}"
                        )
                    columns[field_name] = table.c[column_name]
                bound[mapping.dataset] = MappedDataset(
                    catalog.dataset(mapping.dataset), table, columns
                )
            return bound
    except SQLAlchemyError as exc:
        raise BackendError(
            f"cannot reach the agency database ({type(exc).__name__}); check database_url, "
            "that the server is up, and the account's rights"
        ) from exc
