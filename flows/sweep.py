"""The scaling sweep: corpus → vocabulary → tokens → one training per grid cell → laws → report."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.orchestration import get_client
from prefect.futures import as_completed
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner

from flows.plan import cell_params, cell_plans, corpus_params, tokens_params, vocab_params
from flows.spec import PRESETS, ExecutionSpec, SweepSpec
from flows.status import grid_artifact_rows
from storage.store import Store, fingerprint
from tasks import steps

ProgressCallback = Callable[[int, int, dict[str, Any]], None]
_progress_listeners: list[ProgressCallback] = []


def add_progress_listener(listener: ProgressCallback) -> None:
    """Called with (cells done, cells in total, the finished cell's record) as cells finish."""
    _progress_listeners.append(listener)


def remove_progress_listener(listener: ProgressCallback) -> None:
    _progress_listeners.remove(listener)


class CellsFailed(RuntimeError):
    """Raised at the end of a sweep whose cells did not all finish; names them."""


@contextlib.contextmanager
def _api_shared_with_workers() -> Iterator[None]:
    """Worker processes report to this run's API; without this each would start a temporary server."""
    previous = os.environ.get("PREFECT_API_URL")
    with get_client(sync_client=True) as client:
        os.environ["PREFECT_API_URL"] = str(client.api_url)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


def task_runner(execution: ExecutionSpec) -> TaskRunner:
    """The engine that trains the cells: never more trainings at once than workers."""
    if execution.engine == "processes":
        return ProcessPoolTaskRunner(max_workers=execution.workers)
    from prefect_dask import DaskTaskRunner

    if execution.dask_address:
        return DaskTaskRunner(address=execution.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": execution.workers, "threads_per_worker": 1, "processes": True}
    )


def run_step(step: Any, **params: Any) -> dict[str, Any]:
    """Call a cached step, refreshing Prefect's cache when the artifact itself is missing."""
    fp = steps.step_fingerprint(step.name, params)
    refresh = not steps.reusable(Store(params["store"]).marker(step.name, fp))
    return step.with_options(refresh_cache=refresh)(**params)


@flow(name="scaling-sweep")
def scaling_sweep(spec: SweepSpec = PRESETS["default"]) -> dict[str, Any]:
    """Train every cell of the grid on the spec's corpus and fit scaling laws to the results."""
    store = str(Store(spec.execution.store).root)
    corpus = run_step(steps.prepare_corpus, **corpus_params(spec, store))
    vocab = run_step(steps.build_vocab, **vocab_params(spec, store, corpus["fp"]))
    tokens = run_step(steps.tokenize, **tokens_params(store, corpus["fp"], vocab["fp"]))
    plans = cell_plans(spec, vocab["vocab_size"], tokens["train_tokens"], tokens["val_tokens"])
    grid = [cell_params(spec, store, tokens["fp"], vocab["fp"], plan) for plan in plans]
    runner = task_runner(spec.execution)
    with _api_shared_with_workers():
        cells = train_grid.with_options(task_runner=runner)(grid)
    cell_ids = sorted(cell["cell_id"] for cell in cells)
    sweep = steps.record_sweep(
        store, fingerprint("sweep", spec.model_dump(exclude={"execution"})), spec.name, cell_ids
    )
    fits, report = fit_and_report(store, spec.name, cell_ids, **spec.fit.model_dump())
    failed = [cell for cell in cells if cell["status"] != "ok"]
    summary = {"sweep_id": sweep, "store": store, "cells": cells, "fits": fits, "report": report["path"]}
    if failed:
        names = ", ".join(f"{c['cell_id']} ({c['status']}: {c['error']})" for c in failed)
        raise CellsFailed(f"{len(failed)} of {len(cells)} cells did not finish: {names}")
    return summary


def fit_and_report(
    store: str, sweep_name: str, cell_ids: list[str], **fit_options: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit every law form to the cells, render the report, and publish it as a Prefect artifact.

    `fit_options` are the fields of the spec's FitSpec.
    """
    fits = run_step(steps.fit_laws, store=store, cell_ids=cell_ids, **fit_options)
    report = run_step(
        steps.write_report, store=store, sweep_name=sweep_name, cell_ids=cell_ids, fits_fp=fits["fp"]
    )
    from tasks.report import with_inline_images  # matplotlib: only once there is a report to publish

    report_path = Path(report["path"])
    create_markdown_artifact(
        with_inline_images(report["markdown"], report_path.parent),
        key=f"report-{sweep_name.lower()}",
        description="Scaling-law report",
    )
    create_link_artifact(
        report_path.parent.as_uri(), link_text=f"{report_path.parent} (report and plots)", key="report-files"
    )
    return fits, report


@flow(name="train-grid")
def train_grid(grid: list[dict]) -> list[dict]:
    """Every cell in its own worker process; cells already complete come back from the cache."""
    progress = create_progress_artifact(0.0, description="Grid cells finished")
    results: dict[str, dict] = {}
    pending = []
    for params in grid:
        fp = steps.step_fingerprint(steps.train_grid_cell.name, params)
        if steps.reusable(Store(params["store"]).marker("cells", fp)):
            results[fp] = steps.train_grid_cell(**params)
        else:
            pending.append(steps.train_grid_cell.with_options(refresh_cache=True).submit(**params))
    get_run_logger().info("%d cells complete, %d to train", len(results), len(pending))
    _report_progress(grid, results, progress, None)
    for future in as_completed(pending):
        record = future.result()
        results[record["cell_id"]] = record
        _report_progress(grid, results, progress, record)
    return list(results.values())


def _report_progress(grid: list[dict], results: dict[str, dict], progress_id: Any, last: dict | None) -> None:
    """The UI's progress bar and N x D status table, and the CLI's listeners."""
    update_progress_artifact(progress_id, 100.0 * len(results) / len(grid))
    create_table_artifact(
        grid_artifact_rows(grid, results), key="grid-status", description="Cells by N and D"
    )
    for listener in _progress_listeners:
        listener(len(results), len(grid), last)
