"""`pipeline ui`: a small aiohttp app serving the operator's page and its JSON.

The page (static/index.html, static/app.js: plain SVG, no external scripts, fonts or tiles
unless `--tiles` names a tile server) polls `/api/state`; the server polls the deployment
every `refresh_s` in one background task, so many open pages cost one collection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from pipeline.runtime.settings import Settings
from pipeline.tools.ui.collect import Collector, UiOptions

log = logging.getLogger("pipeline.tools.ui")
STATIC = Path(__file__).resolve().parent / "static"
COLLECTOR: web.AppKey[Collector] = web.AppKey("collector", Collector)
CONFIG: web.AppKey[dict[str, Any]] = web.AppKey("config", dict)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, default=str), status=status, content_type="application/json")


async def index(request: web.Request) -> web.Response:
    return web.FileResponse(STATIC / "index.html")  # type: ignore[return-value]


async def state(request: web.Request) -> web.Response:
    collector = request.app[COLLECTOR]
    current = collector.state()
    if not current:
        return _json({"error": "collecting: the first poll has not finished"}, status=503)
    return _json({**current, "config": request.app[CONFIG]})


async def vehicle(request: web.Request) -> web.Response:
    vin = request.match_info["vin"]
    if not (1 <= len(vin) <= 64) or not vin.replace("-", "").replace("_", "").isalnum():
        return _json({"error": f"not a vehicle id: {vin!r}"}, status=400)
    return _json(await asyncio.to_thread(request.app[COLLECTOR].vehicle, vin))


async def health(request: web.Request) -> web.Response:
    current = request.app[COLLECTOR].state()
    return _json({"ok": bool(current), "at": current.get("at")})


def create_app(settings: Settings, options: UiOptions, *, refresh_s: float = 2.0,
               tiles: str | None = None) -> web.Application:
    app = web.Application()
    collector = Collector(settings, options)
    app[COLLECTOR] = collector
    app[CONFIG] = {"refresh_s": refresh_s, "tiles": tiles}

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await collector.start()

        async def loop() -> None:
            while True:
                started = time.monotonic()
                try:
                    await collector.poll()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("collecting the page's state failed; trying again")
                await asyncio.sleep(max(refresh_s - (time.monotonic() - started), 0.2))

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await collector.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/", index)
    app.router.add_get("/api/state", state)
    app.router.add_get("/api/vehicle/{vin}", vehicle)
    app.router.add_get("/healthz", health)
    app.router.add_static("/static/", STATIC)
    return app


def run_ui(settings: Settings, options: UiOptions, *, host: str, port: int, refresh_s: float,
           tiles: str | None) -> None:
    app = create_app(settings, options, refresh_s=refresh_s, tiles=tiles)
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    web.run_app(app, host=host, port=port, print=lambda _: print(
        f"pipeline ui: http://{shown}:{port}/ (group {settings.app_id}; Ctrl-C stops)", flush=True))
