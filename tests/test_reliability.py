"""Failures that are not the user's: writers killed mid-publish, a full disk, and training that diverges.
The store must stay readable with every complete artifact intact, and the fit must leave out (and name)
the cells that did not finish."""

from __future__ import annotations

import errno
import math
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pytest
from conftest import FIGURES, REPO, make_documents, write_smoke_spec
from store_writer import KIND, build

from flows import cli
from flows.plan import cell_plans
from flows.spec import validate_spec
from storage import datasets
from storage.catalog import open_catalog
from storage.store import Store
from tasks import train

WRITER = Path(__file__).with_name("store_writer.py")
KILL_ROUNDS, WRITERS_PER_ROUND = 8, 3  # 24 kills


def start_writers(root: Path, seeds: range) -> list[subprocess.Popen]:
    """Writers publishing into `root`, returned once all are ready (their imports take about a second)."""
    writers = [
        subprocess.Popen(
            [sys.executable, str(WRITER), str(root), str(seed)],
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        for seed in seeds
    ]
    for writer in writers:
        assert writer.stdout.readline().strip() == "ready"
    return writers


def complete_artifacts(root: Path) -> dict[str, dict]:
    """fp -> record of every artifact visible under the kind's folder, each read back through DuckDB
    with the rows and sum its record promises; a visible folder without its marker fails."""
    folders = sorted((root / KIND).iterdir()) if (root / KIND).is_dir() else []
    records = {folder.name: Store(root).marker(KIND, folder.name) for folder in folders}
    assert None not in records.values(), "an artifact is visible without its completion marker"
    if not records:
        return {}
    files = ", ".join(f"'{root / KIND / fp / 'data.parquet'}'" for fp in records)
    read = duckdb.sql(
        f"select filename, count(*), sum(value) from read_parquet([{files}], filename = true) group by 1"
    ).fetchall()
    assert {Path(name).parent.name: (rows, total) for name, rows, total in read} == {
        fp: (record["rows"], record["sum"]) for fp, record in records.items()
    }
    return records


def test_writers_killed_at_random_points_never_break_or_lose_an_artifact(tmp_path):
    rng, intact, kills = random.Random(7), {}, 0
    for round_ in range(KILL_ROUNDS):
        writers = start_writers(tmp_path, range(round_ * WRITERS_PER_ROUND, (round_ + 1) * WRITERS_PER_ROUND))
        time.sleep(rng.uniform(0.0, 0.4))
        for writer in writers:
            writer.kill()
            writer.wait()
            kills += 1
        found = complete_artifacts(tmp_path)
        assert intact.items() <= found.items(), "a complete artifact was lost or changed"
        intact = found
    assert intact, "the writers were killed before they published anything"
    interrupted = len(list((tmp_path / ".tmp").glob("*")))
    Store(tmp_path).publish(KIND, "after", build(random.Random(0)))
    assert "after" in complete_artifacts(tmp_path)
    FIGURES["store kills"] = (
        f"store writers killed at random points: {kills}; the store read back whole after each kill, "
        f"{len(intact)} complete artifacts intact, none lost; {interrupted} interrupted publishes left "
        "only scratch folders"
    )


def write_parquet_on_a_full_disk(rows, schema, path: Path) -> None:
    path.write_bytes(b"PAR1")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@pytest.fixture
def small_disk(tmp_path, monkeypatch) -> Iterator[Path]:
    """A 64 KiB disk: a tmpfs where this process may mount one (root in a privileged container), else a
    folder whose Parquet writes fail as a full disk's do."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)]
    mounted = bool(shutil.which("mount")) and subprocess.run(mount, capture_output=True).returncode == 0
    if not mounted:
        monkeypatch.setattr(datasets, "write_parquet", write_parquet_on_a_full_disk)
    yield disk
    if mounted:
        subprocess.run(["umount", str(disk)], check=True)


def note(text: str) -> Callable[[Path], dict]:
    def build(out: Path) -> dict:
        (out / "note.txt").write_text(text)
        return {"note": text}

    return build


def test_a_full_disk_fails_the_sweep_cleanly_and_the_store_stays_usable(small_disk, tmp_path, scalelaw_here):
    root = small_disk / "store"
    Store(root).publish("notes", "before", note("kept"))
    corpus = tmp_path / "corpus"  # about 270 kB of text: more than the disk holds
    corpus.mkdir()
    for i, text in enumerate(make_documents(300)):
        (corpus / f"{i:03d}.txt").write_text(text)
    spec = write_smoke_spec(tmp_path / "spec.yaml", corpus={"source": str(corpus), "max_documents": None})

    status, _, stderr = scalelaw_here(["run", "--spec", str(spec), "--store", str(root)])
    assert status == cli.EXIT_DISK_FULL, stderr
    assert stderr.startswith("error: no space left on the disk") and len(stderr.strip().splitlines()) == 1
    assert {p.name for p in root.iterdir() if not p.name.startswith(".")} == {"notes"}
    assert not any((root / ".tmp").iterdir()), "the failed publish left its scratch folder"
    assert Store(root).marker("notes", "before") == {"note": "kept"}
    assert Store(root).publish("notes", "after", note("written")) == Store(root).marker("notes", "after")


def tiny_plan():
    spec = validate_spec(
        {
            "grid": {"model_sizes": [{"d_model": 16, "n_layers": 1}], "tokens": [2048]},
            "train": {"context": 16, "batch_size": 8, "min_steps": 8, "lr": 0.01},
            "eval": {"val_tokens": 256},
        }
    )
    (plan,) = cell_plans(spec, 300, 50_000, 5_000)
    return plan


@pytest.mark.parametrize("bad_loss", [math.nan, math.inf])
def test_a_nan_or_infinite_loss_stops_the_cell_as_diverged_at_that_step(bad_loss, tmp_path, monkeypatch):
    steps_taken, real_step = [], train.Learner.step

    def step_that_goes_wrong_at_step_3(learner, batch):
        steps_taken.append(real_step(learner, batch))
        return bad_loss if len(steps_taken) == 4 else steps_taken[-1]

    monkeypatch.setattr(train.Learner, "step", step_that_goes_wrong_at_step_3)
    stream = np.random.default_rng(0).integers(1, 300, 20_000).astype(np.uint16)
    outcome = train.train_cell(tiny_plan(), stream, stream[:5000], np.ones(300, np.int64), tmp_path / "model")
    assert outcome.row["status"] == "diverged" and outcome.row["diverged_step"] == 3
    assert outcome.row["error"] == f"loss {bad_loss} at step 3"
    assert not (tmp_path / "model").exists(), "a diverged cell saved a model"


def run_row(cell_id: str, n: int, d: int, status: str) -> dict:
    loss = 1.7 + 400 / n**0.34 + 410 / d**0.28 if status == "ok" else math.nan
    return {
        "cell_id": cell_id,
        "status": status,
        "seed": 0,
        "error": None if status == "ok" else "loss nan at step 12",
        "diverged_step": 12 if status == "diverged" else None,
        "params_nonembedding": n,
        "params_total": 2 * n,
        "tokens_target": d,
        "tokens_seen": d,
        "flops_6nd": 6.0 * n * d,
        "flops_with_attention": 7.0 * n * d,
        "val_loss_nats": loss,
        "finished_at": datetime.now(UTC),
    }


def table(rows: list[dict], dataset: datasets.Dataset) -> Callable[[Path], dict]:
    def build(out: Path) -> dict:
        dataset.write(rows, out)
        return {"status": rows[0].get("status", "ok")}

    return build


def publish_sweep(root: Path, rows: list[dict]) -> None:
    """A stored sweep of these `runs` rows, as training would have left it."""
    for row in rows:
        Store(root).publish(datasets.RUNS.kind, row["cell_id"], table([row], datasets.RUNS))
    members = [{"sweep_id": "s1", "sweep_name": "rows", "cell_id": row["cell_id"]} for row in rows]
    Store(root).publish(datasets.SWEEPS.kind, "s1", table(members, datasets.SWEEPS))


def test_the_fit_leaves_out_diverged_and_failed_cells_and_says_so(tmp_path, scalelaw_here):
    sizes = [(n, d) for n in (1e6, 3e6, 1e7, 3e7) for d in (1e8, 3e8, 1e9)]
    rows = [run_row(f"ok{i}", int(n), int(d), "ok") for i, (n, d) in enumerate(sizes)]
    rows += [run_row("bad1", 10**8, 10**9, "diverged"), run_row("bad2", 10**8, 3 * 10**9, "failed")]
    publish_sweep(tmp_path / "store", rows)

    status, printed, stderr = scalelaw_here(["fit", "--store", str(tmp_path / "store")])
    assert status == 0, stderr
    assert "left out of every fit: bad1 (diverged), bad2 (failed)" in printed
    fits = open_catalog(Store(tmp_path / "store")).execute(
        "select distinct n_points from fits where form = 'chinchilla'"
    )
    assert fits.fetchall() == [(len(sizes),)]
    (report,) = (tmp_path / "store").glob("reports/*/report.md")
    assert "Excluded from the fits: bad1 (diverged), bad2 (failed)." in report.read_text()
