"""The project's deployments, and `scalelaw serve`: a Prefect server on 127.0.0.1 serving them.

- `scaling-sweep/sweep`: the sweep; its one parameter, the spec, is a form with the default preset filled in.
- `refit-sweep/refit`: re-fit the newest stored sweep (and redraw its report) without training.
- `suggest-cells/suggest`: propose the cells that most narrow the sweep's N_opt interval within a FLOP
  budget (a table artifact, and the spec that extends the sweep); with rounds > 0 also train them.
- `scaling-sweep/resume-nightly`: every night at 03:00 re-run the default spec, which trains only the
  cells that are missing or failed and refreshes the fit and the report. Its schedule is created
  inactive: switch it on in the UI (Deployments → resume-nightly → schedule toggle).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from flows.api import free_port, wait_healthy
from flows.refit import refit_sweep
from flows.spec import PRESETS
from flows.suggest import suggest_cells
from flows.sweep import scaling_sweep

NIGHTLY_CRON = "0 3 * * *"


def project_deployments() -> list[RunnerDeployment]:
    default = {"spec": PRESETS["default"].model_dump(mode="json")}
    return [
        scaling_sweep.to_deployment(
            name="sweep", parameters=default, description="Train the grid and fit scaling laws."
        ),
        refit_sweep.to_deployment(name="refit", description="Re-fit a stored sweep without training."),
        suggest_cells.to_deployment(
            name="suggest",
            parameters=default,
            description="Propose the cells to train next, those that most narrow N_opt's interval per FLOP.",
        ),
        scaling_sweep.to_deployment(
            name="resume-nightly",
            parameters=default,
            schedules=[Cron(NIGHTLY_CRON, active=False)],
            description="Finish missing or failed cells, refresh fit and report (schedule off by default).",
        ),
    ]


@contextlib.contextmanager
def prefect_server(host: str = "127.0.0.1", port: int | None = None) -> Iterator[str]:
    """Start `prefect server start` bound to `host` (loopback by default); yield its API URL; stop it."""
    port = port or free_port(host)
    api_url = f"http://{host}:{port}/api"
    # The UI asks PREFECT_UI_API_URL where the API is; it would default to port 4200.
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_API_URL=api_url)
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(api_url)
        yield api_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def serve_project(host: str = "127.0.0.1", port: int | None = None) -> None:
    """Serve the deployments against the configured Prefect API, or a server started here for it."""
    from prefect import serve
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        print(f"serving on the Prefect API at {PREFECT_API_URL.value()}")
        serve(*project_deployments())
        return
    with prefect_server(host, port) as api_url, temporary_settings({PREFECT_API_URL: api_url}):
        os.environ["PREFECT_API_URL"] = api_url  # flow runs started by the runner report here too
        print(f"Prefect UI: {api_url.removesuffix('/api')}  (Ctrl-C stops the server and the deployments)")
        serve(*project_deployments())
