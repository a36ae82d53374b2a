"""The plumbing a sweep runs in: Prefect's temporary server started in the background, and a process
pool whose workers start before the flow that uses them."""

from __future__ import annotations

import ast
import logging
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from conftest import cli_env, shared_api_url, shared_server_here
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run
from prefect.settings import PREFECT_HOME, get_current_settings, temporary_settings

from flows.api import API_NAMED, early_server, is_healthy, prefect_api
from flows.runtime import CostOrderedQueue, TrainingPool
from tasks import steps
from tasks.artifacts import LOGGER, with_log


@flow
def this_flow_run_id() -> str:
    return flow_run.id


def wait_for(condition, timeout_seconds: float = 60) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def worker_pid(params: dict) -> dict:
    return {"pid": os.getpid(), "params": params}


def logs_and_fails_once(params: dict) -> dict:
    LOGGER.info("cell %s trained", params["cell"])
    try:
        raise ValueError("loss is nan")
    except ValueError:
        LOGGER.exception("cell %s failed", params["cell"])
    return {"status": "failed"}


def test_what_a_training_logs_comes_back_and_is_logged_by_its_task(tmp_path, caplog):
    """Catches a training's log lines (its failure's traceback among them) lost on the way back from
    its worker: Prefect's logger is not there to send them, so the task logs them again."""
    record, lines = with_log(logs_and_fails_once, {"cell": 7})
    assert record == {"status": "failed"}
    assert lines[0] == (logging.INFO, "cell 7 trained")
    level, failure = lines[1]
    assert level == logging.ERROR and "Traceback" in failure and "ValueError: loss is nan" in failure
    with caplog.at_level(logging.INFO):
        steps._trained("cells", logs_and_fails_once, {"store": str(tmp_path), "cell": 8})
    relogged = [record.getMessage() for record in caplog.records if record.name == steps.__name__]
    assert relogged[0] == "cell 8 trained" and "ValueError: loss is nan" in relogged[1]


@task
def trained_pid(params: dict) -> dict:
    return {"task_pid": os.getpid(), **steps._trained("cells", worker_pid, params)}


@flow
def pids_of_trainings(store: str, count: int) -> list[dict]:
    return [
        future.result() for future in [trained_pid.submit({"store": store, "cell": n}) for n in range(count)]
    ]


def test_a_flow_trains_in_the_workers_started_before_it_and_runs_its_tasks_itself(tmp_path):
    """Catches a pool that starts new workers for the flow, trainings run where their task runs (in
    the flow's process, or with Prefect's engine in the workers again), arguments or results lost on
    the way, and a pool whose workers outlive it."""
    pool = TrainingPool(2)
    with shared_server_here(), pool:  # as the sweep starts its workers
        pool.start_workers(os.getpid)
        wait_for(lambda: len(multiprocessing.active_children()) >= 2)
        started = {process.pid for process in multiprocessing.active_children()}
        records = pids_of_trainings.with_options(task_runner=pool.task_runner())(str(tmp_path), 4)
        with pool:  # as the flow enters the pool the CLI started, and leaves it first
            pass
        assert steps.current_training_pool() is None, "the first exit leaves the pool"
    assert {record["pid"] for record in records} <= started
    assert {record["task_pid"] for record in records} == {os.getpid()}, "the tasks ran in the workers"
    assert [record["params"]["cell"] for record in records] == list(range(4))
    assert steps._trained("cells", worker_pid, {"store": str(tmp_path)})["pid"] == os.getpid(), (
        "without a pool, training runs here"
    )
    wait_for(lambda: not multiprocessing.active_children())


# In a fresh interpreter, since multiprocessing starts one fork server per process (with the first
# pool's modules); `wave`: a standard module that neither the worker nor Prefect imports otherwise
PRELOADED_WORKER = """
import os, sys

def worker(flow_pid: int) -> tuple[bool, bool, bool]:
    return "wave" in sys.modules, os.getppid() != flow_pid, "prefect" in sys.modules

if __name__ == "__main__":
    from flows.runtime import TrainingPool

    with TrainingPool(1, ["wave"]) as pool:
        print(pool.submit(worker, os.getpid()).result())
"""


def test_the_pools_workers_fork_from_a_process_that_imported_its_modules(tmp_path):
    """Catches workers that each import the training modules anew (spawned workers: about 4 s of a
    core each, on both cores at the start of a sweep) instead of forking from one process that
    imported them once, a fork server that does not import the modules it is given, and one that
    imports Prefect, which a worker no longer needs (0.85 s of a core at the sweep's start)."""
    script = tmp_path / "preloaded.py"
    script.write_text(PRELOADED_WORKER)
    command = [sys.executable, str(script)]
    done = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    imported, forked, prefect_imported = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert imported, "the worker started with the pool's modules imported"
    assert forked, "the worker is a child of the fork server, not of the flow's process"
    assert not prefect_imported, "the worker imported Prefect"


def test_what_a_worker_imports_to_train_leaves_prefect_out():
    """Catches a training module that imports Prefect (tasks.steps, say): the fork server would import
    it for the workers, about 0.85 s of a core at the sweep's start, and no worker needs it."""
    script = "import sys\nfrom tasks.model import preload_training\npreload_training()\n"
    script += "print(sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'flows'}))"
    done = subprocess.run(
        [sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]"]


def test_without_a_configured_server_flows_report_to_a_temporary_one(tmp_path):
    """Catches a flow that starts Prefect's own temporary server instead (this process's settings not
    pointing at ours), a server that a fresh PREFECT_HOME does not bring up, and one left running; and
    flows that send heartbeats to it (each flow's end would wait for its heartbeat thread)."""
    with temporary_settings({PREFECT_HOME: str(tmp_path)}), prefect_api() as api:
        api_url = os.environ["PREFECT_API_URL"]
        assert get_current_settings().flows.heartbeat_frequency is None
        api.wait_ready()
        run_id = this_flow_run_id()
        with get_client(sync_client=True) as client:
            assert str(client.api_url).rstrip("/") == api_url
            assert client.read_flow_run(run_id).state.is_completed()
    assert "PREFECT_API_URL" not in os.environ
    wait_for(lambda: not is_healthy(api_url), timeout_seconds=30)


def test_with_a_configured_server_nothing_is_started():
    with shared_server_here(), prefect_api() as api:
        assert api.server is None


def test_a_server_started_before_the_settings_are_read_gives_way_to_an_api_they_name(tmp_path, monkeypatch):
    """Catches the server that the CLI starts before it imports Prefect staying up, or creating a
    database, when Prefect's profile names an API after all; and `prefect_api` keeping it."""
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(f'active = "named"\n[profiles.named]\nPREFECT_API_URL = "{shared_api_url()}"\n')
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(profiles))
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    early = early_server()
    assert early.process.wait(timeout=60) == API_NAMED
    assert not (tmp_path / "home" / "prefect.db").exists()
    early = early_server()
    with shared_server_here(), prefect_api(early) as api:
        assert api.server is None
    early.process.wait(timeout=60)  # stopped, or exited on its own


# how long each job runs, far enough apart that the order they finish in is certain
SECONDS = {"small": 0.02, "large": 0.3, "medium": 1.0, "late": 0.05, "tiny": 0.02}


def test_jobs_go_most_expensive_first_and_no_more_than_allowed_at_once():
    """Catches a queue that submits in the order jobs came (the longest job last, a worker idle while
    it trains), one that floods the workers (the order then is the executor's, first come first
    served), and one that loses a job added while others run (a trunk's cells)."""
    submitted: list[str] = []
    running, most_running = set(), [0]
    with ThreadPoolExecutor(4) as executor:

        def job(name: str) -> Callable[[], Future]:
            def submit() -> Future:
                submitted.append(name)
                running.add(name)
                most_running[0] = max(most_running[0], len(running))
                return executor.submit(time.sleep, SECONDS[name])

            return submit

        jobs = CostOrderedQueue(in_flight=2)
        for name, cost in [("small", 1.0), ("large", 9.0), ("medium", 5.0), ("tiny", 0.5)]:
            jobs.add(name, cost, job(name))
        finished = []
        for name, _ in jobs.finished():
            running.discard(name)
            finished.append(name)
            if name == "large":  # done while medium runs: late, dearer than tiny, goes before it
                jobs.add("late", 7.0, job("late"))
    assert submitted == ["small", "large", "medium", "late", "tiny"]
    assert most_running[0] == 2
    assert sorted(finished) == sorted(submitted)
