"""Prefect's API for the flows a command runs: the configured server, or a temporary one.

Without a configured server Prefect would start its own temporary server at the first API call, in the
flow's critical path: importing the server's code into this process (about 3 s), creating the
database on a fresh PREFECT_HOME, registering every block type. `prefect_api` starts the same server
(uvicorn on Prefect's app, UI off, busy requests replayed: flows/server_app.py) as a subprocess at
once, so that it comes up while this process imports the flow's code, without the block registration
(its UI is off and nothing here uses blocks), and makes it the API of this process and of the
processes it starts (a local Dask cluster's workers run the cells' tasks). The CLI starts it sooner
still (`early_server`), before it imports Prefect."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

HEALTH_TIMEOUT_SECONDS = 120
# Prefect's app served by uvicorn, as Prefect starts its own temporary server (busy requests replayed)
UVICORN = [sys.executable, "-m", "uvicorn", "--factory", "flows.server_app:create_app"]
UVICORN += ["--host", "127.0.0.1", "--log-level", "error", "--lifespan", "on"]
PORT_TAKEN = 3  # uvicorn's exit status when the port was taken after it was chosen
API_NAMED = 4  # the server's exit status when Prefect's settings name an API (flows/server_app.py)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def is_healthy(api_url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(f"{api_url}/health", timeout=2) as answer:
        return answer.status == 200
    return False


def wait_healthy(
    api_url: str, timeout_seconds: float = HEALTH_TIMEOUT_SECONDS, server: subprocess.Popen | None = None
) -> None:
    """Poll the server's health endpoint until it answers (no fixed sleeps); `server`: its process,
    whose exit ends the wait with the reason."""
    deadline = time.monotonic() + timeout_seconds
    while not is_healthy(api_url):
        status = None if server is None else server.poll()
        if status is not None:  # not restarted elsewhere: the workers know this URL already
            why = " (its port was taken meanwhile: run again)" if status == PORT_TAKEN else ""
            raise RuntimeError(f"Prefect's server at {api_url} exited with status {status}{why}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the Prefect server at {api_url} did not answer in {timeout_seconds:.0f} s")
        time.sleep(0.1)


class TemporaryServer:
    """Prefect's server on a free loopback port, started by `start` and stopped by `stop`; its app
    (flows/server_app.py) takes PREFECT_HOME from the settings in `settings_env` or the environment,
    and exits at once should they name an API."""

    def __init__(self, settings_env: dict[str, str]) -> None:
        self.env = {
            **os.environ,
            **settings_env,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",  # Prefect's temporary-server mode: its few services only
            "PREFECT__SERVER_FINAL": "1",
            "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
            # else, to tell whether blocks need registering, Prefect's lifespan imports every installed
            # collection first (prefect-dask: dask's distributed), 0.2-0.3 s of the server's start
            "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no telemetry from a throwaway server
        }
        self.process: subprocess.Popen | None = None
        self.api_url = ""

    def start(self) -> TemporaryServer:
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}/api"
        self.process = subprocess.Popen(
            [*UVICORN, "--port", str(port)],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        return self

    def wait_ready(self) -> None:
        """Return once the server answers."""
        wait_healthy(self.api_url, server=self.process)

    def stop(self) -> None:
        """Ask the server to stop, without waiting for it: it finishes writing what it was sent and
        exits on its own."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()


def early_server() -> TemporaryServer | None:
    """A temporary server started before this process imports Prefect (0.6 s sooner), unless the
    environment names an API; give it to `prefect_api`, which stops it should Prefect's profile name
    one (the server itself exits then, before it opens a database)."""
    return None if os.environ.get("PREFECT_API_URL") else TemporaryServer({}).start()


class Api:
    """What `prefect_api` yields: `wait_ready()` returns once the API answers."""

    def __init__(self, server: TemporaryServer | None) -> None:
        self.server = server

    def wait_ready(self) -> None:
        if self.server is not None:
            self.server.wait_ready()


@contextlib.contextmanager
def prefect_api(early: TemporaryServer | None = None) -> Iterator[Api]:
    """The configured Prefect API, or a temporary server (`early`, from `early_server`, else one
    started now in the background), stopped at the end; PREFECT_API_URL names it for this process and
    the processes it starts meanwhile. Call the yielded `wait_ready()` before the first flow."""
    import prefect.context
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        get_current_settings,
        temporary_settings,
    )

    settings = get_current_settings()
    if settings.api.url:
        if early is not None:
            early.stop()
        yield Api(None)
        return
    server = early or TemporaryServer(settings.to_environment_variables(exclude_unset=True)).start()
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    # Prefect read its settings on import: its threads read the global ones, this thread its own
    prefect.context.refresh_global_settings_context()
    try:
        # no flow-run heartbeats: they tell a lasting server of crashed runs, and a flow's end waits
        # up to a second for its heartbeat thread
        with temporary_settings({PREFECT_API_URL: server.api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield Api(server)
    finally:
        _drain_prefect_clients()
        server.stop()
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        prefect.context.refresh_global_settings_context()


def _drain_prefect_clients() -> None:
    """Send the logs and events still queued in this process before the server goes."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(RuntimeError):
            worker.drain_all(timeout=5)
