"""The Prefect UI's path end to end: a real server on a free loopback port, the project's deployments
served by `scalelaw serve`, the sweep triggered through the API twice (the second time all cached)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SMOKE_CELLS, cli_env, runs_by_cell

from deployments.serve import NIGHTLY_CRON, prefect_server
from flows.spec import PRESETS
from tasks.plots import PLOTS

pytestmark = pytest.mark.e2e

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# The browser and its driver, each looked up on PATH as .ci/run looks them up (Debian packages them as
# chromium and chromium-driver); the UI test is skipped, naming the one missing, without either.
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
MISSING = [name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if path is None]
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "ui-flow-run.png"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A Prefect server with its own new database, and `scalelaw serve` against it; both stopped
    afterwards, also on failure."""
    tmp_path = tmp_path_factory.mktemp("served")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "server-home"))
    env = cli_env(own_server=True)
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
            yield {"api_url": api_url, "home": tmp_path}
        finally:
            server.terminate()
            server.wait(timeout=30)
            monkeypatch.undo()


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


@pytest.fixture(scope="module")
def first_run(served):
    """The sweep deployment triggered through the API with the smoke preset, run to completion."""
    store = served["home"] / "store"
    spec = PRESETS["smoke"].model_dump(mode="json")
    spec["execution"]["store"] = str(store)
    with client_for(served["api_url"]) as client:
        sweep = wait_for_deployment(client, "scaling-sweep/sweep")
        flow_run = run_and_wait(client, sweep.id, {"spec": spec})
    return {"deployment": sweep, "flow_run": flow_run, "spec": spec, "store": store}


def test_the_deployments_exist_and_the_nightly_schedule_is_off(served):
    with client_for(served["api_url"]) as client:
        nightly = wait_for_deployment(client, "scaling-sweep/resume-nightly")
        assert [s.schedule.cron for s in nightly.schedules] == [NIGHTLY_CRON]
        assert not nightly.schedules[0].active
        wait_for_deployment(client, "refit-sweep/refit")
        wait_for_deployment(client, "suggest-cells/suggest")


def test_sweep_deployment_runs_from_the_api_and_reruns_cached(served, first_run):
    assert first_run["flow_run"].state.type.value == "COMPLETED", first_run["flow_run"].state
    assert len(runs_by_cell(first_run["store"], "status")) == SMOKE_CELLS
    with client_for(served["api_url"]) as client:
        assert cached_cell_runs(client) == 0
        second = run_and_wait(client, first_run["deployment"].id, {"spec": first_run["spec"]})
        assert second.state.type.value == "COMPLETED", second.state
        assert cached_cell_runs(client) == SMOKE_CELLS


@pytest.mark.skipif(
    bool(MISSING), reason=f"no {' or '.join(MISSING)} on PATH (.ci/run installs chromium and chromium-driver)"
)
def test_the_ui_shows_the_report_artifact_and_its_plots(served, first_run):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={served['home'] / 'chromium-profile'}")
    browser = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        ui = served["api_url"].removesuffix("/api")
        browser.get(f"{ui}/runs/flow-run/{first_run['flow_run'].id}")
        WebDriverWait(browser, 60).until(lambda b: "scaling-sweep" in b.page_source)
        tab = WebDriverWait(browser, 30).until(
            lambda b: next(
                (e for e in b.find_elements(By.XPATH, "//*[not(*) and normalize-space(.)='Artifacts']")), None
            )
        )
        tab.click()
        WebDriverWait(browser, 60).until(lambda b: "report-smoke" in b.page_source)
        SCREENSHOT.parent.mkdir(exist_ok=True)
        browser.save_screenshot(str(SCREENSHOT))
        assert SCREENSHOT.stat().st_size > 10_000
        browser.find_element(By.XPATH, "//*[not(*) and normalize-space(.)='report-smoke']").click()
        plots = WebDriverWait(browser, 60).until(
            lambda b: [
                i for i in b.find_elements(By.TAG_NAME, "img") if i.get_attribute("src").startswith("data:")
            ]
        )
        assert len(plots) == len(PLOTS) and all(plot.size["width"] > 100 for plot in plots)
    finally:
        browser.quit()
