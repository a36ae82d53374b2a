"""The DuckDB catalog: views over every Parquet file in a store, across all sweeps."""

from __future__ import annotations

from pathlib import PurePosixPath

import duckdb
import pyarrow as pa

from storage import schemas
from storage.store import Store, StoreError

VIEWS: dict[str, tuple[str, str, pa.Schema]] = {
    "runs": ("cells", "result.parquet", schemas.RUNS),
    "curves": ("cells", "curve.parquet", schemas.CURVES),
    "sweeps": ("sweeps", "cells.parquet", schemas.SWEEPS),
    "fits": ("fits", "fits.parquet", schemas.FITS),
    "isoflop": ("fits", "isoflop.parquet", schemas.ISOFLOP),
    "extrapolation": ("fits", "extrapolation.parquet", schemas.EXTRAPOLATION),
    "verdict": ("fits", "verdict.parquet", schemas.VERDICT),
    "corpus_stats": ("clean", "stats.parquet", schemas.CORPUS_STATS),
}


def open_catalog(store: Store) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per table kind over the store's complete artifacts.

    A remote store's filesystem is registered with DuckDB, which then reads its files through fsspec.
    """
    con = duckdb.connect(":memory:")
    if not store.is_local:
        con.register_filesystem(store.fs)
    for name, (kind, file, schema) in VIEWS.items():
        files = store.complete_files(kind, file)
        if files:
            paths = ", ".join(f"'{_sql_quote(str(f))}'" for f in files)
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{paths}], union_by_name = true)")
        else:
            con.register(name, schema.empty_table())
    return con


def _sql_quote(text: str) -> str:
    return text.replace("'", "''")


def sweep_cells(store: Store, sweep_name: str | None = None) -> tuple[str, str, list[str]]:
    """(sweep_id, sweep_name, cell_ids) of the most recently recorded sweep, by name when given."""
    recorded = []
    for path in store.complete_files("sweeps", "cells.parquet"):
        sweep_id = PurePosixPath(path).parent.name
        record = store.marker("sweeps", sweep_id) or {}
        if sweep_name in (None, record.get("sweep_name")):
            recorded.append((record.get("recorded_at", ""), sweep_id))
    if not recorded:
        wanted = f"named {sweep_name!r} " if sweep_name else ""
        raise StoreError(
            f"store: {store.location} holds no sweep {wanted}yet; run one first or check --sweep."
        )
    _, sweep_id = max(recorded)
    rows = store.read_table("sweeps", sweep_id, "cells.parquet").to_pylist()
    return sweep_id, rows[0]["sweep_name"], [row["cell_id"] for row in rows]


READ_ONLY_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


def read_only_query(store: Store, sql: str) -> duckdb.DuckDBPyConnection:
    """Run one read-only statement (SELECT, DESCRIBE, SHOW, EXPLAIN) over the store's views.

    Anything that could write (COPY ... TO, CREATE, INSERT, ATTACH, SET) is refused before it runs, and
    the statement can read no file outside the store.
    """
    statements = duckdb.extract_statements(sql)
    if len(statements) != 1:
        raise ValueError(f"query: give exactly one SQL statement (got {len(statements)}).")
    if statements[0].type not in READ_ONLY_STATEMENTS:
        raise ValueError(
            f"query: {statements[0].type.name} statements are not allowed; the catalog is read-only."
        )
    con = open_catalog(store)
    # The statement reads the store's files and nothing else (no read_csv('/etc/passwd')).
    con.execute(f"SET allowed_directories = ['{_sql_quote(store.location)}/']")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con.execute(sql)
