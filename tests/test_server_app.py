"""The temporary server's app replays requests that found the database busy, and holds its start
lock until it has started (flows/server_app.py).

A Starlette app stands in for Prefect's: its routes are mounted under /api, as Prefect's are (routing
writes into the scope), and its handler of every exception answers a busy error with 503, after which
Starlette raises the error again, as it does with Prefect's answer to a busy SQLite database."""

from __future__ import annotations

import contextlib
import fcntl

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from flows.server_app import BUSY, REPLAYS, BusyRequestsReplayed, UnlockedOnceStarted


class Busy(Exception):
    pass


def counting_app(busy_answers: int, error: type[Exception] = Busy) -> tuple[Starlette, list[bytes]]:
    """An app whose POST /api/echo raises `error` for its first `busy_answers` requests, then echoes the
    body; the list holds the body each run of the endpoint received."""
    bodies: list[bytes] = []

    async def echo(request: Request) -> JSONResponse:
        bodies.append(await request.body())
        if len(bodies) <= busy_answers:
            raise error("database is locked")
        return JSONResponse({"body": bodies[-1].decode()})

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"exception_message": type(exc).__name__}, status_code=BUSY if isinstance(exc, Busy) else 500
        )

    routes = [Mount("/api", routes=[Route("/echo", echo, methods=["POST"])])]
    return Starlette(routes=routes, exception_handlers={Exception: internal_error}), bodies


def test_a_busy_request_runs_again_with_its_body_until_it_is_answered():
    app, bodies = counting_app(busy_answers=3)
    response = TestClient(BusyRequestsReplayed(app)).post("/api/echo", content=b'{"cell": 7}')
    assert response.status_code == 200
    assert response.json() == {"body": '{"cell": 7}'}
    assert bodies == [b'{"cell": 7}'] * 4


def test_a_request_busy_every_time_reaches_the_client_as_busy():
    app, bodies = counting_app(busy_answers=REPLAYS + 5)
    client = TestClient(BusyRequestsReplayed(app), raise_server_exceptions=False)
    assert client.post("/api/echo", content=b"x").status_code == BUSY
    assert len(bodies) == REPLAYS + 1


def test_other_errors_are_not_run_again():
    app, bodies = counting_app(busy_answers=1, error=ValueError)
    with pytest.raises(ValueError):
        TestClient(BusyRequestsReplayed(app)).post("/api/echo", content=b"x")
    assert len(bodies) == 1


def test_the_start_lock_is_held_until_the_apps_lifespan_has_started(tmp_path):
    """Catches the lock in PREFECT_HOME given up before the app (Prefect's: its database created or
    migrated) has started, or never: a second server would then create the same database at once,
    or wait for ever."""
    lock_path = tmp_path / "scalelaw-server.lock"
    held_during_startup: list[bool] = []

    def is_locked() -> bool:
        with open(lock_path, "w") as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(probe, fcntl.LOCK_UN)
            return False

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        held_during_startup.append(is_locked())
        yield

    lock = open(lock_path, "w")  # noqa: SIM115 (the app closes it)
    fcntl.flock(lock, fcntl.LOCK_EX)
    with TestClient(UnlockedOnceStarted(Starlette(lifespan=lifespan), lock)):
        assert held_during_startup == [True]
        assert not is_locked()
