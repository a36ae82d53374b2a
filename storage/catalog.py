"""The DuckDB catalog: views over every Parquet file in a store, across all sweeps."""

from __future__ import annotations

import duckdb
import pyarrow as pa

from storage import schemas
from storage.store import Store, StoreError

VIEWS: dict[str, tuple[str, pa.Schema]] = {
    "runs": ("cells/*/result.parquet", schemas.RUNS),
    "curves": ("cells/*/curve.parquet", schemas.CURVES),
    "sweeps": ("sweeps/*/cells.parquet", schemas.SWEEPS),
    "fits": ("fits/*/fits.parquet", schemas.FITS),
    "corpus_stats": ("clean/*/stats.parquet", schemas.CORPUS_STATS),
}


def open_catalog(store: Store) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per table kind of the store."""
    con = duckdb.connect(":memory:")
    for name, (pattern, schema) in VIEWS.items():
        files = sorted(store.root.glob(pattern))
        if files:
            paths = ", ".join(f"'{_sql_quote(str(f))}'" for f in files)
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{paths}], union_by_name = true)")
        else:
            con.register(name, schema.empty_table())
    return con


def _sql_quote(text: str) -> str:
    return text.replace("'", "''")


def sweep_cells(store: Store, sweep_name: str | None = None) -> tuple[str, str, list[str]]:
    """(sweep_id, sweep_name, cell_ids) of the newest recorded sweep, by name when given."""
    recorded = sorted(store.root.glob(VIEWS["sweeps"][0]), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in recorded:
        rows = schemas.read_parquet(path).to_pylist()
        if rows and sweep_name in (None, rows[0]["sweep_name"]):
            return rows[0]["sweep_id"], rows[0]["sweep_name"], [r["cell_id"] for r in rows]
    wanted = f"named {sweep_name!r} " if sweep_name else ""
    raise StoreError(f"store: {store.root} holds no sweep {wanted}yet; run one first or check --sweep.")


READ_ONLY_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


def read_only_query(store: Store, sql: str) -> duckdb.DuckDBPyConnection:
    """Run one read-only statement (SELECT, DESCRIBE, SHOW, EXPLAIN) over the store's views.

    Anything that could write (COPY ... TO, CREATE, INSERT, ATTACH, SET) is refused before it runs.
    """
    statements = duckdb.extract_statements(sql)
    if len(statements) != 1:
        raise ValueError(f"query: give exactly one SQL statement (got {len(statements)}).")
    if statements[0].type not in READ_ONLY_STATEMENTS:
        raise ValueError(
            f"query: {statements[0].type.name} statements are not allowed; the catalog is read-only."
        )
    con = open_catalog(store)
    con.execute("SET lock_configuration = true")
    return con.execute(sql)
