"""FakeAgency: an agency's many locations on one server, each with its own budget.

HighLevel counts its budget per location, so an agency app reading K locations has K
budgets. FakeAgency holds one :class:`FakeHighLevel` per location (its conversations,
static token, burst window, daily counter and stats) and serves them all from one
socket: a request's token says which location it is for, and that location's own
middleware admits it, counts it and answers it. Around them it serves the agency's OAuth
routes (``../shared/api/oauth.openapi.json``): location tokens minted from the agency
token, the installed locations paged with ``skip``/``limit``, and the refresh grant.
"""

from __future__ import annotations

import asyncio
import math
import random
import secrets
import string
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import msgspec
from aiohttp import web

from ghl_async.oauth import OAUTH_VERSION
from ghl_async.ratelimit import RateLimit
from ghl_async.testing._server import API_ROUTES, UNAUTHORIZED, FakeHighLevel

__all__ = ["OAUTH_ROUTES", "AgencyStats", "FakeAgency", "FakeLocationInfo"]

OAUTH_ROUTES = ("token", "location_token", "installed_locations")
_ID_CHARS = string.ascii_letters + string.digits
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_SCOPE = "conversations.readonly conversations/message.readonly"
_METHODS = {name: method for name, _, method in API_ROUTES}


@dataclass(frozen=True, slots=True)
class FakeLocationInfo:
    """One location of the agency's company, as ``GET /oauth/installedLocations`` lists it.

    Attributes:
        id: the location id (``_id`` on the wire).
        name: its name.
        address: its address.
        installed: whether the app is installed there (only installed locations serve
            conversations and get location tokens).
        installed_at: when the app was installed (ISO 8601), ``None`` when not.
    """

    id: str
    name: str
    address: str
    installed: bool
    installed_at: str | None


@dataclass(slots=True)
class AgencyStats:
    """What the agency's own routes saw (each location's API traffic is in its stats).

    Attributes:
        oauth: requests per OAuth route: ``token``, ``location_token``,
            ``installed_locations``.
        location_tokens: location tokens minted, per location id.
        refreshes: refresh grants honoured.
        unauthorized: API requests refused with 401 before reaching a location (an unknown
            token, or the agency token used where a location token is needed).
    """

    oauth: Counter[str] = field(default_factory=Counter)
    location_tokens: Counter[str] = field(default_factory=Counter)
    refreshes: int = 0
    unauthorized: int = 0


class FakeAgency:
    """An agency's locations on one in-process server, each with its own rate budget.

    ::

        async with FakeAgency(locations=20, conversations=5, seed=1) as agency:
            for location_id in agency.location_ids:
                fake = agency.locations[location_id]  # a FakeHighLevel: its data, stats
                async with Client(fake.token, base_url=agency.url) as client:
                    ...
            assert all(f.stats.throttled == 0 for f in agency.locations.values())

    Each installed location is a :class:`FakeHighLevel` (``agency.locations[id]``) with
    its own conversations, static token, burst window, daily counter, faults and
    :class:`FakeStats`: location A at its limit does not throttle location B. A request
    goes to the location its ``Authorization`` token belongs to; that location's
    middleware does the rest as it does for a lone FakeHighLevel (so a token used with
    another location's ``locationId`` gets 403, as live).

    OAuth routes (shaped as ``oauth.openapi.json`` says; ``Version: 2021-07-28``):

    - ``POST /oauth/locationToken``: form ``companyId``, ``locationId``; Bearer
      :attr:`agency_token`. Mints a location token accepted for that location only,
      for :attr:`token_ttl` seconds.
    - ``GET /oauth/installedLocations``: ``companyId``, ``appId`` (required), ``skip``,
      ``limit`` (default 20), ``isInstalled``, ``query`` (name contains),
      ``locationId``; ``{"locations": [...], "count", "installToFutureLocations"}``.
    - ``POST /oauth/token``: form ``client_id``, ``client_secret``,
      ``grant_type=refresh_token``, ``refresh_token``: a new agency access token and a
      new refresh token; the old refresh token is spent (a second use is refused).
    - ``GET /_fake/stats``: every location's stats and the agency's, as JSON.

    Tokens (the agency's and minted location tokens) expire :attr:`token_ttl` seconds
    after they are issued: then 401 with the documented body. :meth:`advance` moves the
    clock so tests need not sleep. Each location's static :attr:`FakeHighLevel.token`
    never expires (a Private Integration Token).

    Args:
        locations: how many locations have the app installed.
        conversations: synthetic conversations per location.
        seed: the seed for ids, data and faults (location ``i`` uses its own derived seed).
        messages: messages per synthetic conversation: a count or a ``(low, high)`` range.
        uninstalled: locations of the company without the app (listed, never served).
        rate_limit: each location's burst budget.
        daily_limit: each location's daily budget.
        token_ttl: seconds an OAuth access token lives (live: 86399).
        install_to_future_locations: the flag the installed-locations reply carries.
        location_options: more :class:`FakeHighLevel` arguments for every location
            (``faults``, ``retry_after``, ``accept_versions``, ``full_page_next``, ...).
        host: the address to listen on.
        port: the port to listen on (0: a free one).
    """

    def __init__(
        self,
        locations: int = 3,
        *,
        conversations: int = 5,
        seed: int = 0,
        messages: int | tuple[int, int] = (0, 40),
        uninstalled: int = 0,
        rate_limit: RateLimit | None = None,
        daily_limit: int = 200_000,
        token_ttl: float = 86399.0,
        install_to_future_locations: bool = True,
        location_options: Mapping[str, Any] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if locations < 1:
            raise ValueError("an agency needs at least one location")
        if uninstalled < 0:
            raise ValueError("uninstalled must not be negative")
        if token_ttl <= 0:
            raise ValueError("token_ttl must be positive")
        options = dict(location_options or {})
        for name in ("conversations", "seed", "messages", "location_id", "host", "port"):
            if name in options:
                raise ValueError(f"location_options cannot set {name!r}")
        ids = random.Random(f"agency:{seed}")
        self.company_id = _new_id(ids)
        self.app_id = secrets.token_hex(12)
        self.client_id = f"{self.app_id}-{secrets.token_hex(4)}"
        self.client_secret = secrets.token_hex(16)
        self.user_id = _new_id(ids)
        self.token_ttl = float(token_ttl)
        self.install_to_future_locations = install_to_future_locations
        self.stats = AgencyStats()
        self.url = ""
        self.agency_token = ""
        self.refresh_token = ""
        self.locations: dict[str, FakeHighLevel] = {}
        self._directory: list[FakeLocationInfo] = []
        for i in range(locations + uninstalled):
            location_id = _new_id(ids)
            installed = i < locations
            self._directory.append(
                FakeLocationInfo(
                    id=location_id,
                    name=f"Location {i + 1:04d}",
                    address=f"{i + 1} Main St, Springfield",
                    installed=installed,
                    installed_at=f"2025-01-{1 + i % 28:02d}T10:30:00.000Z" if installed else None,
                )
            )
            if installed:
                self.locations[location_id] = FakeHighLevel(
                    conversations,
                    seed=seed * 100_003 + i,
                    messages=messages,
                    rate_limit=rate_limit,
                    daily_limit=daily_limit,
                    location_id=location_id,
                    **options,
                )
        # Which location each token is for: static tokens now, minted ones as issued.
        self._owners: dict[str, FakeHighLevel] = {f.token: f for f in self.locations.values()}
        self._agency_tokens: dict[str, float] = {}  # agency access token -> expires at
        self._refresh_tokens: set[str] = set()  # unspent refresh tokens
        self._skew = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._host = host
        self._port = port
        self._encoder = msgspec.json.Encoder()
        self.mint_rate: RateLimit | None = None
        """Hostile knob: the agency's budget for ``POST /oauth/locationToken`` (429 past
        it, with ``Retry-After``); ``None``: unlimited."""
        self.hang_mints = 0
        """Hostile knob: this many next mint requests never answer (until the client
        gives up on them)."""
        self.mint_overrides: dict[str, dict[str, Any]] = {}
        """Hostile knob: fields replaced in a location's mint reply (``{"expires_in": -1}``,
        ``{"locationId": "another"}``)."""
        self.installed_repeat = 0
        """Hostile knob: each installed-locations page after the first starts this many
        locations early (pages that overlap)."""
        self.installed_count: int | None = None
        """Hostile knob: the ``count`` the installed-locations reply claims."""
        self._mints: deque[float] = deque()
        self._closing = asyncio.Event()

    # -- data --------------------------------------------------------------------

    @property
    def location_ids(self) -> list[str]:
        """The installed locations' ids, in a stable order."""
        return list(self.locations)

    @property
    def directory(self) -> list[FakeLocationInfo]:
        """Every location of the company, installed or not, as the OAuth route lists them."""
        return list(self._directory)

    @property
    def throttled(self) -> int:
        """429 replies across every location."""
        return sum(f.stats.throttled for f in self.locations.values())

    @property
    def max_in_window(self) -> dict[str, int]:
        """Each location's most requests in any window of its budget's interval."""
        return {lid: f.stats.max_in_window for lid, f in self.locations.items()}

    @property
    def total_messages(self) -> int:
        """Messages across every location."""
        return sum(f.total_messages for f in self.locations.values())

    def info(self) -> dict[str, Any]:
        """What a test in another process needs to reach the agency, as JSON-ready data.

        It holds the tokens: it is for tests, written where only the test reads it.
        """
        return {
            "url": self.url,
            "companyId": self.company_id,
            "appId": self.app_id,
            "userId": self.user_id,
            "clientId": self.client_id,
            "clientSecret": self.client_secret,
            "agencyToken": self.agency_token,
            "refreshToken": self.refresh_token,
            "tokenTtl": self.token_ttl,
            "locations": [
                {
                    "id": f.location_id,
                    "token": f.token,
                    "conversations": len(f.conversation_ids),
                    "messages": f.total_messages,
                }
                for f in self.locations.values()
            ],
        }

    def __repr__(self) -> str:
        return (
            f"FakeAgency(url={self.url!r}, company_id={self.company_id!r}, "
            f"locations={len(self.locations)})"
        )

    # -- control -----------------------------------------------------------------

    def _now(self) -> float:
        loop = self._loop or asyncio.get_running_loop()
        return loop.time() + self._skew

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward everywhere: budgets refill, tokens expire."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._skew += seconds
        for fake in self.locations.values():
            fake.advance(seconds)

    def _issue_agency_token(self) -> None:
        """A new agency access token and refresh token (the old access token lives on)."""
        self.agency_token = "agency-" + secrets.token_hex(16)
        self.refresh_token = "refresh-" + secrets.token_hex(16)
        self._agency_tokens[self.agency_token] = self._now() + self.token_ttl
        self._refresh_tokens.add(self.refresh_token)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Listen on ``host:port``; :attr:`url` and :attr:`agency_token` are set then."""
        self._loop = asyncio.get_running_loop()
        for fake in self.locations.values():
            fake._loop = self._loop
        self._issue_agency_token()
        app = web.Application(middlewares=[self._dispatch])
        router = app.router
        router.add_get("/_fake/stats", self._stats, name="fake_stats")
        router.add_post("/oauth/token", self._token, name="token")
        router.add_post("/oauth/locationToken", self._location_token, name="location_token")
        router.add_get(
            "/oauth/installedLocations", self._installed_locations, name="installed_locations"
        )
        for name, path, _ in API_ROUTES:
            # The middleware calls the location's own handler; this one is never reached.
            router.add_get(path, _unreachable, name=name)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        for fake in self.locations.values():
            fake.url = self.url

    async def close(self) -> None:
        """Stop listening and drop open connections."""
        self._closing.set()  # hung mints end, so the server need not wait them out
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeAgency:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the middleware: which location a request is for ----------------------------

    @web.middleware
    async def _dispatch(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Send an API request to its token's location; the rest is the agency's own."""
        route = request.match_info.route.name
        if route is None or route == "fake_stats":
            return await handler(request)
        if route in OAUTH_ROUTES:
            self.stats.oauth[route] += 1
            return await handler(request)
        authorization = request.headers.get("Authorization", "")
        token = authorization[len("Bearer ") :] if authorization.startswith("Bearer ") else ""
        fake = self._owners.get(token)
        if fake is None:
            self.stats.unauthorized += 1
            if token in self._agency_tokens:
                # An agency token reads no location's conversations: it mints location
                # tokens for that.
                return self._error(401, "The token is not authorized for this scope.")
            return self._error(401, UNAUTHORIZED)
        # The location's own middleware and route: its auth (expiry), budget, faults, stats.
        return await fake._gate(request, getattr(fake, _METHODS[route]))

    def _json(self, status: int, payload: Mapping[str, Any]) -> web.Response:
        return web.Response(
            status=status, body=self._encoder.encode(payload), content_type="application/json"
        )

    def _error(self, status: int, message: str) -> web.Response:
        """The documented error body for ``status`` (422's message is a list)."""
        payload: dict[str, Any] = {"statusCode": status, "message": message}
        if status == 422:
            payload = {"statusCode": 422, "message": [message], "error": "Unprocessable Entity"}
        elif status in (400, 401, 403):
            payload["error"] = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden"}[status]
        return self._json(status, payload)

    def _agency_refused(self, request: web.Request) -> web.Response | None:
        """Bearer agency token (unexpired) and ``Version: 2021-07-28``, or the refusal."""
        authorization = request.headers.get("Authorization", "")
        token = authorization[len("Bearer ") :] if authorization.startswith("Bearer ") else ""
        expires_at = self._agency_tokens.get(token)
        if expires_at is None or self._now() >= expires_at:
            return self._error(401, UNAUTHORIZED)
        if request.headers.get("Version") != OAUTH_VERSION:
            return self._error(400, "version header was not found")
        return None

    # -- OAuth routes -------------------------------------------------------------

    async def _location_token(self, request: web.Request) -> web.Response:
        refused = self._agency_refused(request)
        if refused is not None:
            return refused
        form = await request.post()
        for name in ("companyId", "locationId"):
            if not isinstance(form.get(name), str) or not form[name]:
                return self._error(422, f"{name} should not be empty")
        if form["companyId"] != self.company_id:
            return self._error(403, "The token does not have access to this company")
        location_id = str(form["locationId"])
        fake = self.locations.get(location_id)
        if fake is None:
            return self._error(400, "The app is not installed in this location")
        throttled = self._mint_throttled()
        if throttled is not None:
            return throttled
        if self.hang_mints > 0:
            self.hang_mints -= 1
            await self._closing.wait()  # never answers (the client gives up first)
            return self._error(503, "the fake is closing")
        token = "loc-" + secrets.token_hex(16)
        fake._grant(token, self._now() + self.token_ttl)
        self._owners[token] = fake
        self.stats.location_tokens[location_id] += 1
        return self._json(
            200,
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": self.token_ttl,
                "scope": _SCOPE,
                "locationId": location_id,
                "userId": self.user_id,
                "appId": self.app_id,
                "someFutureField": True,
                **self.mint_overrides.get(location_id, {}),
            },
        )

    def _mint_throttled(self) -> web.Response | None:
        """The 429 of a mint past :attr:`mint_rate`, else ``None`` (and the mint counts)."""
        budget = self.mint_rate
        if budget is None:
            return None
        now, mints = self._now(), self._mints
        while mints and mints[0] <= now - budget.interval:
            mints.popleft()
        if len(mints) >= budget.max_requests:
            wait = mints[0] + budget.interval - now
            response = self._error(429, "Too many requests")
            response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return response
        mints.append(now)
        return None

    async def _installed_locations(self, request: web.Request) -> web.Response:
        refused = self._agency_refused(request)
        if refused is not None:
            return refused
        query = request.query
        for name in ("companyId", "appId"):
            if not query.get(name):
                return self._error(422, f"{name} should not be empty")
        if query["companyId"] != self.company_id:
            return self._error(403, "The token does not have access to this company")
        if query["appId"] != self.app_id:
            return self._error(400, "App not found")
        paging: dict[str, int] = {}
        for name, default in (("skip", 0), ("limit", 20)):
            try:
                paging[name] = int(query.get(name, str(default)))
            except ValueError:
                paging[name] = -1
            if paging[name] < (1 if name == "limit" else 0):
                return self._error(422, f"{name} must be a number not less than 0")
        chosen: Sequence[FakeLocationInfo] = self._directory
        if "isInstalled" in query:
            wanted = query["isInstalled"].lower() == "true"
            chosen = [info for info in chosen if info.installed == wanted]
        if "query" in query:
            text = query["query"].lower()
            chosen = [info for info in chosen if text in info.name.lower()]
        if "locationId" in query:
            chosen = [info for info in chosen if info.id == query["locationId"]]
        skip, limit = paging["skip"], paging["limit"]
        if skip and self.installed_repeat:
            skip = max(0, skip - self.installed_repeat)
        items: list[dict[str, Any]] = []
        for info in chosen[skip : skip + limit]:
            item: dict[str, Any] = {
                "_id": info.id,
                "name": info.name,
                "address": info.address,
                "isInstalled": info.installed,
            }
            if info.installed_at is not None:
                item["installedAt"] = info.installed_at
            items.append(item)
        return self._json(
            200,
            {
                "locations": items,
                "count": len(chosen) if self.installed_count is None else self.installed_count,
                "installToFutureLocations": self.install_to_future_locations,
            },
        )

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        for name in ("client_id", "client_secret", "grant_type"):
            if not isinstance(form.get(name), str) or not form[name]:
                return self._error(422, f"{name} should not be empty")
        if (form["client_id"], form["client_secret"]) != (self.client_id, self.client_secret):
            return self._error(401, "Invalid client credentials")
        if form["grant_type"] != "refresh_token":
            return self._error(422, "the fake only grants grant_type refresh_token")
        refresh = form.get("refresh_token")
        if not isinstance(refresh, str) or refresh not in self._refresh_tokens:
            # Unknown, or already spent by an earlier refresh.
            return self._error(400, "Invalid grant: refresh token is invalid")
        self._refresh_tokens.discard(refresh)
        self._issue_agency_token()
        self.stats.refreshes += 1
        return self._json(
            200,
            {
                "access_token": self.agency_token,
                "token_type": "Bearer",
                "expires_in": self.token_ttl,
                "refresh_token": self.refresh_token,
                "scope": "oauth.readonly oauth.write " + _SCOPE,
                "userType": "Company",
                "companyId": self.company_id,
                "userId": self.user_id,
                "approvedLocations": self.location_ids,
                "isBulkInstallation": True,
            },
        )

    async def _stats(self, request: web.Request) -> web.Response:
        """Every location's stats and the agency's, for tests in another process."""
        stats = self.stats
        return self._json(
            200,
            {
                "companyId": self.company_id,
                "throttled": self.throttled,
                "totalMessages": self.total_messages,
                "oauth": dict(stats.oauth),
                "locationTokens": dict(stats.location_tokens),
                "refreshes": stats.refreshes,
                "unauthorized": stats.unauthorized,
                "locations": {lid: f.stats_json() for lid, f in self.locations.items()},
            },
        )


async def _unreachable(request: web.Request) -> web.StreamResponse:  # pragma: no cover
    raise web.HTTPInternalServerError(text="an API route is answered by its location")


def _new_id(rng: random.Random) -> str:
    return "".join(rng.choices(_ID_CHARS, k=20))
