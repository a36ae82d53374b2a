"""The scaling sweep: corpus → vocabulary → tokens → one training per grid cell → laws → report.

Prefect wiring only: the steps, their parameters and fingerprints come from the plan (flows/plan.py),
the process plumbing from flows/runtime.py."""

from __future__ import annotations

import contextlib
import functools
import importlib
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prefect import Flow, Task, flow, get_run_logger
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner

from flows.plan import Step, analysis_steps, planned, resolved_plan, task_cost
from flows.runtime import (
    CostOrderedQueue,
    TrainingPool,
    analysis_helper_stopped,
    api_shared_with_workers,
    gpu_request,
    local_gpu_workers,
    notify_progress,
    start_analysis_helper,
    workers_killed_when_stopped,
    workers_started_early,
)

# The progress bar imports add/remove_progress_listener from here (re-exported, `x as x`).
from flows.runtime import add_progress_listener as add_progress_listener
from flows.runtime import remove_progress_listener as remove_progress_listener
from flows.spec import PRESETS, ExecutionSpec, SweepSpec
from flows.status import grid_artifact_rows, trains_cells
from storage.store import Store
from tasks import steps
from tasks.identity import reusable, step_fingerprint
from tasks.model import TRAINING_MODULES, preload_training

# Each artifact's task, by the kind it builds (its name): the plan's steps name them so.
STEP_TASKS: dict[str, Task] = {
    task.name: task
    for task in (steps.prepare_corpus, steps.build_vocab, steps.tokenize, steps.fit_laws, steps.write_report)
}

# Prefect writes a failed run's exception to its result storage, as a pickle unless told otherwise; as
# JSON it keeps the type and message. A finished run's result is not written: the store holds it.
FLOW_RESULTS: dict[str, Any] = {"persist_result": False, "result_serializer": "json"}


class CellsFailed(RuntimeError):
    """Raised at the end of a sweep whose cells did not all finish; names them."""


def training_pool(execution: ExecutionSpec, device: str = "cpu") -> TrainingPool | None:
    """The local worker processes that train the cells, never more trainings at once than workers; on
    CUDA, one GPU per worker. None when the cells train on Dask."""
    if execution.engine != "processes":
        return None
    gpus = local_gpu_workers(execution.workers, device)
    initializer, initargs = gpus or (None, ())
    # CUDA workers are spawned: each must see its own GPU, and a process forked after CUDA was
    # initialised (an import may do it) cannot use CUDA
    modules = () if gpus else TRAINING_MODULES
    return TrainingPool(execution.workers, modules, initializer=initializer, initargs=initargs)


def dask_runner(execution: ExecutionSpec, device: str = "cpu") -> TaskRunner:
    """Dask's workers run the cells' tasks and train: a cluster's, or a local cluster's, each of whose
    workers declares one GPU resource on CUDA."""
    from prefect_dask import DaskTaskRunner

    if execution.dask_address:
        return DaskTaskRunner(address=execution.dask_address)
    gpus = local_gpu_workers(execution.workers, device)
    cluster = {"n_workers": execution.workers, "threads_per_worker": 1, "processes": True}
    return DaskTaskRunner(cluster_kwargs=cluster | ({"resources": {"GPU": 1}} if gpus else {}))


def run_step(step: Step) -> dict[str, Any]:
    """Run a planned step's cached task, refreshing Prefect's cache when the artifact itself is missing;
    a data step that the data-steps thread (below) has before it, once that thread is past it."""
    if _data_steps is not None:
        _data_steps.wait_past(step)
    task = STEP_TASKS[step.kind]
    return task.with_options(refresh_cache=not _reusable(step))(**step.params)


def _reusable(step: Step) -> bool:
    return reusable(Store(step.params["store"]).marker(step.kind, step.fp))


@flow(name="scaling-sweep", **FLOW_RESULTS)
def scaling_sweep(spec: SweepSpec = PRESETS["default"]) -> dict[str, Any]:
    """Train every cell of the grid on the spec's corpus and fit scaling laws to the results."""
    store = Store(spec.execution.store).location
    started = steps.current_training_pool()  # the CLI's, started ahead of this flow (early_workers)
    pool = started if isinstance(started, TrainingPool) else training_pool(spec.execution, spec.train.device)
    # the workers start during the data steps (unless the CLI started them), when there is training
    preload = preload_training if (pool and pool.workers_started) or trains_cells(spec) else None
    runner = pool.task_runner() if pool else dask_runner(spec.execution, spec.train.device)
    with analysis_helper_stopped():  # which train_grid starts as the last cells train
        with api_shared_with_workers(), workers_started_early(pool, preload):
            plan = resolved_plan(spec, store, run_step)  # runs the data steps: corpus, vocabulary, tokens
            cells = train_grid.with_options(task_runner=runner)(plan.params("cells"), plan.params("trunks"))
        sweep = steps.record_sweep(**plan.step("sweeps").params)
        fits, report = fit_and_report(store, spec.name, plan.cell_ids, **spec.fit.model_dump())
    failed = [cell for cell in cells if cell["status"] != "ok"]
    summary = {"sweep_id": sweep, "store": store, "cells": cells, "fits": fits, "report": report["path"]}
    if failed:
        names = ", ".join(f"{c['cell_id']} ({c['status']}: {c['error']})" for c in failed)
        raise CellsFailed(f"{len(failed)} of {len(cells)} cells did not finish: {names}")
    return summary


@contextlib.contextmanager
def early_workers(spec: SweepSpec) -> Iterator[None]:
    """The training pool, whose workers start now (while, say, Prefect's server starts), when the spec
    trains in local processes: the sweep's flow, run meanwhile, trains in it."""
    with workers_started_early(training_pool(spec.execution, spec.train.device), preload_training):
        yield


class DataSteps:
    """The spec's data steps (corpus, vocabulary, tokens) run as plain functions in a thread, so that
    they need not wait for Prefect's server; a step that fails there is left to the flow, which
    reports it. `stop()`: the step under way finishes and none begins after it."""

    def __init__(self, spec: SweepSpec) -> None:
        self.spec, self.store = spec, Store(spec.execution.store).location
        self.past: set[tuple[str, str]] = set()  # (kind, fingerprint) of each step built or failed
        self.finished = self.stopping = False
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="data-steps", daemon=True)
        self.thread.start()

    def wait_past(self, step: Step) -> None:
        """Return once the thread has built (or failed) `step`, or stopped before it."""
        with self.changed:
            self.changed.wait_for(lambda: self.finished or (step.kind, step.fp) in self.past)

    def stop(self) -> None:
        self.stopping = True
        self.thread.join()

    def _run(self) -> None:
        with contextlib.suppress(Exception):
            resolved_plan(self.spec, self.store, self._run_step)
        with self.changed:
            self.finished = True
            self.changed.notify_all()

    def _run_step(self, step: Step) -> dict[str, Any] | None:
        if self.stopping:
            return None
        try:
            return STEP_TASKS[step.kind].fn(**step.params)
        finally:
            with self.changed:
                self.past.add((step.kind, step.fp))
                self.changed.notify_all()


_data_steps: DataSteps | None = None  # while a sweep's data steps run ahead of its flow (this process)


@contextlib.contextmanager
def data_steps_meanwhile(spec: SweepSpec) -> Iterator[DataSteps]:
    """The spec's data steps, run ahead of the flow from now on: the flow's cached task for each
    waits until the thread is past it, then finds its artifact complete. On leaving, the step under
    way finishes and none begins after it."""
    global _data_steps
    _data_steps = steps_ahead = DataSteps(spec)
    try:
        yield steps_ahead
    finally:
        _data_steps = None
        steps_ahead.stop()


@contextlib.contextmanager
def sweep_started(spec: SweepSpec, trains: bool, wait_ready: Callable[[], None]) -> Iterator[Flow]:
    """The sweep flow, to call once `wait_ready()` (Prefect's server starting) has returned; `trains`:
    whether the store leaves trunks or cells to train. Then the data steps begin first and the workers
    start (from a thread: the fork server imports torch meanwhile), so that everything shares the
    cores while the server starts; and the flow may begin while the data steps still run, its own
    start (the flow run, its first task runs) overlapping theirs instead of following them."""
    if not trains:
        wait_ready()
        yield scaling_sweep
        return
    with data_steps_meanwhile(spec), early_workers(spec):
        wait_ready()
        yield scaling_sweep


def fit_and_report(
    store: str, sweep_name: str, cell_ids: list[str], **fit_options: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit every law form to the cells, render the report, and publish it as a Prefect artifact.

    `fit_options` are the fields of the spec's FitSpec.
    """
    fit_step, _ = analysis_steps(store, sweep_name, cell_ids, fit_options)
    fits = run_step(fit_step)
    _, report_step = analysis_steps(store, sweep_name, cell_ids, fit_options, fits)
    report = run_step(report_step)
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
    On a local pool, the trunks and cells ready to train go to the workers most expensive first.
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
    pool = steps.current_training_pool()
    workers = pool.workers if isinstance(pool, TrainingPool) else None  # a local pool's
    jobs = CostOrderedQueue(workers + 1 if workers else None)

    def add_cell(params: dict, trunk: PrefectFuture | None = None) -> None:
        submit = functools.partial(_submit_cell, params, trunk)
        jobs.add(("cells", _cell_fp(params)), task_cost("cells", params), submit)

    with workers_killed_when_stopped():
        for params in to_train.pop(None, []):
            add_cell(params)
        for trunk in trunks or []:
            if (fp := step_fingerprint(steps.train_grid_trunk.name, trunk)) in to_train:
                jobs.add(("trunks", fp), task_cost("trunks", trunk), functools.partial(_submit_trunk, trunk))
        for (kind, fp), future in jobs.finished():
            if kind == "trunks":
                future.result()  # a trunk that crashed (not one that failed and says so) stops the sweep
                for params in to_train[fp]:
                    add_cell(params, future)
            else:
                record = future.result()
                results[record["cell_id"]] = record
                cells = {key[1]: future for key, future in jobs.futures.items() if key[0] == "cells"}
                _report_progress(grid, results, progress, record, cells)
            if workers and not jobs.waiting and len(jobs.running) < workers:  # a worker has nothing left
                analysis_imported_meanwhile()
                if jobs.running:  # the helper starts while cells still train, not after the last
                    start_analysis_helper(pool)
    return list(results.values())


@functools.cache
def analysis_imported_meanwhile() -> threading.Thread:
    """Import what the report needs (matplotlib: 0.3 s) in a thread, once: on the core of a worker
    that has nothing left to train, instead of after the last cell. Not scipy.special, which the
    fits import first: with no idle core that race cost the fits more than it saved."""
    modules = ("tasks.verdict", "tasks.report", "matplotlib.backends.backend_agg")
    importer = threading.Thread(target=lambda: [importlib.import_module(m) for m in modules], daemon=True)
    importer.start()
    return importer


def _cell_fp(params: dict) -> str:
    return step_fingerprint(steps.train_grid_cell.name, params)


def _submit_trunk(params: dict) -> PrefectFuture:
    """Train a trunk in a worker; Prefect's cache may answer only when its artifact is complete."""
    step = steps.train_grid_trunk
    with gpu_request(params["plan"]):
        return step.with_options(refresh_cache=not _reusable(planned(step.name, params))).submit(**params)


def _submit_cell(params: dict, trunk: PrefectFuture | None = None) -> PrefectFuture:
    """Train a cell in a worker; `trunk`, done by now, is named so that the UI draws the edge."""
    with gpu_request(params["plan"]):
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
    notify_progress(len(results), len(grid), last)
