"""ghl_async.oauth: the OAuth wire models and pure helpers, by tables (no socket).

Reply bodies are shaped as ``oauth.openapi.json``'s examples.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ghl_async.errors import DecodeError
from ghl_async.oauth import (
    DEFAULT_MARGIN,
    AccessToken,
    InstalledLocation,
    InstalledLocationsPage,
    LocationToken,
    decode_access_token,
    decode_installed_locations,
    decode_location_token,
    expires_at,
    installed_locations_params,
    location_token_form,
    next_skip,
    refresh_token_form,
)

LOCATION_TOKEN = b"""{
  "access_token": "ab12dc0ae1234a7898f9ff06d4f69gh",
  "token_type": "Bearer",
  "expires_in": 86399,
  "scope": "conversations/message.readonly conversations/message.write",
  "locationId": "l1C08ntBrFjLS0elLIYU",
  "planId": "p1",
  "userId": "u1",
  "appId": "6578278e879ad2646715ba9c",
  "versionId": "v1",
  "aFieldAddedLater": {"nested": [1, 2]}
}"""

ACCESS_TOKEN = b"""{
  "access_token": "ab12dc0ae1234a7898f9ff06d4f69gh",
  "token_type": "Bearer",
  "expires_in": 86399,
  "refresh_token": "xy34dc0ae1234a4858f9ff06d4f66ba",
  "scope": "conversations/message.readonly",
  "userType": "Company",
  "companyId": "c1",
  "approvedLocations": ["l1", "l2"],
  "userId": "u1",
  "isBulkInstallation": true
}"""

INSTALLED = b"""{
  "locations": [
    {"_id": "0IHuJvc2ofPAAA8GzTRi", "name": "John Deo",
     "address": "47 W 13th St, New York, NY 10011, USA", "isInstalled": true,
     "versionId": "v1", "installedAt": "2024-01-15T10:30:00.000Z"},
    {"_id": "second", "name": "Two", "address": ""}
  ],
  "count": 1231,
  "installToFutureLocations": true
}"""


def test_location_token_decodes_the_documented_reply() -> None:
    assert decode_location_token(LOCATION_TOKEN) == LocationToken(
        access_token="ab12dc0ae1234a7898f9ff06d4f69gh",
        token_type="Bearer",
        expires_in=86399,
        scope="conversations/message.readonly conversations/message.write",
        location_id="l1C08ntBrFjLS0elLIYU",
        user_id="u1",
        plan_id="p1",
        app_id="6578278e879ad2646715ba9c",
        version_id="v1",
    )


def test_access_token_decodes_the_documented_reply() -> None:
    token = decode_access_token(ACCESS_TOKEN)
    assert token.refresh_token == "xy34dc0ae1234a4858f9ff06d4f66ba"
    assert (token.user_type, token.company_id, token.user_id) == ("Company", "c1", "u1")
    assert token.approved_locations == ("l1", "l2")
    assert token.location_id is None
    minimal = decode_access_token(b'{"access_token": "t"}')
    assert minimal == AccessToken(access_token="t")
    assert (minimal.expires_in, minimal.refresh_token) == (86399.0, None)


def test_installed_locations_decode_the_documented_reply() -> None:
    page = decode_installed_locations(INSTALLED)
    assert page.count == 1231
    assert page.install_to_future_locations is True
    assert page.locations == (
        InstalledLocation(
            id="0IHuJvc2ofPAAA8GzTRi",
            name="John Deo",
            address="47 W 13th St, New York, NY 10011, USA",
            is_installed=True,
            installed_at="2024-01-15T10:30:00.000Z",
            version_id="v1",
        ),
        InstalledLocation(id="second", name="Two", address=""),
    )
    assert decode_installed_locations(b"{}") == InstalledLocationsPage()


@pytest.mark.parametrize(
    ("decode", "body"),
    [
        (decode_location_token, b"<html>502</html>"),
        (decode_location_token, b'{"token_type": "Bearer"}'),
        (decode_location_token, b'{"access_token": 12}'),
        (decode_access_token, b"[]"),
        (decode_access_token, b'{"access_token": "t", "approvedLocations": "l1"}'),
        (decode_installed_locations, b'{"locations": [{"name": "no id"}]}'),
        (decode_installed_locations, b'{"locations": {}, "count": 1}'),
        (decode_installed_locations, b'{"count": "many"}'),
    ],
)
def test_bad_replies_raise_the_library_decode_error(
    decode: Callable[[bytes], object], body: bytes
) -> None:
    with pytest.raises(DecodeError, match=r"^not a [A-Za-z]+ reply: ") as caught:
        decode(body)
    assert caught.value.status is None
    assert not caught.value.retryable


def test_a_decode_error_never_carries_the_token() -> None:
    body = b'{"access_token": "SECRET-TOKEN", "expires_in": "soon"}'
    with pytest.raises(DecodeError) as caught:
        decode_location_token(body)
    assert "SECRET-TOKEN" not in str(caught.value)
    assert "SECRET-TOKEN" not in repr(caught.value)
    assert caught.value.body == b""


def test_reprs_hide_tokens() -> None:
    location = decode_location_token(LOCATION_TOKEN)
    access = decode_access_token(ACCESS_TOKEN)
    for shown in (repr(location), str(location), repr(access), repr([access])):
        assert "ab12dc0ae1234a7898f9ff06d4f69gh" not in shown
        assert "xy34dc0ae1234a4858f9ff06d4f66ba" not in shown
    assert "l1C08ntBrFjLS0elLIYU" in repr(location)
    assert "'Company'" in repr(access)


def test_location_token_form() -> None:
    assert location_token_form("c1", "l1") == {"companyId": "c1", "locationId": "l1"}
    for company, location in (("", "l1"), ("c1", "")):
        with pytest.raises(ValueError, match="must not be empty"):
            location_token_form(company, location)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, {"skip": "0", "limit": "100", "isInstalled": "true"}),
        ({"skip": 200, "limit": 50}, {"skip": "200", "limit": "50", "isInstalled": "true"}),
        ({"is_installed": False}, {"skip": "0", "limit": "100", "isInstalled": "false"}),
        ({"is_installed": None}, {"skip": "0", "limit": "100"}),
        (
            {"query": "north", "limit": 1},
            {"skip": "0", "limit": "1", "isInstalled": "true", "query": "north"},
        ),
    ],
)
def test_installed_locations_params(kwargs: dict[str, object], expected: dict[str, str]) -> None:
    params = installed_locations_params("c1", "a1", **kwargs)  # type: ignore[arg-type]
    assert params == {"companyId": "c1", "appId": "a1", **expected}


@pytest.mark.parametrize(
    ("company", "app", "skip", "limit"),
    [("", "a", 0, 1), ("c", "", 0, 1), ("c", "a", -1, 1), ("c", "a", 0, 0)],
)
def test_installed_locations_params_refuse_bad_values(
    company: str, app: str, skip: int, limit: int
) -> None:
    with pytest.raises(ValueError, match="must"):
        installed_locations_params(company, app, skip=skip, limit=limit)


def _page(items: int, count: int) -> InstalledLocationsPage:
    return InstalledLocationsPage(
        locations=tuple(InstalledLocation(id=str(i)) for i in range(items)), count=count
    )


@pytest.mark.parametrize(
    ("items", "count", "skip", "expected"),
    [
        (3, 7, 0, 3),  # a full page, more to come
        (3, 7, 3, 6),
        (1, 7, 6, None),  # the last page
        (3, 6, 3, None),  # a full last page: no empty page asked for
        (0, 7, 6, None),  # empty though count says more: stop, never loop
        (0, 0, 0, None),  # nothing installed
        (5, 3, 0, None),  # more items than count (count moved): the list has ended
    ],
)
def test_next_skip(items: int, count: int, skip: int, expected: int | None) -> None:
    assert next_skip(_page(items, count), skip) == expected


@given(count=st.integers(0, 500), limit=st.integers(1, 120))
def test_paging_with_next_skip_visits_each_location_once(count: int, limit: int) -> None:
    everyone = [str(i) for i in range(count)]
    seen: list[str] = []
    skip: int | None = 0
    requests = 0
    while skip is not None:
        chunk = everyone[skip : skip + limit]
        page = InstalledLocationsPage(
            locations=tuple(InstalledLocation(id=i) for i in chunk), count=count
        )
        seen.extend(location.id for location in page.locations)
        skip = next_skip(page, skip)
        requests += 1
    assert seen == everyone
    assert requests == max(1, -(-count // limit))


def test_refresh_token_form() -> None:
    assert refresh_token_form("id", "secret", "r1") == {
        "client_id": "id",
        "client_secret": "secret",
        "grant_type": "refresh_token",
        "refresh_token": "r1",
        "user_type": "Company",
    }
    assert refresh_token_form("id", "s", "r", user_type="Location")["user_type"] == "Location"
    with pytest.raises(ValueError, match="must not be empty"):
        refresh_token_form("id", "secret", "")


@pytest.mark.parametrize(
    ("expires_in", "now", "margin", "expected"),
    [
        (86399, 1000.0, DEFAULT_MARGIN, 1000.0 + 86399 - 300),  # live: 5 minutes early
        (86399, 0.0, 0.0, 86399.0),
        (60, 10.0, DEFAULT_MARGIN, 10.0 + 54),  # short-lived: a tenth of its life early
        (3000, 0.0, DEFAULT_MARGIN, 2700.0),  # the two rules meet
        (0, 5.0, DEFAULT_MARGIN, 5.0),  # already expired
    ],
)
def test_expires_at(expires_in: float, now: float, margin: float, expected: float) -> None:
    assert expires_at(expires_in, now=now, margin=margin) == pytest.approx(expected)


@given(
    expires_in=st.floats(0, 10**7, allow_nan=False),
    now=st.floats(0, 10**9, allow_nan=False),
    margin=st.floats(0, 10**5, allow_nan=False),
)
def test_expires_at_is_never_late_and_keeps_most_of_the_life(
    expires_in: float, now: float, margin: float
) -> None:
    at = expires_at(expires_in, now=now, margin=margin)
    assert at <= now + expires_in + 1e-6
    assert at >= now + 0.9 * expires_in - 1e-6


def test_expires_at_refuses_negative_values() -> None:
    with pytest.raises(ValueError, match="negative"):
        expires_at(-1, now=0.0)
    with pytest.raises(ValueError, match="negative"):
        expires_at(10, now=0.0, margin=-1)
