"""Shared fixtures: a small corpus the tests write themselves, and a CLI runner in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

WORDS = (
    "the nation congress people state government year war peace law public united country great power "
    "time world policy citizens economy trade union freedom future treaty labor industry justice duty"
).split()


def make_documents(count: int, words_per_doc: int = 120, seed: int = 0) -> list[str]:
    """Deterministic pseudo-English documents, distinct from one another."""
    import random

    rng = random.Random(seed)
    return [
        f"Document {i}. " + " ".join(rng.choice(WORDS) for _ in range(words_per_doc)) + "."
        for i in range(count)
    ]


@pytest.fixture
def text_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i, text in enumerate(make_documents(30)):
        (folder / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
    return folder


# One Prefect home (database, result files) for the whole session: a fresh one per test would
# migrate a new database each time.
PREFECT_HOME = tempfile.mkdtemp(prefix="scalelaw-tests-prefect-")


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=PREFECT_HOME,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_OFFLINE="1",
    )
    env.pop("PREFECT_API_URL", None)
    return env


def run_cli(args: list[str], tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`scalelaw ARGS` as a user runs it: a fresh process, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


SMOKE_CELLS = 9


@pytest.fixture(scope="session")
def smoke(tmp_path_factory) -> dict:
    """One uninterrupted smoke sweep through the CLI, shared by the tests that read it."""
    import time

    home = tmp_path_factory.mktemp("smoke")
    store = home / "store"
    started = time.perf_counter()
    result = run_cli(["run", "--preset", "smoke", "--store", str(store)], home)
    assert result.returncode == 0, result.stdout + result.stderr
    return {"home": home, "store": store, "seconds": time.perf_counter() - started, "output": result.stdout}


def runs_by_cell(store: Path, columns: str) -> dict[str, tuple]:
    from storage.catalog import open_catalog
    from storage.store import Store

    rows = open_catalog(Store(store)).execute(f"select cell_id, {columns} from runs").fetchall()
    return {row[0]: row[1:] for row in rows}


def finished_at(store: Path) -> dict[str, object]:
    return {cell: values[0] for cell, values in runs_by_cell(store, "finished_at").items()}
