"""A warmup-stable-decay sweep through the real flow: one trunk per model size, each cell a cooldown
branch marked as such in the runs table, and reruns that train neither the trunks nor finished cells.

The flow runs in this process, its tasks in one worker thread, against the session's Prefect server:
the same flow and tasks as the CLI runs, without worker processes to start for each of its three runs."""

from __future__ import annotations

import shutil

import pytest
from conftest import finished_at, runs_by_cell, shared_server_here
from prefect.task_runners import ThreadPoolTaskRunner

from flows.spec import PRESETS, GridSpec
from flows.sweep import scaling_sweep
from storage.store import COMPLETE_MARKER, Store
from tasks import train


@pytest.fixture(scope="module")
def prefect_server():
    with shared_server_here():
        yield


@pytest.fixture
def trainings(monkeypatch) -> list[str]:
    """The trunks and cells trained from now on, by kind, with the flow's tasks run by one thread here
    (one at a time: threads share torch's global RNG, which seeds each model, and a model built while
    another thread loads one with from_pretrained sometimes comes out with untied embeddings)."""
    monkeypatch.setattr("flows.sweep.training_pool", lambda execution, device: None)
    monkeypatch.setattr("flows.sweep.dask_runner", lambda execution, device: ThreadPoolTaskRunner(1))
    calls: list[str] = []
    for name in ("train_trunk", "train_cell"):
        real = getattr(train, name)
        monkeypatch.setattr(
            train, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k)
        )
    return calls


def test_a_wsd_sweep_branches_its_cells_from_one_trunk_per_size_and_reruns_cached(
    prefect_server, trainings, tmp_path
):
    store = tmp_path / "store"
    smoke = PRESETS["smoke"]
    spec = smoke.model_copy(
        update={
            "grid": GridSpec(model_sizes=[3000, 8000], tokens=[8192, 24576]),
            "train": smoke.train.model_copy(update={"schedule": "wsd"}),
            "execution": smoke.execution.model_copy(update={"store": str(store)}),
        }
    )
    scaling_sweep(spec)
    assert sorted(trainings) == ["train_cell"] * 4 + ["train_trunk"] * 2
    runs = runs_by_cell(store, "schedule, trunk_id, branch_tokens, tokens_seen, params_target, val_loss_nats")
    assert len(runs) == 4 and {row[0] for row in runs.values()} == {"wsd"}
    trunks = {path.parent.name: path for path in store.glob(f"trunks/*/{COMPLETE_MARKER}")}
    for size in (3000, 8000):
        cells = [row for row in runs.values() if row[4] == size]
        assert len({row[1] for row in cells}) == 1 and cells[0][1] in trunks  # one trunk per size
        assert all(0.7 * tokens < branch < tokens for _, _, branch, tokens, _, _ in cells)
    for trunk in trunks.values():
        assert len(list(trunk.parent.glob("step-*.pt"))) == 2  # a snapshot per branch point
    (earliest,) = Store(store).read_table("cells", next(iter(runs)), "curve.parquet").slice(0, 1).to_pylist()
    assert earliest["tokens_seen"] < min(row[2] for row in runs.values())  # the trunk's steps are in it

    before, trunk_marked = finished_at(store), {t: p.stat().st_mtime_ns for t, p in trunks.items()}
    trainings.clear()
    scaling_sweep(spec)
    assert trainings == [] and finished_at(store) == before

    victim = max(runs, key=lambda cell: runs[cell][3])
    shutil.rmtree(store / "cells" / victim)
    scaling_sweep(spec)
    assert trainings == ["train_cell"]  # its trunk is complete: not trained again
    assert {t: p.stat().st_mtime_ns for t, p in trunks.items()} == trunk_marked
    after = finished_at(store)
    assert [cell for cell in before if after[cell] != before[cell]] == [victim]
    assert runs_by_cell(store, "val_loss_nats")[victim] == (runs[victim][5],)  # the same numbers again
