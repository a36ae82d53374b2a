"""The DuckDB catalog: views over every Parquet file in a store, across all sweeps."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import duckdb

from storage.datasets import DATASETS, SWEEPS, Dataset
from storage.errors import UserError
from storage.store import Store, StoreError

VIEWS: dict[str, Dataset] = {d.view: d for d in DATASETS if d.view is not None}


class QueryError(UserError):
    """A statement that `scalelaw query` refuses; the message says why."""


def open_catalog(store: Store) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per queryable dataset over the store's complete
    artifacts. A view holds its dataset's declared columns only (a column retired from the schema
    stays out even where older files still hold it).

    A remote store's filesystem is registered with DuckDB, which then reads its files through fsspec.
    """
    con = duckdb.connect(":memory:")
    if not store.is_local:
        con.register_filesystem(store.fs)
    for name, dataset in VIEWS.items():
        files = dataset.files(store)
        if files:
            paths = ", ".join(f"'{_sql_quote(str(f))}'" for f in files)
            declared = "|".join(re.escape(column) for column in dataset.schema.names)
            con.execute(
                f"CREATE VIEW {name} AS SELECT COLUMNS('^({declared})$') "
                f"FROM read_parquet([{paths}], union_by_name = true)"
            )
        else:
            con.register(name, dataset.schema.empty_table())
    return con


def _sql_quote(text: str) -> str:
    return text.replace("'", "''")


def sweep_cells(store: Store, sweep_name: str | None = None) -> tuple[str, str, list[str]]:
    """(sweep_id, sweep_name, cell_ids) of the most recently recorded sweep, by name when given."""
    recorded = []
    for path in SWEEPS.files(store):
        sweep_id = PurePosixPath(path).parent.name
        record = store.marker(SWEEPS.kind, sweep_id) or {}
        if sweep_name in (None, record.get("sweep_name")):
            recorded.append((record.get("recorded_at", ""), sweep_id))
    if not recorded:
        wanted = f"named {sweep_name!r} " if sweep_name else ""
        raise StoreError(
            f"store: {store.location} holds no sweep {wanted}yet; run one first or check --sweep."
        )
    _, sweep_id = max(recorded)
    rows = SWEEPS.rows(store, sweep_id)
    return sweep_id, rows[0]["sweep_name"], [row["cell_id"] for row in rows]


READ_ONLY_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


def read_only_query(store: Store, sql: str) -> duckdb.DuckDBPyConnection:
    """Run one read-only statement (SELECT, DESCRIBE, SHOW, EXPLAIN) over the store's views.

    Anything that could write (COPY ... TO, CREATE, INSERT, ATTACH, SET) is refused before it runs, and
    the statement can read no file outside the store.
    """
    statements = duckdb.extract_statements(sql)
    if len(statements) != 1:
        raise QueryError(f"query: give exactly one SQL statement (got {len(statements)}).")
    if statements[0].type not in READ_ONLY_STATEMENTS:
        raise QueryError(
            f"query: {statements[0].type.name} statements are not allowed; the catalog is read-only."
        )
    con = open_catalog(store)
    # The statement reads the store's files and nothing else (no read_csv('/etc/passwd')).
    con.execute(f"SET allowed_directories = ['{_sql_quote(store.location)}/']")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con.execute(sql)
