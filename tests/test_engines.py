"""The same sweep on another engine gives the same runs table: a local Dask cluster of worker processes."""

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
