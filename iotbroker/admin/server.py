"""The admin listener: aiohttp on the broker's event loop (docs/admin.md).

aiohttp is the HTTP server (and client) of asyncio's ecosystem: maintained by the
aio-libs group, typed, with routing, middlewares, static files, TLS and streamed
responses (the dashboard's Server-Sent Events) built in. It runs in the broker's own
event loop, so a handler reads the engine between two turns without locks, and it is
loaded only when ``admin.enabled`` is true.

Routes: the JSON API under ``/api/v1`` (:mod:`iotbroker.admin.api`, described by
``/api/v1/openapi.json``), the live stream ``/api/v1/stream`` (SSE, one sample a
second), the login for the dashboard, and the dashboard itself (``/`` and
``/static/``, files shipped in the package).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path

from aiohttp import web

from iotbroker.admin.api import IDENTITY, AdminApi, ApiError, error_response
from iotbroker.admin.bans import BanList
from iotbroker.admin.credentials import (
    COOKIE,
    SESSION_SECONDS,
    Credentials,
    Denied,
    Identity,
    Limiter,
)
from iotbroker.admin.credentials import parse_authorization as parse_auth
from iotbroker.admin.host import BrokerHost
from iotbroker.admin.live import Sampler
from iotbroker.admin.openapi import document
from iotbroker.auth.passwords import PasswordFile

log = logging.getLogger("iotbroker.admin")

#: Paths anyone may read: liveness/readiness for orchestrators, the API description,
#: the login, and the dashboard's static files (they hold no data).
PUBLIC = frozenset({"/", "/api/v1/health", "/api/v1/health/ready", "/api/v1/openapi.json",
                    "/api/v1/login", "/api/v1/whoami"})
#: Name of the bans file in ``storage.path``.
BANS_FILE = "admin-bans.json"
#: Seconds between two live samples.
SAMPLE_INTERVAL = 1.0

#: The API's routes: (method, path, handler: ``api.NAME`` on AdminApi, else on the
#: server). ``openapi.py`` documents exactly these (tests/admin checks it).
ROUTES: tuple[tuple[str, str, str], ...] = (
    ("GET", "/api/v1/health", "api.health"),
    ("GET", "/api/v1/health/ready", "api.ready"),
    ("GET", "/api/v1/openapi.json", "openapi"),
    ("POST", "/api/v1/login", "login"),
    ("POST", "/api/v1/logout", "logout"),
    ("GET", "/api/v1/whoami", "whoami"),
    ("GET", "/api/v1/broker", "api.broker"),
    ("GET", "/api/v1/stream", "stream"),
    ("GET", "/api/v1/clients", "api.clients"),
    ("GET", "/api/v1/clients/{clientid}", "api.client"),
    ("DELETE", "/api/v1/clients/{clientid}", "api.kick"),
    ("GET", "/api/v1/clients/{clientid}/subscriptions", "api.client_subscriptions"),
    ("GET", "/api/v1/subscriptions", "api.subscriptions"),
    ("GET", "/api/v1/retained", "api.retained_list"),
    ("GET", "/api/v1/retained/{topic:.+}", "api.retained_get"),
    ("DELETE", "/api/v1/retained/{topic:.+}", "api.retained_delete"),
    ("POST", "/api/v1/publish", "api.publish"),
    ("GET", "/api/v1/bans", "api.bans_list"),
    ("POST", "/api/v1/bans", "api.bans_create"),
    ("DELETE", "/api/v1/bans/{kind}/{value:.+}", "api.bans_delete"),
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATIC = resources.files("iotbroker") / "admin" / "static"


#: Sent with every response: the dashboard loads only its own files (no inline script
#: or style), may not be framed, and nothing is sniffed or cached.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)
    response.headers.popall("Server", None)


class AdminServer:
    """The admin room: its HTTP listener, bans, live sampler; started by the broker."""

    def __init__(self, host: BrokerHost, ssl_context: ssl.SSLContext | None = None,
                 limiter: Limiter | None = None,
                 user_limiter: Limiter | None = None) -> None:
        self.host = host
        #: Failed logins per client address, and per username (auth.failed_login_*).
        self.limiter = limiter
        self.user_limiter = user_limiter
        config = host.config.admin
        self.ssl_context = ssl_context
        api_keys = PasswordFile.load(config.api_keys_file) if config.api_keys_file else None
        self.credentials = Credentials(config.users, api_keys)
        self.bans = BanList(Path(host.config.storage.path) / BANS_FILE)
        self.bans.load()
        self.sampler = Sampler(host.engine)
        self.api = AdminApi(host, self.bans, self.sampler)
        host.engine.connect_gate = self.connect_gate
        self.addresses: list[tuple[str, int]] = []
        self._runner: web.AppRunner | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._streams: set[asyncio.Queue[str]] = set()

    def reload_api_keys(self) -> None:
        """SIGHUP: read ``admin.api_keys_file`` again (keys can be added or revoked
        without a restart); a bad file raises and the old keys stay."""
        path = self.host.config.admin.api_keys_file
        if path:
            self.credentials.api_keys = PasswordFile.load(path)

    # ------------------------------------------------------------ lifecycle
    def connect_gate(self, client_id: str, username: str | None, peer: str) -> str | None:
        """The engine's ``connect_gate``: a banned client is refused its CONNECT."""
        return self.bans.refusal(client_id, username, peer, time.time())

    async def start(self) -> None:
        config = self.host.config.admin
        app = self.application()
        # a viewer that stops reading must not hold the broker's shutdown for long
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, config.host, config.port, ssl_context=self.ssl_context,
                           backlog=64)
        await site.start()
        scheme = "https" if self.ssl_context else "http"
        server = site._server  # the asyncio.Server, for the bound addresses (port 0)
        sockets = getattr(server, "sockets", None) or []
        for sock in sockets:
            host, port = sock.getsockname()[:2]
            self.addresses.append((host, port))
            shown = f"[{host}]" if ":" in host else host
            log.info("admin listening on %s://%s:%s", scheme, shown, port)
        if self.credentials.open:
            log.warning("the admin API on %s has no credentials (admin.users, "
                        "admin.api_keys_file): anyone on this machine can use it", config.host)
        self._tick()

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for queue in list(self._streams):
            queue.put_nowait("")  # ends the stream
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.host.engine.connect_gate = None

    def _tick(self) -> None:
        sample = self.sampler.take(time.time())
        if self._streams:
            text = f"event: sample\ndata: {json.dumps(sample.as_json())}\n\n"
            for queue in self._streams:
                if queue.qsize() < 60:  # a stalled viewer does not grow memory
                    queue.put_nowait(text)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(SAMPLE_INTERVAL, self._tick)

    # ----------------------------------------------------------- application
    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._authenticate],
                              client_max_size=1024 * 1024)
        app.on_response_prepare.append(_security_headers)
        for method, path, name in ROUTES:
            owner, _, attr = name.rpartition(".")
            handler = getattr(self.api if owner == "api" else self, attr)
            app.router.add_route(method, path, handler)
        app.router.add_get("/", self.index)
        app.router.add_static("/static/", Path(str(STATIC)), append_version=False)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every error as JSON ``{code, message}``."""
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.message)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED",
                    413: "PAYLOAD_TOO_LARGE"}.get(exc.status, "HTTP_ERROR")
            return error_response(exc.status, code, exc.reason)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in PUBLIC or path.startswith("/static/"):
            request[IDENTITY] = Identity("-", "public")
            return await handler(request)
        try:
            identity = await self._identify(request)
        except Denied as exc:
            if exc.status == 429:
                return error_response(429, "TOO_MANY_REQUESTS", exc.message)
            headers = None
            if exc.status == 401 and "X-Requested-With" not in request.headers:
                headers = {"WWW-Authenticate": 'Basic realm="iotbroker admin"'}
            code = "UNAUTHORIZED" if exc.status == 401 else "FORBIDDEN"
            log.info("admin API refused %s %s from %s: %s", request.method, path,
                     request.remote, exc.message)
            return error_response(exc.status, code, exc.message, headers)
        request[IDENTITY] = identity
        return await handler(request)

    async def _identify(self, request: web.Request) -> Identity:
        header = request.headers.get("Authorization")
        if header is not None:
            parsed = parse_auth(header)
            if parsed is None:
                raise Denied(401, "Authorization must be Basic or Bearer NAME:KEY")
            return await self._check(*parsed, address=request.remote or "?")
        token = request.cookies.get(COOKIE)
        if token is not None:
            identity = self.credentials.session(token)
            if identity is None:
                raise Denied(401, "session expired: log in again")
            if request.method not in ("GET", "HEAD") and \
                    "X-Requested-With" not in request.headers:
                raise Denied(403, "X-Requested-With is required with a session cookie")
            return identity
        if self.credentials.open:
            return Identity("anonymous", "open")
        raise Denied(401, "credentials required (HTTP Basic, Bearer NAME:KEY or login)")

    async def _check(self, name: str, secret: str, address: str) -> Identity:
        """Check credentials; too many failures from ``address`` or for ``name``
        (auth.failed_login_*, as for MQTT logins) are refused with 429 before any check,
        so a guesser spread over many addresses is stopped too. A successful login
        forgets its name's failures. Names whose secret cannot be guessed (API keys,
        generated secrets) have no per-name limit: it would only let others lock them
        out."""
        passwords = self.host.password_file()
        limiter = self.limiter
        user_limiter = self.user_limiter if self.credentials.guessable(passwords, name) \
            else None
        now = time.time()
        if limiter is not None and limiter.blocked(address, now):
            raise Denied(429, "too many failed logins from this address: try again later")
        if user_limiter is not None and user_limiter.blocked(name, now):
            raise Denied(429, "too many failed logins for this user: try again later")
        try:
            if self.credentials.needs_thread(passwords, name, secret):
                identity = await asyncio.to_thread(self.credentials.check, passwords, name,
                                                   secret)
            else:
                identity = self.credentials.check(passwords, name, secret)
        except Denied as exc:
            if exc.status == 401:
                now = time.time()
                if limiter is not None and limiter.failed(address, now):
                    log.warning("admin API: %s blocked after repeated failed logins",
                                address)
                if user_limiter is not None and user_limiter.failed(name, now):
                    log.warning("admin API: user %r blocked after repeated failed logins",
                                name)
            raise
        if user_limiter is not None:
            user_limiter.succeeded(name)
        return identity

    # ------------------------------------------------------ own handlers
    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(document())

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(Path(str(STATIC / "index.html")))

    async def login(self, request: web.Request) -> web.Response:
        """The dashboard's login: ``{"username", "password"}`` -> a session cookie."""
        data = await self.api.body(request)
        name, secret = data.get("username"), data.get("password")
        if not isinstance(name, str) or not isinstance(secret, str):
            raise ApiError(400, "BAD_REQUEST", "username and password must be strings")
        try:
            identity = await self._check(name, secret, request.remote or "?")
        except Denied as exc:
            log.info("admin login refused for %r from %s: %s", name, request.remote,
                     exc.message)
            await asyncio.sleep(0.5)  # slows guessing down a little
            code = {401: "UNAUTHORIZED", 429: "TOO_MANY_REQUESTS"}.get(exc.status,
                                                                       "FORBIDDEN")
            return error_response(exc.status, code, exc.message)
        token = self.credentials.start_session(identity)
        log.info("admin %s (%s) logged in from %s", identity.name, identity.kind,
                 request.remote)
        response = web.json_response({"name": identity.name, "kind": identity.kind})
        response.set_cookie(COOKIE, token, max_age=SESSION_SECONDS, httponly=True,
                            samesite="Strict", secure=self.ssl_context is not None, path="/")
        return response

    async def logout(self, request: web.Request) -> web.Response:
        token = request.cookies.get(COOKIE)
        if token is not None:
            self.credentials.end_session(token)
        response = web.Response(status=204)
        response.del_cookie(COOKIE, path="/")
        return response

    async def whoami(self, request: web.Request) -> web.Response:
        """Who the credentials or cookie name; ``{"name": null}`` when none (the
        dashboard asks this first, so a visitor not logged in sees no 401)."""
        try:
            identity = await self._identify(request)
        except Denied:
            return web.json_response({"name": None, "kind": None})
        return web.json_response({"name": identity.name, "kind": identity.kind})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: ``history`` (the last 15 minutes) then one ``sample`` a
        second. Ends when the client goes or the broker stops."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._streams.add(queue)
        self.sampler.watchers += 1
        try:
            history = [s.as_json() for s in self.sampler.samples]
            await response.write(f"event: history\ndata: {json.dumps(history)}\n\n".encode())
            while True:
                text = await queue.get()
                if not text:
                    break
                await response.write(text.encode())
        except ConnectionError:
            pass
        finally:
            self._streams.discard(queue)
            self.sampler.watchers -= 1
        return response
