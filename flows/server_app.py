"""The temporary Prefect server's app (flows/api.py serves it): Prefect's own, started under a lock in
PREFECT_HOME, with each HTTP request that found the SQLite database busy run again in the server
before its client sees the failure.

Prefect answers such a request with 503 after rolling its transaction back, and its client retries
only after 2 s. At a sweep's start the flow's first task runs meet other writes to the database, and
one such retry held the whole sweep for 2 s in about half of the runs measured. Here a busy request
runs again after a pause of PAUSE_SECONDS times its attempt, up to REPLAYS times; then the 503 reaches the
client, whose backoff takes over."""

from __future__ import annotations

import asyncio
import fcntl
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import IO, Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

BUSY = 503  # Prefect's answer to a database error that may pass on a retry (SQLite busy or locked)
REPLAYS = 8
PAUSE_SECONDS = 0.05


def create_app() -> App:
    """uvicorn's app factory: Prefect's app, with busy requests replayed, which starts under a lock in
    PREFECT_HOME, as does the creation of a fresh home's database (flows/server_db.py): two servers
    that create one database at once both fail ("index ... already exists"). Exits with API_NAMED,
    before it opens the database, when Prefect's settings name an API: the temporary server is not
    needed."""
    from prefect.server.api.server import create_app as prefect_app
    from prefect.server.database import provide_database_interface
    from prefect.settings import get_current_settings

    from flows.api import API_NAMED
    from flows.server_db import create_if_new

    settings = get_current_settings()
    if settings.api.url:
        sys.exit(API_NAMED)
    settings.home.mkdir(parents=True, exist_ok=True)
    lock = open(settings.home / "scalelaw-server.lock", "w")  # noqa: SIM115 (closed once started)
    fcntl.flock(lock, fcntl.LOCK_EX)
    create_if_new(provide_database_interface().database_config.connection_url)
    return UnlockedOnceStarted(BusyRequestsReplayed(prefect_app()), lock)


class UnlockedOnceStarted:
    """An ASGI app around `app` that closes `lock` (a file it holds locked) once its lifespan has
    started, or failed to."""

    def __init__(self, app: App, lock: IO[str]) -> None:
        self.app, self.lock = app, lock

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_unlocking(message: Message) -> None:
            if message["type"] in ("lifespan.startup.complete", "lifespan.startup.failed"):
                self.lock.close()
            await send(message)

        await self.app(scope, receive, send_unlocking)


class BusyRequestsReplayed:
    """An ASGI app around `app` that runs an HTTP request again while `app` answers it BUSY."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan and websockets (Prefect's events) as they are
            await self.app(scope, receive, send)
            return
        request = await _whole_request(receive)
        for attempt in range(1, REPLAYS + 1):
            # a copy each time: routing writes into the scope it is given
            if await self._unless_busy(dict(scope), _replay(request, receive), send):
                return
            await asyncio.sleep(PAUSE_SECONDS * attempt)
        await self.app(dict(scope), _replay(request, receive), send)

    async def _unless_busy(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> bool:
        """Run the request and send its answer, unless it is BUSY (then send nothing); whether sent."""
        busy = False

        async def send_unless_busy(message: Message) -> None:
            nonlocal busy
            if message["type"] == "http.response.start":
                busy = message["status"] == BUSY
            if not busy:
                await send(message)

        try:
            await self.app(scope, receive, send_unless_busy)
        except Exception:
            if not busy:  # Starlette raises the error again once it has answered it (with BUSY here)
                raise
        return not busy


async def _whole_request(receive: Receive) -> Message:
    """The request's body in one message (or the disconnect that came instead)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return message
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}


def _replay(request: Message, receive: Receive) -> Receive:
    """A `receive` that gives the whole request first, then waits on the client (for its disconnect)."""
    given = False

    async def replayed() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return request

    return replayed
