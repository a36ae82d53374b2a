"""The process plumbing a sweep runs in: Prefect's temporary server, the API shared with worker
processes, progress listeners, workers killed on stop, a signal-friendly wait on futures, and one GPU per
worker. Plain functions and context managers; the flows in flows/sweep.py use them and hold no plumbing
of their own."""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import queue
from collections.abc import Callable, Iterator
from typing import Any

from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture

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


def as_finished(futures: list[PrefectFuture]) -> Iterator[PrefectFuture]:
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
