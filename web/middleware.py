"""ASGI middleware: the ``Server-Timing`` header, and cancelling work whose client is gone."""

from __future__ import annotations

import asyncio
import threading
import time

from litestar.types import ASGIApp, Message, Receive, Scope, Send


def server_timing(app: ASGIApp) -> ASGIApp:
    """ASGI middleware adding ``Server-Timing: app;dur=<ms>``: the time from the request's
    arrival to its response headers, so a client can tell its own wait from the server's."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        t0 = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - t0) * 1e3
                message["headers"] = [
                    *message.get("headers", []),
                    (b"server-timing", f"app;dur={ms:.2f}".encode()),
                ]
            await send(message)

        await app(scope, receive, timed_send)

    return middleware


CLIENT_GONE = "clip_branches.client_gone"


def cancel_on_disconnect(app: ASGIApp) -> ASGIApp:
    """ASGI middleware that sets ``scope[CLIENT_GONE]`` (a ``threading.Event``) when the client
    goes away before its response is complete, so work that can be stopped (a console query in
    its worker process) is stopped instead of running on for nobody. Once the request body has
    been read, a watcher waits for the next message, which the server sends only on disconnect
    or after the response."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        gone = threading.Event()
        scope[CLIENT_GONE] = gone
        body_read = asyncio.Event()
        watched: asyncio.Future = asyncio.get_running_loop().create_future()

        async def watch() -> None:
            await body_read.wait()
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            watched.set_result(message)

        async def tracked_receive() -> Message:
            if body_read.is_set():
                return await asyncio.shield(watched)
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            elif not message.get("more_body", False):
                body_read.set()
            return message

        watcher = asyncio.create_task(watch())
        try:
            await app(scope, tracked_receive, send)
        finally:
            watcher.cancel()

    return middleware
