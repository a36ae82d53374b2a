"""The temporary server's app replays requests that found the database busy (flows/server_app.py).

A Starlette app stands in for Prefect's: its routes are mounted under /api, as Prefect's are (routing
writes into the scope), and its handler of every exception answers a busy error with 503, after which
Starlette raises the error again, as it does with Prefect's answer to a busy SQLite database."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from flows.server_app import BUSY, REPLAYS, BusyRequestsReplayed


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
