"""The Prefect UI's path end to end: a real server on a free loopback port, the project's deployments
served by `scalelaw serve`, the sweep triggered through the API twice (the second time all cached)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import SMOKE_CELLS, cli_env, runs_by_cell

from deployments.serve import NIGHTLY_CRON, prefect_server
from flows.spec import PRESETS

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A Prefect server with its own new database, and `scalelaw serve` against it; both stopped
    afterwards, also on failure."""
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "server-home"))
    env = cli_env()
    with prefect_server() as api_url:
        env["PREFECT_API_URL"] = api_url
        server = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield api_url
        finally:
            server.terminate()
            server.wait(timeout=30)


def client_for(api_url: str):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(api_url)


def wait_for_deployment(client, name: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return client.read_deployment_by_name(name)
        except Exception:  # not registered yet
            time.sleep(0.5)
    raise TimeoutError(f"deployment {name} never appeared")


def run_and_wait(client, deployment_id, parameters: dict, timeout: float = 400):
    flow_run = client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flow_run = client.read_flow_run(flow_run.id)
        if flow_run.state and flow_run.state.type.value in FINAL:
            return flow_run
        time.sleep(1)
    raise TimeoutError("the flow run did not finish")


def cached_cell_runs(client) -> int:
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="cells-")))
    return sum(run.state_name == "Cached" for run in runs)


def test_sweep_deployment_runs_from_the_api_and_reruns_cached(served, tmp_path):
    store = tmp_path / "store"
    spec = PRESETS["smoke"].model_dump(mode="json")
    spec["execution"]["store"] = str(store)
    with client_for(served) as client:
        sweep = wait_for_deployment(client, "scaling-sweep/sweep")
        nightly = wait_for_deployment(client, "scaling-sweep/resume-nightly")
        assert [s.schedule.cron for s in nightly.schedules] == [NIGHTLY_CRON]
        assert not nightly.schedules[0].active
        wait_for_deployment(client, "refit-sweep/refit")

        first = run_and_wait(client, sweep.id, {"spec": spec})
        assert first.state.type.value == "COMPLETED", first.state
        assert len(runs_by_cell(store, "status")) == SMOKE_CELLS
        assert cached_cell_runs(client) == 0

        second = run_and_wait(client, sweep.id, {"spec": spec})
        assert second.state.type.value == "COMPLETED", second.state
        assert cached_cell_runs(client) == SMOKE_CELLS
