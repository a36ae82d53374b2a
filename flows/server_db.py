"""A fresh Prefect home's SQLite database: a copy of one migrated earlier on this machine for the
same Prefect, else created by Prefect's own migrations on a synchronous connection (and kept for the
next fresh home), before Prefect's server starts (flows/server_app.py).

Prefect's server runs its 116 migrations through aiosqlite: each of their 34k statements is a round
trip between the event loop and aiosqlite's thread, 5.7 s of CPU on these machines, taken from the
sweep's start (bench/README.md). The same migrations on the standard library's sqlite3 take
1.8-3.3 s (alembic's imports included), a copy of their result 2 ms. Prefect's server then finds its
database at the head revision and migrates nothing. A database that exists already, and any database
other than a SQLite file, is left to Prefect."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
import warnings
from pathlib import Path

import sqlalchemy as sa

from storage.cache import machine_cache


def create_if_new(connection_url: str) -> bool:
    """Create the database `connection_url` names, if it is a SQLite file that does not exist yet,
    with the schema Prefect's own start would give it; whether it did. The machine's migrated copy
    (`_migrated_template()`) is copied when there is one, else made from this database."""
    url = sa.make_url(connection_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:") or url.query:
        return False
    path = Path(url.database)
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    template = _migrated_template()
    if template.exists():
        _copied(template, path)
        return True
    engine = _migration_engine(url.set(drivername="sqlite"))
    try:
        with engine.connect() as connection:
            _upgrade_to_head(connection)
    finally:
        engine.dispose()
    if not path.with_name(f"{path.name}-wal").exists():  # else the file alone is not the database
        with contextlib.suppress(OSError):  # a cache that cannot be written: the next home migrates
            template.parent.mkdir(parents=True, exist_ok=True)
            _copied(path, template)
    return True


def _migrated_template() -> Path:
    """Where this machine keeps a database migrated by this Prefect: named by its version and the
    names of its SQLite migrations, so that another Prefect never finds it."""
    import prefect
    from prefect.server.database import provide_database_interface

    versions = Path(provide_database_interface().orm.versions_dir)
    migrations = sorted(path.name for path in versions.glob("*.py"))
    key = hashlib.sha256("\n".join([prefect.__version__, *migrations]).encode()).hexdigest()[:16]
    return machine_cache() / "prefect-db" / f"{key}.db"


def _copied(source: Path, target: Path) -> None:
    """Copy `source` to `target` through a temporary file beside it: readers see all of it or none."""
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    try:
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


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
