"""A fresh Prefect home's database, restored from the shipped schema, created on a synchronous
connection or copied from the one made so before (flows/server_db.py), is the one Prefect's own start
creates, at the revision where Prefect's start finds nothing to migrate."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from flows.server_db import SHIPPED_SCHEMA, create_if_new, migrations_key, schema_key, write_schema

PREFECTS_OWN = """
import asyncio
from prefect.server.database import provide_database_interface
asyncio.run(provide_database_interface().create_db())
"""
OURS = """
import sys
from pathlib import Path
from prefect.server.database import provide_database_interface
from flows.server_db import create_if_new
assert create_if_new(provide_database_interface().database_config.connection_url, Path(sys.argv[1]))
"""


def created(home: Path, script: str, cache: Path, shipped_schema: Path | None = None) -> Path:
    """The database a fresh `home` gets from `script`; OURS restores `shipped_schema` when it fits."""
    env = dict(os.environ, PREFECT_HOME=str(home), SCALELAW_CACHE=str(cache))
    arguments = [str(shipped_schema or home / "no-shipped-schema.sql")]
    subprocess.run([sys.executable, "-c", script, *arguments], env=env, check=True, timeout=120)
    return home / "prefect.db"


def schema(path: Path) -> dict:
    """Tables (columns, foreign keys and indexes, each as a set where SQLite's order is arbitrary),
    the other objects' SQL, and the revision."""
    with sqlite3.connect(path) as db:
        objects = db.execute("select type, name, sql from sqlite_master where name not like 'sqlite_%'")
        found: dict = {"revision": db.execute("select version_num from alembic_version").fetchall()}
        for kind, name, sql in objects.fetchall():
            if kind == "table":
                found[name] = (
                    db.execute(f'pragma table_xinfo("{name}")').fetchall(),
                    sorted(row[2:] for row in db.execute(f'pragma foreign_key_list("{name}")')),
                    sorted(row[1:] for row in db.execute(f'pragma index_list("{name}")')),
                )
            else:
                found[(kind, name)] = sql
        found["journal_mode"] = db.execute("pragma journal_mode").fetchall()
        return found


@pytest.fixture(scope="module")
def prefects(tmp_path_factory) -> dict:
    """The schema of the database Prefect's own start creates."""
    home = tmp_path_factory.mktemp("prefects")
    found = schema(created(home, PREFECTS_OWN, home / "cache"))
    assert not (home / "cache").exists()  # Prefect's own start, untouched by ours
    assert len(found) > 50 and found["journal_mode"] == [("wal",)]
    return found


def test_a_fresh_homes_database_is_the_one_prefect_creates(tmp_path, prefects):
    """Catches a migration skipped or run differently, a revision short of Prefect's head (Prefect's
    start would migrate again), a database left out of WAL mode, a later fresh home that is not
    given the machine's migrated copy (a table added to the copy must reach it) or is given another,
    and a schema file that does not restore what the migrations made."""
    cache = tmp_path / "cache"
    ours = schema(created(tmp_path / "ours", OURS, cache))
    assert ours == prefects

    [template] = (cache / "prefect-db").iterdir()
    marked = sqlite3.connect(template)
    marked.execute("create table copied_from_the_template (x)")
    marked.close()
    copied = schema(created(tmp_path / "copied", OURS, cache))
    assert copied.pop("copied_from_the_template")
    assert copied == prefects

    written = tmp_path / "schema.sql"
    write_schema(written)
    assert schema_key(written.read_text(encoding="utf-8")) == migrations_key()
    assert schema(created(tmp_path / "restored", OURS, cache, written)) == prefects  # not the marked copy


def test_the_shipped_schema_is_the_installed_prefects(tmp_path, prefects):
    """Catches a shipped schema file that restores anything but what the installed Prefect's start
    creates. Skipped, naming the fix, where this Prefect's migrations are not the ones it was made
    from: fresh homes then migrate once per machine, as the test above checks."""
    if schema_key(SHIPPED_SCHEMA.read_text(encoding="utf-8")) != migrations_key():
        pytest.skip(f"{SHIPPED_SCHEMA.name} is for other Prefect migrations: run python -m flows.server_db")
    cache = tmp_path / "cache"
    assert schema(created(tmp_path / "shipped", OURS, cache, SHIPPED_SCHEMA)) == prefects
    assert not cache.exists()  # neither migrated nor copied


def test_an_existing_database_and_other_databases_are_left_to_prefect(tmp_path):
    """Catches migrations run over a database that exists (with its data: Prefect migrates it), or on
    a URL that is not a SQLite file."""
    existing = tmp_path / "prefect.db"
    existing.write_bytes(b"not touched")
    assert not create_if_new(f"sqlite+aiosqlite:///{existing}")
    assert existing.read_bytes() == b"not touched"
    assert not create_if_new("sqlite+aiosqlite:///:memory:")
    assert not create_if_new("postgresql+asyncpg://user:secret@db.example/prefect")
    assert not list(tmp_path.iterdir())[1:]
