"""Shared fixtures: a small corpus the tests write themselves, and a CLI runner in a subprocess."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

WORDS = (
    "the nation congress people state government year war peace law public united country great power "
    "time world policy citizens economy trade union freedom future treaty labor industry justice duty"
).split()


def make_documents(count: int, words_per_doc: int = 120, seed: int = 0) -> list[str]:
    """Deterministic pseudo-English documents, distinct from one another."""
    import random

    rng = random.Random(seed)
    return [
        f"Document {i}. " + " ".join(rng.choice(WORDS) for _ in range(words_per_doc)) + "."
        for i in range(count)
    ]


@pytest.fixture
def text_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i, text in enumerate(make_documents(30)):
        (folder / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
    return folder


# One Prefect home (database, result files) for the whole session: a fresh one per test would
# migrate a new database each time. Under pytest-xdist each worker process imports this module and so
# gets a home and a database of its own (for the temporary servers of the CLI runs that start one): no
# two workers write one SQLite file. The shared server below keeps its database in the controller's.
PREFECT_HOME = tempfile.mkdtemp(prefix="scalelaw-tests-prefect-")
# Removed at exit, after the shared server (registered later, so stopped first) has closed its database.
atexit.register(shutil.rmtree, PREFECT_HOME, ignore_errors=True)
# Flows that tests run in this process keep their database and results there too, give Prefect's
# temporary server a busy machine's time to start, and keep Prefect's console log quiet as the CLI does.
# Prefect never starts a temporary server of its own here: one started to send the last logs as the
# session ends outlives it. Prefect reads these once, on import; conftest is imported before any test
# module.
os.environ.update(
    PREFECT_HOME=PREFECT_HOME,
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90",
    PREFECT_SERVER_ALLOW_EPHEMERAL_MODE="false",
    PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="CRITICAL",
)
os.environ.pop("PREFECT_API_URL", None)


_shared_server = contextlib.ExitStack()
_shared_api_url: list[str] = []
# The server that xdist's controller starts for its workers, passed to them in their environment.
WORKERS_API_URL = "SCALELAW_TESTS_API_URL"


def shared_api_url() -> str:
    """One real Prefect server on the loopback address for the whole session, started on first use and
    stopped at exit: flows that tests run report to it instead of each starting a temporary server
    (about 15 s apiece). The smoke sweep alone runs as a user without a server does. Under xdist the
    controller's server serves every worker."""
    if not _shared_api_url:
        from deployments.serve import prefect_server
        from flows.api import wait_healthy

        if url := os.environ.get(WORKERS_API_URL):
            wait_healthy(url)
            _shared_api_url.append(url)
        else:
            _shared_api_url.append(_shared_server.enter_context(prefect_server()))
            atexit.register(_shared_server.close)
    return _shared_api_url[0]


_starting_server: list[threading.Thread] = []


def pytest_configure(config) -> None:
    """xdist's controller starts the workers' server while they start and collect: one server, not one
    per worker, ready by the time a test needs it. Nothing reads the server's state across tests."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        from deployments.serve import prefect_server
        from flows.api import free_port

        port = free_port()
        os.environ[WORKERS_API_URL] = f"http://127.0.0.1:{port}/api"
        server = prefect_server(port=port)
        _starting_server.append(threading.Thread(target=_shared_server.enter_context, args=(server,)))
        _starting_server[0].start()


def pytest_unconfigure(config) -> None:
    for thread in _starting_server:
        thread.join()
    _shared_server.close()


def cli_env(own_server: bool = False) -> dict[str, str]:
    """The CLI's environment; `own_server`: no Prefect server configured, as on a fresh machine."""
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=PREFECT_HOME,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_OFFLINE="1",
    )
    env.pop("PREFECT_API_URL", None)
    if not own_server:
        env["PREFECT_API_URL"] = shared_api_url()
    env.pop("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", None)  # the CLI's own choice, as for a user (-v)
    return env


def run_cli(
    args: list[str], tmp_path: Path, timeout: float = 300, own_server: bool = False
) -> subprocess.CompletedProcess[str]:
    """`scalelaw ARGS` as a user runs it: a fresh process, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=tmp_path,
        env=cli_env(own_server),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def shared_server_here() -> Iterator[None]:
    """Flows run in this process report to the session's server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: shared_api_url()}):
        yield


@pytest.fixture
def scalelaw_here(capsys) -> Iterator[Callable[[list[str]], tuple[int, str, str]]]:
    """`scalelaw ARGS` in this process, for work that trains nothing: (exit status, stdout, stderr).
    The environment defaults and SIGTERM handler that `main` sets for a terminal are put back after."""
    import signal

    from flows import cli

    environ, sigterm = dict(os.environ), signal.getsignal(signal.SIGTERM)

    def scalelaw(args: list[str]) -> tuple[int, str, str]:
        try:
            with shared_server_here():
                status = cli.main(args)
        except SystemExit as exit:  # argparse refuses a malformed option itself
            status = exit.code
        printed = capsys.readouterr()
        return status, printed.out, printed.err

    yield scalelaw
    for name in set(os.environ) - set(environ):
        del os.environ[name]
    os.environ.update(environ)
    signal.signal(signal.SIGTERM, sigterm)


@pytest.fixture(scope="session")
def s3_location(tmp_path_factory) -> Iterator[str]:
    """A bucket on a real S3-compatible server (moto) on the loopback address; credentials and the
    endpoint come from the environment, as they would for a real bucket, and reach CLI subprocesses."""
    moto_server = pytest.importorskip("moto.server", reason="the S3 tests need the test extras (moto)")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    environment = {
        "AWS_ACCESS_KEY_ID": "scalelaw-test",
        "AWS_SECRET_ACCESS_KEY": "scalelaw-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "SCALELAW_CACHE": str(tmp_path_factory.mktemp("s3-cache")),
    }
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    import fsspec

    fsspec.filesystem("s3", skip_instance_cache=True).mkdir("scalelaw-tests")
    try:
        yield "s3://scalelaw-tests"
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


def write_smoke_spec(path: Path, **sections: dict) -> Path:
    """The smoke preset with fields changed (`section={field: value}`), as a YAML file."""
    import yaml

    from flows.spec import PRESETS

    data = PRESETS["smoke"].model_dump(mode="json")
    for section, changes in sections.items():
        data[section] |= changes
    path.write_text(yaml.safe_dump(data))
    return path


SMOKE_CELLS = 9


@pytest.fixture(scope="session")
def smoke(tmp_path_factory) -> dict:
    """One uninterrupted smoke sweep through the CLI, shared by the tests that read it."""
    import time

    home = tmp_path_factory.mktemp("smoke")
    store = home / "store"
    started = time.perf_counter()
    result = run_cli(["run", "--preset", "smoke", "--store", str(store)], home, own_server=True)
    assert result.returncode == 0, result.stdout + result.stderr
    seconds = time.perf_counter() - started
    return {"home": home, "store": store, "seconds": seconds, "output": result.stdout, "err": result.stderr}


# Test files whose tests share state run on one xdist worker, so that it is built once: the smoke sweep
# (a session fixture that some tests change, in order), the served deployments (module fixtures) and the
# bad-input rows' tally. Every other test goes to whichever worker is free. (xdist's own `--dist
# loadgroup` does nothing under pytest 9.2: it renames items through an attribute pytest no longer reads.)
GROUPS = {
    "test_pipeline.py": "smoke",
    "test_resume.py": "smoke",
    "test_security.py": "smoke",
    "test_engines.py": "smoke",
    "test_deployments.py": "served",
    "test_bad_inputs.py": "bad inputs",
}
SHARED_FIXTURES = ("smoke", "served")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class SharedStateScheduling(LoadScopeScheduling):
        """Each group of GROUPS one unit of work; the largest units are handed out first."""

        def _split_scope(self, nodeid: str) -> str:
            return GROUPS.get(Path(nodeid.split("::", 1)[0]).name, nodeid)

    return SharedStateScheduling(config, log)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test that uses a shared fixture outside its group would build it again on another worker."""
    for fixture in SHARED_FIXTURES:
        if fixture in item.fixturenames and GROUPS.get(item.path.name) != fixture:
            pytest.fail(f"{item.nodeid} uses {fixture}: put {item.path.name} in its group in GROUPS")


def runs_by_cell(store: Path, columns: str) -> dict[str, tuple]:
    from storage.catalog import open_catalog
    from storage.store import Store

    rows = open_catalog(Store(store)).execute(f"select cell_id, {columns} from runs").fetchall()
    return {row[0]: row[1:] for row in rows}


def finished_at(store: Path) -> dict[str, object]:
    return {cell: values[0] for cell, values in runs_by_cell(store, "finished_at").items()}


# Figures that tests report (bad inputs refused, writer kills survived), printed after the run. A test
# report carries them, so that they reach the process that prints the summary from xdist's workers.
FIGURES: dict[str, str] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if FIGURES:
        report.figures = dict(FIGURES)
    return report


def pytest_runtest_logreport(report) -> None:
    FIGURES.update(getattr(report, "figures", {}))


def pytest_terminal_summary(terminalreporter) -> None:
    if FIGURES:
        terminalreporter.section("figures")
        for line in FIGURES.values():
            terminalreporter.write_line(line)
