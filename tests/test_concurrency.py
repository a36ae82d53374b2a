"""Two sweeps and a reader on one store at once: no lost or duplicated row, no corrupt file, and every
read consistent. The sweeps share their corpus, vocabulary and tokens, and one grid cell."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from conftest import cli_env, run_cli, write_smoke_spec

from storage.catalog import open_catalog
from storage.store import Store

SWEEPS = {
    "left": {"model_sizes": [3000, 8000], "tokens": [8192]},
    "right": {"model_sizes": [8000], "tokens": [8192, 16384]},
}


def start_sweep(name: str, grid: dict, store: Path, home: Path) -> subprocess.Popen:
    spec = write_smoke_spec(home / f"{name}.yaml", grid=grid, fit={"bootstrap": 0}, execution={"workers": 1})
    spec.write_text(spec.read_text().replace("name: smoke", f"name: {name}"))
    command = [sys.executable, "-m", "flows.cli", "run", "--spec", str(spec), "--store", str(store)]
    return subprocess.Popen(command, cwd=home, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def read_runs(store: Path) -> list[tuple]:
    """What a reader sees now: every complete cell's row, each file read whole."""
    return open_catalog(Store(store)).execute("select cell_id, status, val_loss_nats from runs").fetchall()


def test_two_sweeps_and_a_reader_on_one_store(tmp_path):
    store = tmp_path / "store"
    sweeps = [start_sweep(name, grid, store, tmp_path) for name, grid in SWEEPS.items()]
    reads, seen = 0, set()
    while any(sweep.poll() is None for sweep in sweeps):
        rows = read_runs(store)
        ids = [row[0] for row in rows]
        assert len(ids) == len(set(ids)), "a reader saw a cell twice"
        assert seen <= set(ids), "a reader lost a cell it had seen"
        seen, reads = set(ids), reads + 1
        time.sleep(0.2)
    for sweep in sweeps:
        stdout, stderr = sweep.communicate()
        assert sweep.returncode == 0, stdout.decode() + stderr.decode()

    rows = read_runs(store)
    assert len(rows) == 3 and {row[1] for row in rows} == {"ok"}, rows
    members = open_catalog(Store(store)).execute(
        "select sweep_name, count(*) from sweeps group by 1 order by 1"
    )
    assert members.fetchall() == [("left", 2), ("right", 2)]
    assert len(list(store.glob("clean/*"))) == len(list(store.glob("tokens/*"))) == 1
    assert not list(store.glob(".tmp/*")), "a writer left scratch behind"
    query = run_cli(["query", "--store", str(store), "select count(distinct cell_id) from runs"], tmp_path)
    assert query.returncode == 0 and "3" in query.stdout, query.stderr
    print(f"two sweeps, one shared cell: 3 cells, each once; {reads} concurrent reads, all consistent")
