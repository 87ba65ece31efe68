"""The console's web server (aiohttp, one port): the pages from static/ and the JSON they poll under /api/.

Read-only: GET only, nothing is produced or changed; where an operator would act, the pages show the CLI
command. With `console.token` set every /api/ request must carry it (header X-Streamrec-Token, or ?token=,
which the pages keep and send as the header); a non-loopback bind without a token is refused."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from pathlib import Path
from urllib.parse import quote

import aiohttp
from aiohttp import web

from console.collect import WORKER_TIMEOUT_S, background_tasks, worker_urls
from console.state import ConsoleState
from core.errors import ConfigError
from core.settings import ConsoleSettings, Settings

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
PAGES = {
    "/": "live.html",
    "/models": "models.html",
    "/dead-letters": "dead-letters.html",
    "/user": "user.html",
}
TOKEN_HEADER = "X-Streamrec-Token"
# The pages load only their own scripts and styles, and run no inline script: a record's text that ever
# reached the DOM as HTML still could not run.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # a ?token= must not leave in a Referer
    "Cache-Control": "no-store",
}
STATE = web.AppKey("state", ConsoleState)
SESSION = web.AppKey("session", aiohttp.ClientSession)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_bind(console: ConsoleSettings) -> None:
    """Refuse to serve a non-loopback address without a token: the pages show users' histories."""
    if not is_loopback(console.host) and console.token is None:
        raise ConfigError(
            f"the console would listen on {console.host}, not a loopback address, without a token: set "
            f"STREAMREC_CONSOLE__TOKEN (every /api/ request must then carry it), or bind 127.0.0.1"
        )


def token_guard(token: str | None):
    @web.middleware
    async def guard(request: web.Request, handler) -> web.StreamResponse:
        if token is not None and request.path.startswith("/api/"):
            given = request.headers.get(TOKEN_HEADER) or request.query.get("token") or ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                response: web.StreamResponse = web.json_response({"error": "token required"}, status=401)
                response.headers.update(SECURITY_HEADERS)
                return response
        response = await handler(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    return guard


async def ask_workers(session: aiohttp.ClientSession, urls: list[str], path: str) -> dict:
    """The first worker that answers `path` (a worker forwards a per-user path to the user's owner):
    {"worker", "status", "body"}, or the errors of all."""
    errors = []
    for url in urls:
        try:
            async with session.get(url + path) as response:
                return {"worker": url, "status": response.status, "body": await response.json(content_type=None)}
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            errors.append(f"{url}: {type(e).__name__}")
    return {"worker": None, "status": None, "body": {"error": "no worker answered (" + "; ".join(errors) + ")"}}


async def user_view(state: ConsoleState, session: aiohttp.ClientSession, urls: list[str], user_id: str) -> dict:
    """The user's window and current top-k from their worker, with titles, and the last records emitted for
    them that the console holds. Fields the worker adds to a list or an item (ranker heads, a variant) are
    passed on as they are, for the page to show."""
    quoted = quote(user_id, safe="")
    window, top_k = await asyncio.gather(
        ask_workers(session, urls, f"/windows/{quoted}"), ask_workers(session, urls, f"/recommendations/{quoted}")
    )
    window_body, top_k_body = window.pop("body"), top_k.pop("body")
    if window["status"] == 200:
        events = [e | {"title": state.titles.get(e.get("item_id"))} for e in window_body.get("events", [])]
        window |= {"known_user": window_body.get("known_user"), "events": events[::-1]}  # newest first
    else:
        window["error"] = window_body.get("error") if isinstance(window_body, dict) else str(window_body)
    if top_k["status"] == 200:
        top_k |= {
            "items": state.titled(top_k_body.get("items")),
            "fields": {k: v for k, v in top_k_body.items() if k not in ("items", "user_id")},
        }
    else:
        top_k["error"] = top_k_body.get("error") if isinstance(top_k_body, dict) else str(top_k_body)
    return {
        "user_id": user_id,
        "window": window,
        "top_k": top_k,
        "emitted": state.user_records(user_id),
        "commands": state.user_commands(user_id),
    }


def console_app(settings: Settings, state: ConsoleState | None = None, collect: bool = True) -> web.Application:
    """The app; `collect` starts the background reading (tests hand in a filled `state` without it)."""
    token = settings.console.token
    app = web.Application(middlewares=[token_guard(token.get_secret_value() if token else None)])
    app[STATE] = state or ConsoleState(settings)
    urls = worker_urls(settings)

    async def session_and_readers(app: web.Application):
        app[SESSION] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WORKER_TIMEOUT_S))
        tasks = background_tasks(settings, app[STATE], app[SESSION]) if collect else []
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await app[SESSION].close()

    app.cleanup_ctx.append(session_and_readers)

    async def live(request: web.Request) -> web.Response:
        return web.json_response(request.app[STATE].live())

    async def models(request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(request.app[STATE].models))  # reads the registry dir

    async def dead_letters(request: web.Request) -> web.Response:
        return web.json_response(request.app[STATE].dead_letters_page())

    async def user(request: web.Request) -> web.Response:
        view = await user_view(request.app[STATE], request.app[SESSION], urls, request.match_info["user_id"])
        return web.json_response(view)

    def page(name: str):
        async def serve(request: web.Request) -> web.FileResponse:
            return web.FileResponse(STATIC / name)

        return serve

    app.router.add_get("/api/live", live)
    app.router.add_get("/api/models", models)
    app.router.add_get("/api/dead-letters", dead_letters)
    app.router.add_get("/api/user/{user_id}", user)
    for path, name in PAGES.items():
        app.router.add_get(path, page(name))
    app.router.add_static("/static/", STATIC)
    return app


def run_console(settings: Settings) -> None:
    """Serve until interrupted; raises ConfigError for a non-loopback bind without a token."""
    check_bind(settings.console)
    c = settings.console
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"streamrec console on http://{c.host}:{c.port}/ · workers {', '.join(worker_urls(settings))}", flush=True)
    web.run_app(console_app(settings), host=c.host, port=c.port, print=None, access_log=None)
