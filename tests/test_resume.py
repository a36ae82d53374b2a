"""Sweeps survive failure: a SIGKILLed sweep resumes from its checkpoints to the numbers of an
uninterrupted run, and failed cells are recorded, never stop the others, and alone are retried."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import cli_env, finished_at, run_cli, runs_by_cell, write_smoke_spec


def complete_cells(store: Path) -> set[str]:
    return {p.parent.name for p in store.glob("cells/*/_COMPLETE.json")}


def checkpointed_cells(store: Path) -> set[str]:
    return {p.parent.name.removeprefix("cells-") for p in store.glob(".work/cells-*/checkpoint.pt")}


# Four of the smoke sweep's cells, its longest among them: the same cells, so the same numbers.
KILLED_GRID = {"model_sizes": [3000, 20000], "tokens": [8192, 65536]}


def test_a_killed_sweep_resumes_without_retraining_and_matches_an_uninterrupted_run(smoke, tmp_path):
    store = tmp_path / "store"
    spec = write_smoke_spec(tmp_path / "spec.yaml", grid=KILLED_GRID, execution={"checkpoint_seconds": 0.3})
    command = [sys.executable, "-m", "flows.cli", "run", "--spec", str(spec), "--store", str(store)]
    sweep = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=cli_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        done = complete_cells(store)
        mid_training = checkpointed_cells(store) - done
        if done and mid_training:
            break
        time.sleep(0.05)
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    assert done and mid_training, "the sweep never had a finished cell and a checkpointed one at once"
    finished_before_kill = {c: t for c, t in finished_at(store).items() if c in done}

    result = run_cli(["run", "--spec", str(spec), "--store", str(store)], tmp_path)
    assert result.returncode == 0, result.stderr
    after = runs_by_cell(store, "finished_at, resumed_from_step, val_loss_nats, train_loss_nats")
    assert len(after) == len(KILLED_GRID["model_sizes"]) * len(KILLED_GRID["tokens"])
    assert {c: after[c][0] for c in finished_before_kill} == finished_before_kill  # not retrained
    assert all(after[c][1] > 0 for c in mid_training), "the interrupted cell restarted from scratch"
    uninterrupted = runs_by_cell(smoke["store"], "val_loss_nats, train_loss_nats")
    assert set(after) <= set(uninterrupted), "the cells are not the smoke sweep's"
    assert {c: v[2:] for c, v in after.items()} == {c: uninterrupted[c] for c in after}
    assert not checkpointed_cells(store), "checkpoints of finished cells are cleaned up"
    print(
        f"killed with {len(done)} cells done and {len(mid_training)} mid-training; resumed to equal numbers"
    )


def test_a_rerun_removes_the_work_folder_a_kill_left_beside_a_finished_cell(smoke, tmp_path):
    """Killed after it published a cell and before it removed that cell's work folder, a sweep left the
    folder and its checkpoint behind; the next run that trains finds the cell complete and removes
    them (seen once in test_a_killed_sweep_resumes..., whose kill can land in that moment)."""
    store = tmp_path / "store"
    shutil.copytree(smoke["store"], store)
    finished, *_, to_train = sorted(complete_cells(store))
    shutil.rmtree(store / "cells" / to_train)  # so that the rerun runs the grid's flow
    leftover = store / ".work" / f"cells-{finished}"
    leftover.mkdir(parents=True)
    (leftover / "checkpoint.pt").write_bytes(b"a checkpoint")
    assert checkpointed_cells(store)

    result = run_cli(["run", "--preset", "smoke", "--store", str(store)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not leftover.exists() and not checkpointed_cells(store)


def test_a_diverging_cell_is_recorded_and_alone_retried(tmp_path):
    store = tmp_path / "store"
    spec = write_smoke_spec(
        tmp_path / "spec.yaml",
        grid={"model_sizes": [3000, 8000], "tokens": [8192]},
        train={"lr_by_size": {3000: 20.0}},
        fit={"bootstrap": 0},
        execution={"workers": 1},  # two tiny cells: one worker process to start, not two
    )
    first = run_cli(["run", "--spec", str(spec), "--store", str(store)], tmp_path)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "1 of 2 cells did not finish" in first.stderr and "diverged" in first.stderr
    status = runs_by_cell(store, "status, params_target, diverged_step, finished_at")
    assert sorted(v[0] for v in status.values()) == ["diverged", "ok"]
    assert all(v[1] == 3000 and v[2] is not None for v in status.values() if v[0] == "diverged")

    second = run_cli(["run", "--spec", str(spec), "--store", str(store)], tmp_path)
    assert second.returncode == 1
    again = runs_by_cell(store, "status, params_target, diverged_step, finished_at")
    retried = {c for c in status if again[c][3] != status[c][3]}
    assert retried == {c for c, v in status.items() if v[0] == "diverged"}


def test_sigterm_stops_the_sweep_and_its_workers_at_once(tmp_path):
    store = tmp_path / "store"
    spec = write_smoke_spec(
        tmp_path / "spec.yaml",
        grid={"model_sizes": [8000], "tokens": [300_000]},
        execution={"checkpoint_seconds": 0.3},
    )
    command = [sys.executable, "-m", "flows.cli", "run", "--spec", str(spec), "--store", str(store)]
    sweep = subprocess.Popen(command, cwd=tmp_path, env=cli_env(), start_new_session=True)
    deadline = time.monotonic() + 120
    while not checkpointed_cells(store) and sweep.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpointed_cells(store), "the cell never wrote a checkpoint"
    sweep.send_signal(signal.SIGTERM)
    assert sweep.wait(timeout=30) == 128 + signal.SIGTERM
    stopped = time.monotonic()
    while time.monotonic() - stopped < 15:
        try:
            os.killpg(sweep.pid, 0)  # anything of the sweep (workers, temporary server) still alive?
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("worker or server processes outlived the sweep by 15 s")
    assert not complete_cells(store), "the cell was trained to the end instead of stopped"
