"""The scaling sweep: corpus → vocabulary → tokens → one training per grid cell → laws → report."""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import queue
import re
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
from prefect.futures import PrefectFuture
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner

from flows.plan import (
    cell_plans,
    corpus_params,
    fit_params,
    grid_params,
    report_params,
    sweep_id,
    tokens_params,
    vocab_params,
)
from flows.spec import PRESETS, ExecutionSpec, SweepSpec
from flows.status import grid_artifact_rows
from storage.store import Store
from tasks import steps
from tasks.identity import reusable, step_fingerprint

ProgressCallback = Callable[[int, int, dict[str, Any]], None]
_progress_listeners: list[ProgressCallback] = []


def add_progress_listener(listener: ProgressCallback) -> None:
    """Called with (cells done, cells in total, the finished cell's record) as cells finish."""
    _progress_listeners.append(listener)


def remove_progress_listener(listener: ProgressCallback) -> None:
    _progress_listeners.remove(listener)


# Prefect writes a failed run's exception to its result storage, as a pickle unless told otherwise; as
# JSON it keeps the type and message. A finished run's result is not written: the store holds it.
FLOW_RESULTS: dict[str, Any] = {"persist_result": False, "result_serializer": "json"}


class CellsFailed(RuntimeError):
    """Raised at the end of a sweep whose cells did not all finish; names them."""


def start_prefect_api() -> None:
    """Start this process's temporary Prefect server (when no server is configured) before any flow,
    one process at a time: two servers that create a new database at once both fail ("index ...
    already exists"), so two sweeps started together would otherwise crash."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        return
    settings.home.mkdir(parents=True, exist_ok=True)
    with open(settings.home / "scalelaw-server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with get_client(sync_client=True) as client:
            client.api_healthcheck()


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
    return step.with_options(refresh_cache=not _reusable(step, params))(**params)


def _reusable(step: Any, params: dict[str, Any]) -> bool:
    fp = step_fingerprint(step.name, params)
    return reusable(Store(params["store"]).marker(step.name, fp))


@flow(name="scaling-sweep", **FLOW_RESULTS)
def scaling_sweep(spec: SweepSpec = PRESETS["default"]) -> dict[str, Any]:
    """Train every cell of the grid on the spec's corpus and fit scaling laws to the results."""
    store = Store(spec.execution.store).location
    corpus = run_step(steps.prepare_corpus, **corpus_params(spec, store))
    vocab = run_step(steps.build_vocab, **vocab_params(spec, store, corpus["fp"]))
    tokens = run_step(steps.tokenize, **tokens_params(store, corpus["fp"], vocab["fp"]))
    plans = cell_plans(spec, vocab["vocab_size"], tokens["train_tokens"], tokens["val_tokens"])
    grid, trunks = grid_params(spec, store, tokens["fp"], vocab["fp"], plans)
    runner = task_runner(spec.execution)
    with _api_shared_with_workers():
        cells = train_grid.with_options(task_runner=runner)(grid, trunks)
    cell_ids = sorted(cell["cell_id"] for cell in cells)
    sweep = steps.record_sweep(store, sweep_id(spec), spec.name, cell_ids)
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
    fits = run_step(steps.fit_laws, **fit_params(store, cell_ids, **fit_options))
    report = run_step(steps.write_report, **report_params(store, sweep_name, cell_ids, fits["fp"]))
    from tasks.report import with_inline_images  # matplotlib: only once there is a report to publish

    report_store = Store(store)
    create_markdown_artifact(
        with_inline_images(report["markdown"], report_store.local("reports", report["fp"])),
        key=artifact_key("report", sweep_name),
        description="Scaling-law report",
    )
    folder = report_store.url("reports", report["fp"])
    link = Path(folder).as_uri() if report_store.is_local else folder
    create_link_artifact(link, link_text=f"{folder} (report and plots)", key="report-files")
    return fits, report


def artifact_key(prefix: str, sweep_name: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from a sweep name such as 'lr-0.01'."""
    return re.sub(r"[^a-z0-9-]", "-", f"{prefix}-{sweep_name.lower()}")


@flow(name="train-grid", **FLOW_RESULTS)
def train_grid(grid: list[dict], trunks: list[dict] | None = None) -> list[dict]:
    """Every cell in its own worker process; cells already complete come back from the cache.

    A WSD cell is submitted once the trunk it branches from is done (so no worker waits idle on a
    trunk); only the trunks of cells still to train are run, and a complete trunk is not retrained.
    """
    progress = create_progress_artifact(0.0, description="Grid cells finished")
    results: dict[str, dict] = {}
    to_train: dict[str | None, list[dict]] = {}  # by the fingerprint of their trunk (None: no trunk)
    for params in grid:
        fp = _cell_fp(params)
        if reusable(Store(params["store"]).marker("cells", fp)):
            results[fp] = steps.train_grid_cell(**params)
        else:
            to_train.setdefault(params["trunk_fp"], []).append(params)
    count = sum(len(cells) for cells in to_train.values())
    get_run_logger().info("%d cells complete, %d to train", len(results), count)
    _report_progress(grid, results, progress, None, {})
    with _workers_killed_when_stopped():
        submitted = {_cell_fp(params): _submit_cell(params) for params in to_train.pop(None, [])}
        trunk_futures = [
            _submit_trunk(trunk)
            for trunk in trunks or []
            if step_fingerprint(steps.train_grid_trunk.name, trunk) in to_train
        ]
        for trunk in _as_finished(trunk_futures):
            submitted |= {
                _cell_fp(params): _submit_cell(params, trunk) for params in to_train[trunk.result()["fp"]]
            }
        for future in _as_finished(list(submitted.values())):
            record = future.result()
            results[record["cell_id"]] = record
            _report_progress(grid, results, progress, record, submitted)
    return list(results.values())


@contextlib.contextmanager
def _workers_killed_when_stopped() -> Iterator[None]:
    """A sweep stopped while cells train (SIGTERM, which Prefect raises as TerminationSignal, or
    Ctrl-C) kills its local worker processes at once; the pool would otherwise finish every running
    cell before the flow ends. A killed cell continues from its last checkpoint on the next run."""
    try:
        yield
    except BaseException:
        for worker in multiprocessing.active_children():
            worker.kill()
        raise


def _as_finished(futures: list[PrefectFuture]) -> Iterator[PrefectFuture]:
    """The futures as they finish, waking every second: Python runs signal handlers (SIGTERM, Ctrl-C)
    in the main thread, and a signal that the kernel gave another thread reaches it only when it wakes."""
    finished: queue.SimpleQueue[PrefectFuture] = queue.SimpleQueue()
    for future in futures:
        future.add_done_callback(finished.put)
    for _ in futures:
        while True:
            try:
                future = finished.get(timeout=1.0)
            except queue.Empty:
                continue
            yield future
            break


def _cell_fp(params: dict) -> str:
    return step_fingerprint(steps.train_grid_cell.name, params)


def _submit_trunk(params: dict) -> PrefectFuture:
    """Train a trunk in a worker; Prefect's cache may answer only when its artifact is complete."""
    step = steps.train_grid_trunk
    return step.with_options(refresh_cache=not _reusable(step, params)).submit(**params)


def _submit_cell(params: dict, trunk: PrefectFuture | None = None) -> PrefectFuture:
    """Train a cell in a worker; `trunk`, done by now, is named so that the UI draws the edge."""
    return steps.train_grid_cell.with_options(refresh_cache=True).submit(
        **params, wait_for=[trunk] if trunk else None
    )


def _report_progress(
    grid: list[dict],
    results: dict[str, dict],
    progress_id: Any,
    last: dict | None,
    submitted: dict[str, PrefectFuture],
) -> None:
    """The UI's progress bar and N x D status table (with the cells training now), and the CLI's
    listeners."""
    update_progress_artifact(progress_id, 100.0 * len(results) / len(grid))
    running = {fp for fp, future in submitted.items() if fp not in results and future.state.is_running()}
    create_table_artifact(
        grid_artifact_rows(grid, results, running), key="grid-status", description="Cells by N and D"
    )
    for listener in _progress_listeners:
        listener(len(results), len(grid), last)
