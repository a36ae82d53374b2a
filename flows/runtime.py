"""The process plumbing a sweep runs in: the API shared with worker processes, progress listeners,
a process pool started ahead of its flow, workers killed on stop, a queue that submits the most
expensive jobs first and waits on them in a signal-friendly way, and one GPU per worker. Plain
functions, classes and context managers; the flows in flows/sweep.py use them and hold no plumbing of
their own."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import multiprocessing
import os
import queue
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner

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


class EarlyProcessPool(ProcessPoolTaskRunner):
    """Prefect's process pool, whose workers can start before the flow that trains in them: started
    while Prefect's server starts and the sweep prepares its data, they are ready by the time the
    first cell is submitted. Given `modules`, its workers fork from a server process that imported
    them once (torch and transformers: about 4 s of a core), instead of each importing them anew as
    Prefect's spawned workers do. Prefect enters a flow's task runner through `duplicate()`, which
    here is the pool itself, already running; leaving it a second time does nothing."""

    def __init__(self, max_workers: int, modules: Sequence[str] = (), **options: Any) -> None:
        super().__init__(max_workers=max_workers, **options)
        self.workers, self.modules, self.options = max_workers, tuple(modules), options
        self.entered = self.workers_started = False
        self.starting: threading.Thread | None = None

    def __reduce__(self) -> tuple:
        # the flow that runs in the pool names it, and each task takes the flow along: as a pool not
        # started (a running one holds a queue that only its own workers may have)
        return (_unstarted_pool, (self.workers, self.modules, self.options))

    def duplicate(self) -> EarlyProcessPool:
        return self

    def __enter__(self) -> EarlyProcessPool:
        if not self.entered:
            super().__enter__()
            self.entered = True
            spawning = getattr(self, "_executor", None)  # Prefect's; without it, its workers as they are
            if spawning is not None and self.modules:
                self._executor = _forked_from_preloaded(spawning, self.modules)
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        if not self.entered:
            return
        self.entered = False
        if self.starting is not None:
            self.starting.join()
            self.starting = None
        if exc_type is None and getattr(self, "_executor", None) is not None:
            # every task is done: the idle workers exit on their own (a second or two of tearing down
            # torch) while the flow goes on to its fits, instead of the flow waiting for them
            self._executor.shutdown(wait=False)
            self._executor = None
        super().__exit__(exc_type, *exc_info)

    def start_workers(self, preload: Callable[[], None]) -> None:
        """Start every worker on `preload` (which imports what the work needs), once: the executor
        starts a process for each job that finds no idle worker. From a thread: the first process
        waits for the fork server to import `modules` (seconds), and the caller need not."""
        executor = getattr(self, "_executor", None)  # Prefect's; without it the workers start lazily
        if executor is None or self.workers_started:
            return
        self.workers_started = True
        self.starting = threading.Thread(
            target=_submit_each, args=(executor, preload, self.workers), name="workers-start", daemon=True
        )
        self.starting.start()


def _submit_each(executor: ProcessPoolExecutor, job: Callable[[], None], workers: int) -> None:
    # a pool that cannot start its processes says so to the flow's first submit, where it is reported
    with contextlib.suppress(Exception):
        for _ in range(workers):
            executor.submit(job)


def _unstarted_pool(workers: int, modules: tuple[str, ...], options: dict[str, Any]) -> EarlyProcessPool:
    return EarlyProcessPool(workers, modules, **options)


def _forked_from_preloaded(spawning: ProcessPoolExecutor, modules: Sequence[str]) -> ProcessPoolExecutor:
    """`spawning`, a pool that has started no process yet, as a pool of the same size and initializer
    whose processes fork from multiprocessing's fork server, which imports `modules` when it starts
    (with the first worker). The fork server itself starts fresh, like a spawned process; forking
    from it is safe as it has run nothing but those imports."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(modules))
    spawning.shutdown()
    return ProcessPoolExecutor(
        spawning._max_workers,
        mp_context=context,
        initializer=spawning._initializer,
        initargs=spawning._initargs,
    )


@contextlib.contextmanager
def workers_started_early(runner: TaskRunner, preload: Callable[[], None] | None) -> Iterator[None]:
    """A local process pool's workers start now (unless they have), on `preload` (None: they start
    with the first task, if any), while the caller goes on; the flow that trains then enters the
    running pool and leaves it (or this does, should the caller fail before). Other runners start
    with the flow that uses them."""
    if not isinstance(runner, EarlyProcessPool):
        yield
        return
    with runner:
        if preload is not None:
            runner.start_workers(preload)
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
