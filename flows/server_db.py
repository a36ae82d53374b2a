"""A fresh Prefect home's SQLite database, with the schema Prefect's own start would give it, before
Prefect's server starts (flows/server_app.py): restored from the schema this repository ships
(prefect_schema.sql) when Prefect's SQLite migrations are the ones it was made from, else copied from
one this machine migrated earlier for the same migrations, else created by Prefect's migrations on a
synchronous connection (and kept for the next fresh home).

Prefect's server runs its 115 SQLite migrations through aiosqlite: each of their 34k statements is a round
trip between the event loop and aiosqlite's thread, 5.7 s of CPU on these machines, taken from the
sweep's start (bench/README.md). The same migrations on the standard library's sqlite3 take
2.2-3.3 s (alembic's imports included), the shipped schema 15-20 ms, a copy 2-5 ms. Prefect's server then
finds its database at the head revision and migrates nothing. A database that exists already, and any
database other than a SQLite file, is left to Prefect.

    python -m flows.server_db    # write prefect_schema.sql for the installed Prefect's migrations
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import tempfile
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from storage.cache import machine_cache

SHIPPED_SCHEMA = Path(__file__).with_name("prefect_schema.sql")
KEY_LINE = "-- Prefect's SQLite schema at the head of the migrations keyed "


def create_if_new(connection_url: str, shipped_schema: Path = SHIPPED_SCHEMA) -> bool:
    """Create the database `connection_url` names, if it is a SQLite file that does not exist yet,
    with the schema Prefect's own start would give it; whether it did. From `shipped_schema` when it
    was made from the installed Prefect's migrations, else from the machine's migrated copy when
    there is one, else made from this database by the migrations (and copied to the machine's)."""
    url = sa.make_url(connection_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:") or url.query:
        return False
    path = Path(url.database)
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    key = migrations_key()
    template = machine_cache() / "prefect-db" / f"{key}.db"
    shipped_sql = shipped_schema.read_text(encoding="utf-8") if shipped_schema.exists() else ""
    if schema_key(shipped_sql) == key:
        _written(path, lambda partial: _restore(shipped_sql, partial))
    elif template.exists():
        _written(path, lambda partial: shutil.copyfile(template, partial))
    else:
        _migrate(path)
        if not path.with_name(f"{path.name}-wal").exists():  # else the file alone is not the database
            with contextlib.suppress(OSError):  # a cache that cannot be written: the next home migrates
                template.parent.mkdir(parents=True, exist_ok=True)
                _written(template, lambda partial: shutil.copyfile(path, partial))
    return True


def migrations_key() -> str:
    """A name for the schema that the installed Prefect's SQLite migrations build: a hash of their
    files' names and contents (2 ms), so that no other migrations ever find it."""
    from prefect.server.database import provide_database_interface

    digest = hashlib.sha256()
    for migration in sorted(Path(provide_database_interface().orm.versions_dir).glob("*.py")):
        digest.update(migration.name.encode() + b"\0" + migration.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def schema_key(schema_sql: str) -> str | None:
    """The migrations key that the text of a schema file written by `write_schema` names in its first
    line."""
    first = schema_sql.partition("\n")[0]
    return first.removeprefix(KEY_LINE) if first.startswith(KEY_LINE) else None


def write_schema(target: Path) -> None:
    """Write the installed Prefect's migrated schema (and the row of its revision) as SQL to `target`,
    its first line naming the migrations' key."""
    with tempfile.TemporaryDirectory() as scratch:
        migrated = Path(scratch) / "prefect.db"
        _migrate(migrated)
        with contextlib.closing(sqlite3.connect(migrated)) as db:
            statements = list(db.iterdump())
    text = "\n".join([KEY_LINE + migrations_key(), "-- written by `python -m flows.server_db`", *statements])
    _written(target, lambda partial: partial.write_text(text + "\n", encoding="utf-8"))


def _restore(schema_sql: str, target: Path) -> None:
    """A database at `target` from a schema file, in WAL mode as Prefect's migrated one is."""
    with contextlib.closing(sqlite3.connect(target)) as db:
        db.executescript(schema_sql)
        db.execute("PRAGMA journal_mode = WAL")  # the last connection closing removes -wal and -shm


def _written(target: Path, write: Callable[[Path], object]) -> None:
    """`write(partial)` to a temporary file beside `target`, then renamed to it: readers see all of it
    or none."""
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    try:
        write(partial)
        os.replace(partial, target)
    finally:
        for suffix in ("", "-wal", "-shm"):  # -wal and -shm: a restore that failed
            partial.with_name(partial.name + suffix).unlink(missing_ok=True)


def _migrate(path: Path) -> None:
    """Prefect's migrations, to its head revision, into a new SQLite database at `path`."""
    engine = _migration_engine(sa.URL.create("sqlite", database=str(path)))
    try:
        with engine.connect() as connection:
            _upgrade_to_head(connection)
    finally:
        engine.dispose()


def _migration_engine(url: sa.URL) -> sa.Engine:
    """A sqlite3 engine with Prefect's pragmas (WAL, no legacy ALTER TABLE), foreign keys off as
    Prefect's migration environment has them, and transactions begun IMMEDIATE as there."""
    from prefect.server.database import provide_database_interface

    prefect_config = provide_database_interface().database_config
    engine = sa.create_engine(url)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, record) -> None:
        dbapi_connection.isolation_level = None  # BEGIN is ours (below), so DDL stays in transactions
        prefect_config.setup_sqlite(dbapi_connection, record)
        dbapi_connection.execute("PRAGMA foreign_keys = OFF")

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _upgrade_to_head(connection: sa.Connection) -> None:
    """Prefect's migrations to its head revision, each in a transaction of its own as in Prefect's
    migration environment."""
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory
    from prefect.server.database import provide_database_interface
    from prefect.server.database.alembic_commands import alembic_config

    config = alembic_config()
    script = ScriptDirectory.from_config(config)
    script.version_locations = [provide_database_interface().orm.versions_dir]

    def upgrade(revision: str, _context: object) -> list:
        return script._upgrade_revs("head", revision)  # what alembic.command.upgrade passes

    with EnvironmentContext(config, script, fn=upgrade, destination_rev="head") as environment:
        environment.configure(connection=connection, transaction_per_migration=True)
        with warnings.catch_warnings():  # as Prefect's upgrade: its reflections warn of functional indexes
            warnings.filterwarnings("ignore", "Skipped unsupported reflection", sa.exc.SAWarning)
            with environment.begin_transaction():
                environment.run_migrations()


if __name__ == "__main__":
    write_schema(SHIPPED_SCHEMA)
    print(f"wrote {SHIPPED_SCHEMA} for the migrations keyed {migrations_key()}")
