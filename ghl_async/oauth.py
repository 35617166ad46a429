"""HighLevel's OAuth replies and requests for an agency app, as data: no HTTP here.

An agency token reaches its locations through three routes (``oauth.openapi.json``):

- ``POST /oauth/locationToken`` (form :func:`location_token_form`, Bearer agency token,
  ``Version: 2021-07-28``) mints a location's token: :class:`LocationToken`.
- ``GET /oauth/installedLocations`` (query :func:`installed_locations_params`) lists the
  locations the app is installed in, paged with ``skip``/``limit``:
  :class:`InstalledLocationsPage`, its next page from :func:`next_skip`.
- ``POST /oauth/token`` (form :func:`refresh_token_form`) trades the refresh token for a
  new access token and a new refresh token: :class:`AccessToken`. The old refresh token
  is spent: store the new one every time.

A token is good until :func:`expires_at` (its lifetime less a safety margin). Reprs
never show a token or a secret.

::

    from ghl_async.oauth import decode_location_token, expires_at, location_token_form

    form = location_token_form(company_id, location_id)  # POST it with the agency token
    token = decode_location_token(body)
    good_until = expires_at(token.expires_in, now=time.monotonic())
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from ghl_async.errors import DecodeError

__all__ = [
    "INSTALLED_LOCATIONS_PATH",
    "LOCATION_TOKEN_PATH",
    "OAUTH_VERSION",
    "TOKEN_PATH",
    "AccessToken",
    "InstalledLocation",
    "InstalledLocationsPage",
    "LocationToken",
    "decode_access_token",
    "decode_installed_locations",
    "decode_location_token",
    "expires_at",
    "installed_locations_params",
    "location_token_form",
    "next_skip",
    "refresh_token_form",
]

#: The ``Version`` header the OAuth routes take (their OpenAPI file allows only this one;
#: the Conversations routes take ``2021-04-15``).
OAUTH_VERSION = "2021-07-28"
LOCATION_TOKEN_PATH = "/oauth/locationToken"
INSTALLED_LOCATIONS_PATH = "/oauth/installedLocations"
TOKEN_PATH = "/oauth/token"
#: How long before its stated expiry a token is treated as expired: a request signed
#: just before the end must not land just after it.
DEFAULT_MARGIN = 300.0

_HIDDEN = "'***'"


class LocationToken(msgspec.Struct, rename="camel", kw_only=True, frozen=True):
    """A location's access token minted from the agency token (``locationToken``'s reply).

    Attributes:
        access_token: the Bearer token for that location's API calls (hidden in repr).
        token_type: ``"Bearer"``.
        expires_in: seconds it lives from now (live: 86399).
        scope: the scopes it carries, space separated.
        location_id: the location it is for.
        user_id: who installed the app.
        plan_id, app_id, version_id: the install's plan, app and app version, if sent.
    """

    access_token: str = msgspec.field(name="access_token")
    token_type: str = msgspec.field(default="Bearer", name="token_type")
    expires_in: float = msgspec.field(default=86399.0, name="expires_in")
    scope: str = ""
    location_id: str | None = None
    user_id: str | None = None
    plan_id: str | None = None
    app_id: str | None = None
    version_id: str | None = None

    def __repr__(self) -> str:
        return (
            f"LocationToken(access_token={_HIDDEN}, location_id={self.location_id!r}, "
            f"expires_in={self.expires_in!r}, scope={self.scope!r})"
        )


class AccessToken(msgspec.Struct, rename="camel", kw_only=True, frozen=True):
    """An access token and its refresh token (``POST /oauth/token``'s reply).

    Attributes:
        access_token: the Bearer token (hidden in repr).
        refresh_token: the next refresh's token: the one just used is spent (hidden).
        token_type: ``"Bearer"``.
        expires_in: seconds it lives from now.
        scope: the scopes it carries.
        user_type: ``"Company"`` (an agency token) or ``"Location"``.
        company_id: the agency's company id.
        location_id: the location, for a location token.
        user_id: who installed the app.
        approved_locations: the locations it may mint tokens for, when sent.
    """

    access_token: str = msgspec.field(name="access_token")
    refresh_token: str | None = msgspec.field(default=None, name="refresh_token")
    token_type: str = msgspec.field(default="Bearer", name="token_type")
    expires_in: float = msgspec.field(default=86399.0, name="expires_in")
    scope: str = ""
    user_type: str | None = None
    company_id: str | None = None
    location_id: str | None = None
    user_id: str | None = None
    approved_locations: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (
            f"AccessToken(access_token={_HIDDEN}, refresh_token={_HIDDEN}, "
            f"user_type={self.user_type!r}, company_id={self.company_id!r}, "
            f"expires_in={self.expires_in!r})"
        )


class InstalledLocation(msgspec.Struct, rename="camel", kw_only=True, frozen=True, gc=False):
    """One location of the company (an item of ``installedLocations``).

    Attributes:
        id: the location id (``_id`` on the wire).
        name: its name.
        address: its address.
        is_installed: whether the app is installed there (``None`` when not sent).
        installed_at: when it was installed (ISO 8601), when sent.
        version_id: the installed app version, when sent.
    """

    id: str = msgspec.field(name="_id")
    name: str = ""
    address: str = ""
    is_installed: bool | None = None
    installed_at: str | None = None
    version_id: str | None = None


class InstalledLocationsPage(msgspec.Struct, rename="camel", kw_only=True, frozen=True):
    """A page of ``GET /oauth/installedLocations``.

    Attributes:
        locations: this page's locations.
        count: how many match in all (every page says the same).
        install_to_future_locations: whether new locations get the app on their own.
    """

    locations: tuple[InstalledLocation, ...] = ()
    count: int = 0
    install_to_future_locations: bool | None = None


_T = TypeVar("_T")
_LOCATION_TOKEN = msgspec.json.Decoder(LocationToken)
_ACCESS_TOKEN = msgspec.json.Decoder(AccessToken)
_INSTALLED = msgspec.json.Decoder(InstalledLocationsPage)


def _decode(decoder: msgspec.json.Decoder[_T], body: bytes, what: str) -> _T:
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as exc:
        # The body may hold a token: the error carries msgspec's path, never the body.
        raise DecodeError(f"not a {what} reply: {exc}") from None


def decode_location_token(body: bytes) -> LocationToken:
    """Decode ``POST /oauth/locationToken``'s reply.

    Raises:
        ghl_async.errors.DecodeError: not JSON, or no string ``access_token``.
    """
    return _decode(_LOCATION_TOKEN, body, "locationToken")


def decode_access_token(body: bytes) -> AccessToken:
    """Decode ``POST /oauth/token``'s reply.

    Raises:
        ghl_async.errors.DecodeError: not JSON, or no string ``access_token``.
    """
    return _decode(_ACCESS_TOKEN, body, "token")


def decode_installed_locations(body: bytes) -> InstalledLocationsPage:
    """Decode a page of ``GET /oauth/installedLocations``.

    Raises:
        ghl_async.errors.DecodeError: not JSON, or a location without a string ``_id``.
    """
    return _decode(_INSTALLED, body, "installedLocations")


def location_token_form(company_id: str, location_id: str) -> dict[str, str]:
    """The form body of ``POST /oauth/locationToken`` (sent url-encoded)."""
    if not company_id or not location_id:
        raise ValueError("company_id and location_id must not be empty")
    return {"companyId": company_id, "locationId": location_id}


def installed_locations_params(
    company_id: str,
    app_id: str,
    *,
    skip: int = 0,
    limit: int = 100,
    is_installed: bool | None = True,
    query: str | None = None,
) -> dict[str, str]:
    """The query of ``GET /oauth/installedLocations``: one page from ``skip``.

    ``is_installed=True`` (the default) lists only the locations the app is in;
    ``None`` lists every location of the company.
    """
    if not company_id or not app_id:
        raise ValueError("company_id and app_id must not be empty")
    if skip < 0 or limit < 1:
        raise ValueError("skip must be >= 0 and limit >= 1")
    params = {"companyId": company_id, "appId": app_id, "skip": str(skip), "limit": str(limit)}
    if is_installed is not None:
        params["isInstalled"] = "true" if is_installed else "false"
    if query is not None:
        params["query"] = query
    return params


def next_skip(
    page: InstalledLocationsPage, skip: int, *, new: int | None = None, seen: int | None = None
) -> int | None:
    """The ``skip`` of the page after ``page`` (read at ``skip``), or ``None`` at the end.

    An empty page ends the list even when ``count`` says more: a count that moved while
    paging must not loop for ever. Given ``new`` (the page's locations not seen before)
    and ``seen`` (distinct locations so far), a page with nothing new ends it too (pages
    that repeat), and so does having seen ``count`` locations.
    """
    if not page.locations or new == 0:
        return None
    if seen is not None and seen >= page.count:
        return None
    following = skip + len(page.locations)
    return following if following < page.count else None


def refresh_token_form(
    client_id: str, client_secret: str, refresh_token: str, *, user_type: str = "Company"
) -> dict[str, str]:
    """The form body of ``POST /oauth/token`` for the refresh grant."""
    if not client_id or not client_secret or not refresh_token:
        raise ValueError("client_id, client_secret and refresh_token must not be empty")
    return {
        "client_id": client_id,
        "client_secret": client_secret,
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "user_type": user_type,
    }


def expires_at(expires_in: float, *, now: float, margin: float = DEFAULT_MARGIN) -> float:
    """When to treat a token as expired: ``now + expires_in`` less a safety margin.

    The margin is at most a tenth of the lifetime, so a short-lived token (a test's)
    is still used for most of its life rather than refreshed on every request.
    """
    if expires_in < 0 or margin < 0:
        raise ValueError("expires_in and margin must not be negative")
    return now + expires_in - min(margin, expires_in / 10)
