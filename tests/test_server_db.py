"""A fresh Prefect home's database, created on a synchronous connection or copied from the one made so
before (flows/server_db.py), is the one Prefect's own start creates, at the revision where Prefect's
start finds nothing to migrate."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from flows.server_db import create_if_new

PREFECTS_OWN = """
import asyncio
from prefect.server.database import provide_database_interface
asyncio.run(provide_database_interface().create_db())
"""
OURS = """
from prefect.server.database import provide_database_interface
from flows.server_db import create_if_new
assert create_if_new(provide_database_interface().database_config.connection_url)
"""


def created(home: Path, script: str, cache: Path) -> Path:
    env = dict(os.environ, PREFECT_HOME=str(home), SCALELAW_CACHE=str(cache))
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)
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


def test_a_fresh_homes_database_is_the_one_prefect_creates(tmp_path):
    """Catches a migration skipped or run differently, a revision short of Prefect's head (Prefect's
    start would migrate again), a database left out of WAL mode, and a later fresh home that is not
    given the machine's migrated copy (a table added to the copy must reach it) or is given another."""
    cache = tmp_path / "cache"
    prefects = schema(created(tmp_path / "prefects", PREFECTS_OWN, cache))
    assert not cache.exists()
    ours = schema(created(tmp_path / "ours", OURS, cache))
    assert len(prefects) > 50 and prefects["journal_mode"] == [("wal",)]
    assert ours == prefects

    [template] = (cache / "prefect-db").iterdir()
    marked = sqlite3.connect(template)
    marked.execute("create table copied_from_the_template (x)")
    marked.close()
    copied = schema(created(tmp_path / "copied", OURS, cache))
    assert copied.pop("copied_from_the_template")
    assert copied == prefects


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
