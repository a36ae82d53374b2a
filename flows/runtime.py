"""The process plumbing a sweep runs in: the API shared with worker processes, progress listeners,
the training processes started ahead of their flow, workers killed on stop, a queue that submits the
most expensive jobs first and waits on them in a signal-friendly way, the process that shares the
fits and plots with the flow's, and one GPU per worker. Plain
functions, classes and context managers; the flows in flows/sweep.py use them and hold no plumbing of
their own."""

from __future__ import annotations

import contextlib
import heapq
import importlib
import itertools
import multiprocessing
import os
import queue
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any

from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from tasks.steps import analyse_with, analysis_helper, train_in

ProgressCallback = Callable[[int, int, dict[str, Any] | None], None]
_progress_listeners: list[ProgressCallback] = []


def add_progress_listener(listener: ProgressCallback) -> None:
    """Called with (cells done, cells in total, the finished cell's record) as cells finish."""
    _progress_listeners.append(listener)


def remove_progress_listener(listener: ProgressCallback) -> None:
    _progress_listeners.remove(listener)


def notify_progress(done: int, total: int, last: dict[str, Any] | None) -> None:
    """Tell every listener how many cells are done; `last`: the cell that just finished (None: none)."""
    for listener in _progress_listeners:
        listener(done, total, last)


@contextlib.contextmanager
def api_shared_with_workers() -> Iterator[None]:
    """Dask's workers, which run the cells' tasks, report to this run's API; without this each would
    start a temporary server of its own."""
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


class TrainingPool(Executor):
    """The local worker processes that train a sweep's trunks and cells, started before the flow that
    trains in them: started while Prefect's server starts and the sweep prepares its data, they are
    ready by the time the first cell is submitted. Given `modules`, its workers fork from a server
    process that imported them once (torch and transformers: about 4 s of a core), instead of each
    importing them anew. While entered it is the training pool of tasks/steps.py (`train_in`): each
    trunk's and cell's task runs in this process, on a thread, and only its training runs in a worker.
    Entered a second time (by the flow, after the CLI), it is left at the first exit."""

    def __init__(
        self,
        workers: int,
        modules: Sequence[str] = (),
        initializer: Callable[..., None] | None = None,
        initargs: tuple = (),
    ) -> None:
        self.workers, self.modules = workers, tuple(modules)
        self.initializer, self.initargs = initializer, initargs
        self.executor: ProcessPoolExecutor | None = None
        self.workers_started = False
        self.starting: threading.Thread | None = None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        if self.executor is None:
            raise RuntimeError("the training pool is not running")
        return self.executor.submit(fn, *args, **kwargs)

    def __enter__(self) -> TrainingPool:
        if self.executor is None:
            self.executor = ProcessPoolExecutor(
                self.workers, mp_context=self._context(), initializer=self.initializer, initargs=self.initargs
            )
            train_in(self)
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        if self.executor is None:
            return
        if self.starting is not None:
            self.starting.join()
            self.starting = None
        train_in(None)
        # every job done: the idle workers exit on their own (a second or two of tearing down torch)
        # while the flow goes on to its fits, instead of the flow waiting for them
        self.executor.shutdown(wait=exc_type is not None, cancel_futures=True)
        self.executor = None

    def start_workers(self, preload: Callable[[], None]) -> None:
        """Start every worker on `preload` (which imports what the work needs), once: the executor
        starts a process for each job that finds no idle worker. From a thread: the first process
        waits for the fork server to import `modules` (seconds), and the caller need not."""
        if self.executor is None or self.workers_started:
            return
        self.workers_started = True
        self.starting = threading.Thread(
            target=_submit_each,
            args=(self.executor, preload, self.workers),
            name="workers-start",
            daemon=True,
        )
        self.starting.start()

    def task_runner(self) -> TaskRunner:
        """The task runner of the flow that trains in this pool: threads of this process, one more
        than the workers, so that the next job waits in the pool's queue as a worker finishes."""
        return ThreadPoolTaskRunner(max_workers=self.workers + 1)

    def _context(self) -> multiprocessing.context.BaseContext:
        """Forked from multiprocessing's fork server, which imports `modules` as it starts (with the
        first worker): it starts fresh, like a spawned process, and forking from it is safe as it has
        run nothing but those imports. Without modules (CUDA workers), spawned."""
        if not self.modules:
            return multiprocessing.get_context("spawn")
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(self.modules))
        return context


ANALYSIS_MODULE = "tasks.plots"  # and with it tasks.fits, tasks.laws and matplotlib


def start_analysis_helper(pool: TrainingPool) -> None:
    """Start, once, a process that does about half of the sweep's fits and plots beside the flow's
    (tasks/steps.py `analyse_with`), forked from the training pool's fork server: started when a
    worker has nothing left to train, it imports the analysis modules on that idle core while the
    last cells train. Not for a pool whose workers are spawned (CUDA): a fresh process would import
    everything anew and cost more than it saves."""
    if analysis_helper() is not None or not pool.modules:
        return
    helper = ProcessPoolExecutor(
        1, mp_context=pool._context(), initializer=importlib.import_module, initargs=(ANALYSIS_MODULE,)
    )
    helper.submit(int)  # a job that does nothing, so that the process starts now
    analyse_with(helper)


@contextlib.contextmanager
def analysis_helper_stopped() -> Iterator[None]:
    """On leaving, the analysis helper (if `start_analysis_helper` started one) stops."""
    try:
        yield
    finally:
        helper = analysis_helper()
        analyse_with(None)
        if helper is not None:
            helper.shutdown(wait=False, cancel_futures=True)


def _submit_each(executor: ProcessPoolExecutor, job: Callable[[], None], workers: int) -> None:
    # a pool that cannot start its processes says so to the flow's first submit, where it is reported
    with contextlib.suppress(Exception):
        for _ in range(workers):
            executor.submit(job)


@contextlib.contextmanager
def workers_started_early(pool: TrainingPool | None, preload: Callable[[], None] | None) -> Iterator[None]:
    """A training pool's workers start now (unless they have), on `preload` (None: they start with
    the first job, if any), while the caller goes on; the flow that trains then enters the running
    pool and leaves it (or this does, should the caller fail before). None: nothing to start."""
    if pool is None:
        yield
        return
    with pool:
        if preload is not None:
            pool.start_workers(preload)
        yield


@contextlib.contextmanager
def workers_killed_when_stopped() -> Iterator[None]:
    """A sweep stopped while cells train (SIGTERM, which Prefect raises as TerminationSignal, or
    Ctrl-C) kills its local worker processes at once; the pool would otherwise finish every running
    cell before the flow ends. A killed cell continues from its last checkpoint on the next run."""
    try:
        yield
    except BaseException:
        for worker in multiprocessing.active_children():
            worker.kill()
        raise


class CostOrderedQueue:
    """Jobs submitted most expensive first, no more than `in_flight` of them submitted and unfinished
    (None: all at once), so that the cheapest jobs come last and no worker waits idle at the end while
    another finishes a long one. A queue one deeper than the workers keeps every worker busy."""

    def __init__(self, in_flight: int | None) -> None:
        self.in_flight = in_flight
        self.waiting: list[tuple[float, int, Hashable, Callable[[], PrefectFuture]]] = []
        self.added = itertools.count()  # ties go in the order they came
        self.futures: dict[Hashable, PrefectFuture] = {}  # those submitted, by the job's key
        self.running: dict[PrefectFuture, Hashable] = {}
        self.done: queue.SimpleQueue[PrefectFuture] = queue.SimpleQueue()

    def add(self, key: Hashable, cost: float, submit: Callable[[], PrefectFuture]) -> None:
        """A job, named by `key`, that `submit()` submits."""
        heapq.heappush(self.waiting, (-cost, next(self.added), key, submit))
        self._submit_what_fits()

    def finished(self) -> Iterator[tuple[Hashable, PrefectFuture]]:
        """(key, future) of each job as it finishes, until every job added (also while iterating) is
        done; waking every second, since Python runs signal handlers (SIGTERM, Ctrl-C) in the main
        thread and a signal that the kernel gave another thread reaches it only when it wakes."""
        while self.running:
            try:
                future = self.done.get(timeout=1.0)
            except queue.Empty:
                continue
            yield self.running.pop(future), future
            self._submit_what_fits()

    def _submit_what_fits(self) -> None:
        while self.waiting and (self.in_flight is None or len(self.running) < self.in_flight):
            *_, key, submit = heapq.heappop(self.waiting)
            future = self.futures[key] = submit()
            self.running[future] = key
            future.add_done_callback(self.done.put)


def local_gpu_workers(workers: int, device: str) -> tuple[Callable[..., None], tuple] | None:
    """For a local pool whose cells train on CUDA: the pool's worker initializer and its arguments, which
    give each worker process one GPU of its own as its CUDA_VISIBLE_DEVICES (tasks.device plans them).
    None when cells train on the CPU (or 'auto' finds no GPU here)."""
    # A machine without the NVIDIA driver has no CUDA GPU: 'auto' knows that without importing torch,
    # which the flow's process otherwise never needs (its workers still lease a GPU each, tasks.device)
    if device == "cpu" or (device == "auto" and not os.path.exists("/proc/driver/nvidia/gpus")):
        return None
    import torch

    from tasks.device import gpus_for_workers, resolve_device, visible_gpus, worker_gpu_plan

    if resolve_device(device).type != "cuda":  # 'cuda' on a machine without one: its one-sentence error
        return None
    gpus = visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count())
    return gpus_for_workers(worker_gpu_plan(workers, gpus))


def gpu_request(plan: dict[str, Any]) -> contextlib.AbstractContextManager:
    """Around a cell's (or trunk's) submission: on Dask, a cell that trains on CUDA requests one `GPU`
    resource, so that a worker started with `--resources GPU=1` trains one cell at a time."""
    runner = FlowRunContext.get().task_runner
    if plan["device"] != "cuda" or type(runner).__name__ != "DaskTaskRunner":
        return contextlib.nullcontext()
    import dask

    return dask.annotate(resources={"GPU": 1})
