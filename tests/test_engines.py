"""The same sweep on another engine or store gives the same runs table: a local Dask cluster of worker
processes, and a store on an S3-compatible server that every worker reads and writes."""

from __future__ import annotations

import pytest
from conftest import SMOKE_CELLS, run_cli, runs_by_cell

pytestmark = pytest.mark.e2e

COMPARED = "val_loss_nats, train_loss_nats, tokens_seen, params_nonembedding, status"


def test_smoke_sweep_on_a_local_dask_cluster_matches_the_process_pool(smoke, tmp_path):
    store = tmp_path / "store"
    result = run_cli(["run", "--preset", "smoke", "--engine", "dask", "--store", str(store)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    on_dask = runs_by_cell(store, COMPARED)
    assert len(on_dask) == SMOKE_CELLS
    assert on_dask == runs_by_cell(smoke["store"], COMPARED)


def test_smoke_sweep_on_dask_with_its_store_on_s3_matches_the_local_run(smoke, s3_location, tmp_path):
    store = f"{s3_location}/smoke"
    result = run_cli(["run", "--preset", "smoke", "--engine", "dask", "--store", store], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    on_s3 = runs_by_cell(store, COMPARED)
    assert len(on_s3) == SMOKE_CELLS
    assert on_s3 == runs_by_cell(smoke["store"], COMPARED)
    query = run_cli(["query", "--store", store, "--format", "csv", "select count(*) from runs"], tmp_path)
    assert query.returncode == 0 and query.stdout.split() == ["count_star()", str(SMOKE_CELLS)], query.stderr
    status = run_cli(["status", "--preset", "smoke", "--store", store], tmp_path)
    assert status.returncode == 0 and f"{SMOKE_CELLS} of {SMOKE_CELLS} cells done" in status.stdout, (
        status.stdout
    )
