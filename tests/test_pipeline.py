"""The smoke sweep end to end through the real CLI: Prefect's temporary server, worker processes,
real training, Parquet read back through DuckDB, and resume from the store."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import SMOKE_CELLS, cli_env, finished_at, run_cli

from flows.plan import sweep_plan
from flows.spec import load_spec, validate_spec
from flows.status import stored_plan, trains_cells
from flows.sweep import data_steps_meanwhile
from storage.catalog import open_catalog
from storage.store import COMPLETE_MARKER, Store


def _smoke_spec_into(store: Path):
    data = load_spec("smoke").model_dump()
    data["execution"]["store"] = str(store)
    return validate_spec(data)


def test_every_cell_is_ok_in_the_runs_table(smoke):
    result = run_cli(
        [
            "query",
            "--store",
            str(smoke["store"]),
            "--format",
            "json",
            "select count(*) as n from runs where status = 'ok'",
        ],
        smoke["home"],
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"n": SMOKE_CELLS}]
    print(f"smoke sweep, first run: {smoke['seconds']:.1f} s")


def test_runs_hold_sizes_losses_and_timings(smoke):
    con = open_catalog(Store(smoke["store"]))
    rows = con.execute(
        "select params_nonembedding, params_total, tokens_seen, flops_6nd, val_loss_nats,"
        " val_bits_per_byte, val_perplexity, tokens_per_second, epochs from runs"
    ).fetchall()
    assert len(rows) == SMOKE_CELLS
    for n, n_total, d, c, loss, bpb, ppl, tps, epochs in rows:
        assert n_total > n > 0 and c == pytest.approx(6 * n * d)
        assert 0 < loss < 7 and 0 < bpb < 5 and ppl > 1 and tps > 0 and epochs <= 1
    assert con.execute("select count(distinct cell_id) from curves").fetchone()[0] == SMOKE_CELLS
    forms = {
        r[0] for r in con.execute("select distinct form from fits where parameter is not null").fetchall()
    }
    assert {"chinchilla", "multiplicative_reduced"} <= forms
    assert con.execute("select count(*) from sweeps where sweep_name = 'smoke'").fetchone()[0] == SMOKE_CELLS


def test_the_cli_prints_the_fitted_law_and_the_report_exists(smoke):
    assert "chinchilla" in smoke["output"] and "L(N, D) =" in smoke["output"]
    (report,) = Path(smoke["store"]).glob("reports/*/report.md")
    assert "## Fitted laws" in report.read_text()
    assert all(
        (report.parent / name).stat().st_size > 1000 for name in ("loss_vs_N.png", "compute_optimal.png")
    )


def test_the_terminal_shows_our_progress_and_no_progress_bar_of_the_workers(smoke):
    terminal = smoke["output"] + smoke["err"]
    bar = [line for line in terminal.splitlines() if line.startswith("cells ")]
    assert bar and f" {SMOKE_CELLS}/{SMOKE_CELLS} " in bar[-1], terminal
    for workers_bar in ("Writing model shards", "Loading weights"):
        assert workers_bar not in terminal, terminal


def test_any_cell_loads_with_from_pretrained_and_generates(smoke):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = next(Path(smoke["store"]).glob("cells/*/model"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    output = model.generate(
        **tokenizer("Fellow citizens", return_tensors="pt"), max_new_tokens=4, do_sample=False
    )
    assert output.shape[1] > 2


def test_a_second_run_trains_nothing_and_is_much_faster(smoke):
    before = finished_at(smoke["store"])
    started = time.perf_counter()
    result = run_cli(["run", "--preset", "smoke", "--store", str(smoke["store"])], smoke["home"])
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    assert "complete in the store: nothing to run" in result.stdout
    assert "chinchilla" in result.stdout and "report:" in result.stdout  # the same summary as the first
    assert finished_at(smoke["store"]) == before
    print(f"smoke sweep, second run: {seconds:.1f} s against {smoke['seconds']:.1f} s")
    assert seconds < 0.25 * smoke["seconds"]


def test_a_deleted_cell_is_trained_again_instead_of_returned_from_the_cache(smoke):
    before = finished_at(smoke["store"])
    victim = sorted(before)[0]
    shutil.rmtree(Store(smoke["store"]).local("cells", victim))
    result = run_cli(["run", "--preset", "smoke", "--store", str(smoke["store"])], smoke["home"])
    assert result.returncode == 0, result.stderr
    after = finished_at(smoke["store"])
    assert set(after) == set(before)
    assert [c for c in before if after[c] != before[c]] == [victim]


def test_status_shows_the_grid_done(smoke):
    result = run_cli(["status", "--preset", "smoke", "--store", str(smoke["store"])], smoke["home"])
    assert result.returncode == 0, result.stderr
    assert f"{SMOKE_CELLS} of {SMOKE_CELLS} cells done" in result.stdout


def test_the_verdict_distrusts_the_smoke_law_and_the_check_views_are_queryable(smoke):
    assert "verdict: Not to be trusted" in smoke["output"]
    con = open_catalog(Store(smoke["store"]))
    columns = {
        view: {row[0] for row in con.execute(f"describe {view}").fetchall()}
        for view in ("isoflop", "extrapolation")
    }
    assert {
        "budget_flops",
        "cells",
        "n_opt",
        "n_opt_ci_low",
        "n_opt_ci_high",
        "loss_at_opt",
        "interior",
    } <= columns["isoflop"]
    assert {"cell_id", "observed_loss", "predicted_loss", "relative_error"} <= columns["extrapolation"]
    # a product grid holds out its largest-compute quarter, counted as the fit counts compute
    held_out = con.execute(
        "select count(*), min(e.flops) from extrapolation e join runs r using (cell_id)"
        " where e.flops = r.flops_6nd"
    ).fetchone()
    assert held_out[0] == 3
    assert con.execute("select count(*) from runs where flops_6nd >= ?", [held_out[1]]).fetchone()[0] == 3
    rules = {
        row[0] for row in con.execute("select rule from verdict where severity = 'untrusted'").fetchall()
    }
    assert "N_span" in rules  # 3k to 20k parameters: under a decade
    assert con.execute("select distinct target from fits").fetchall() == [("nats",)]


def test_workers_start_ahead_only_for_a_run_with_cells_to_train(smoke, tmp_path):
    """Catches a rerun that trains nothing (its cells done, a fit option changed) starting workers
    anyway, which would import torch on both cores beside the fits, and a fresh store that is taken
    for a finished one."""
    assert not trains_cells(_smoke_spec_into(smoke["store"]))
    assert trains_cells(_smoke_spec_into(tmp_path / "empty"))


def test_a_rerun_that_only_fits_starts_no_worker_processes(smoke, tmp_path):
    """Catches the flow starting the pool's workers (each importing torch on a core beside the fits)
    for a run whose cells are all done, as it did before the CLI's check reached the flow."""
    store = tmp_path / "store"
    shutil.copytree(smoke["store"], store)
    for kind in ("fits", "reports"):
        shutil.rmtree(store / kind)
    assert not trains_cells(_smoke_spec_into(store)), "the copy's cells are all done"
    command = [sys.executable, "-m", "flows.cli", "run", "--preset", "smoke", "--store", str(store)]
    errors = tmp_path / "stderr.txt"
    with errors.open("w") as stderr:
        cli = psutil.Popen(command, cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=stderr)
        workers: set[int] = set()  # the pool's fork server and workers (not the resource tracker)
        while cli.poll() is None:
            with contextlib.suppress(psutil.Error):
                children = cli.children(recursive=True)
                workers |= {child.pid for child in children if "forkserver" in " ".join(child.cmdline())}
            time.sleep(0.05)
    assert cli.returncode == 0, errors.read_text()
    assert list(store.glob("reports/*/report.md")), "the rerun wrote the report"
    assert not workers, f"{len(workers)} worker processes started"


def test_the_data_steps_run_while_the_caller_waits(tmp_path):
    """Catches the CLI's wait for Prefect's server leaving the data steps to the flow, after it."""
    spec = _smoke_spec_into(tmp_path / "store")
    with data_steps_meanwhile(spec):
        deadline = time.monotonic() + 120
        while not list((tmp_path / "store").glob(f"tokens/*/{COMPLETE_MARKER}")):
            assert time.monotonic() < deadline, "the data steps did not finish while waiting"
            time.sleep(0.05)
    assert stored_plan(spec).known, "corpus, vocabulary and tokens are complete in the store"


def test_the_flow_takes_each_data_step_once_the_thread_is_past_it(tmp_path):
    """Catches the flow's task for a data step starting while the thread still builds it: it would
    build the same artifact a second time, at the same time."""
    spec = _smoke_spec_into(tmp_path / "store")
    tokens = sweep_plan(spec, str(tmp_path / "store")).step("tokens")
    with data_steps_meanwhile(spec) as steps_ahead:
        steps_ahead.wait_past(tokens)
        assert Store(str(tmp_path / "store")).marker("tokens", tokens.fp), "published before the wait ends"


def test_the_analysis_modules_load_in_a_thread_while_the_last_cells_train(tmp_path):
    """Catches a module missing from the ones loaded ahead of the report (the thread would die on
    it), and a list that leaves matplotlib to load after the last cell."""
    script = (
        "import sys\nfrom flows.sweep import analysis_imported_meanwhile\n"
        "analysis_imported_meanwhile().join()\n"
        "print(all(m in sys.modules for m in ('matplotlib.backends.backend_agg', 'tasks.report')))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["True"] and not done.stderr, done.stderr


def test_no_data_step_begins_after_the_wait(tmp_path):
    """Catches data steps that go on in the background once the flow has started: the flow's own
    tasks would then build the same artifacts at the same time."""
    spec = _smoke_spec_into(tmp_path / "store")
    with data_steps_meanwhile(spec):
        pass  # the server answered at once: the corpus step, if it began, finishes; nothing after it
    assert not [thread for thread in threading.enumerate() if thread.name == "data-steps"], "joined"
    assert not list((tmp_path / "store").glob(f"vocab/*/{COMPLETE_MARKER}"))
    assert not stored_plan(spec).known
