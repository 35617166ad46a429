"""FakeAgency over a real socket with plain aiohttp: per-location budgets and OAuth routes.

The OAuth shapes are those of ``oauth.openapi.json``; the replies are read with
``ghl_async.oauth``'s decoders, so the wire models and the fake are checked together.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ghl_async import Client
from ghl_async.oauth import (
    INSTALLED_LOCATIONS_PATH,
    LOCATION_TOKEN_PATH,
    OAUTH_VERSION,
    TOKEN_PATH,
    decode_access_token,
    decode_installed_locations,
    decode_location_token,
    installed_locations_params,
    location_token_form,
    next_skip,
    refresh_token_form,
)
from ghl_async.ratelimit import RateLimit
from ghl_async.testing import FakeAgency, FakeHighLevel

pytestmark = pytest.mark.anyio

API = {"Version": "2021-04-15"}
UNAUTHORIZED = {
    "statusCode": 401,
    "message": "Invalid token: access token is invalid",
    "error": "Unauthorized",
}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    token: str | None,
    *,
    version: str | None = OAUTH_VERSION,
    **kwargs: Any,
) -> tuple[int, bytes, dict[str, str]]:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if version is not None:
        headers["Version"] = version
    async with session.request(method, url, headers=headers, **kwargs) as response:
        return response.status, await response.read(), dict(response.headers)


async def search(
    session: aiohttp.ClientSession, agency: FakeAgency, token: str, location_id: str
) -> tuple[int, bytes, dict[str, str]]:
    return await call(
        session,
        "GET",
        f"{agency.url}/conversations/search",
        token,
        version=API["Version"],
        params={"locationId": location_id},
    )


async def mint(session: aiohttp.ClientSession, agency: FakeAgency, location_id: str) -> str:
    status, body, _ = await call(
        session,
        "POST",
        agency.url + LOCATION_TOKEN_PATH,
        agency.agency_token,
        data=location_token_form(agency.company_id, location_id),
    )
    assert status == 200, body
    token = decode_location_token(body)
    assert token.location_id == location_id
    assert token.token_type == "Bearer"
    assert token.expires_in == agency.token_ttl
    assert token.user_id == agency.user_id
    return token.access_token


async def test_each_location_has_its_own_budget(session: aiohttp.ClientSession) -> None:
    async with FakeAgency(3, conversations=2, rate_limit=RateLimit(5, 10.0)) as agency:
        a, b, c = (agency.locations[i] for i in agency.location_ids)
        for expected_remaining in range(4, -1, -1):
            status, _, headers = await search(session, agency, a.token, a.location_id)
            assert status == 200
            assert headers["X-RateLimit-Remaining"] == str(expected_remaining)
        status, body, headers = await search(session, agency, a.token, a.location_id)
        assert status == 429
        assert json.loads(body)["message"] == "Too many requests"
        assert headers["X-RateLimit-Remaining"] == "0"
        # A at its limit: B's budget and daily counter are untouched.
        status, _, headers = await search(session, agency, b.token, b.location_id)
        assert status == 200
        assert headers["X-RateLimit-Remaining"] == "4"
        assert headers["X-RateLimit-Daily-Remaining"] == str(200_000 - 1)
        assert (a.stats.throttled, b.stats.throttled, c.stats.throttled) == (1, 0, 0)
        assert agency.throttled == 1
        assert agency.max_in_window == {a.location_id: 6, b.location_id: 1, c.location_id: 0}
        assert (a.stats.requests, b.stats.requests, c.stats.requests) == (6, 1, 0)
        # The window passes on the fake clock, not by sleeping.
        agency.advance(10.0)
        status, _, headers = await search(session, agency, a.token, a.location_id)
        assert status == 200
        assert headers["X-RateLimit-Remaining"] == "4"


async def test_budgets_stay_apart_under_concurrent_load(session: aiohttp.ClientSession) -> None:
    async with FakeAgency(4, conversations=1, rate_limit=RateLimit(10, 10.0)) as agency:
        fakes = list(agency.locations.values())
        # Location i sends 5 * (i + 1) requests at once: 5, 10, 15, 20 against 10 each.
        replies = await asyncio.gather(
            *(
                search(session, agency, fake.token, fake.location_id)
                for i, fake in enumerate(fakes)
                for _ in range(5 * (i + 1))
            )
        )
        statuses = [status for status, _, _ in replies]
        assert statuses.count(200) == 5 + 10 + 10 + 10
        assert [fake.stats.throttled for fake in fakes] == [0, 0, 5, 10]
        assert [fake.stats.served for fake in fakes] == [5, 10, 10, 10]


async def test_a_location_token_works_for_its_location_only(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeAgency(2, conversations=3, messages=4, seed=3) as agency:
        a, b = (agency.locations[i] for i in agency.location_ids)
        token = await mint(session, agency, a.location_id)
        assert agency.stats.location_tokens[a.location_id] == 1
        status, body, _ = await search(session, agency, token, a.location_id)
        assert status == 200
        assert {c["id"] for c in json.loads(body)["conversations"]} == set(a.conversation_ids)
        # The same token against B: 403 for B's location id, 404 for B's conversations.
        status, body, _ = await search(session, agency, token, b.location_id)
        assert status == 403
        assert json.loads(body)["error"] == "Forbidden"
        status, _, _ = await call(
            session,
            "GET",
            f"{agency.url}/conversations/{b.conversation_ids[0]}/messages",
            token,
            version=API["Version"],
        )
        assert status == 404
        # A token's requests count against its own location's budget, never another's.
        assert a.stats.by_route == {"search": 2, "messages": 1}
        assert b.stats.requests == 0
        # The agency token mints tokens; it reads no location's conversations.
        status, body, _ = await search(session, agency, agency.agency_token, a.location_id)
        assert status == 401
        assert json.loads(body)["message"] == "The token is not authorized for this scope."
        status, body, _ = await search(session, agency, "made-up", a.location_id)
        assert (status, json.loads(body)) == (401, UNAUTHORIZED)
        assert agency.stats.unauthorized == 2
        # The library's own client reads a location with a minted token.
        first = a.conversation_ids[0]
        async with Client(token, base_url=agency.url) as client:
            page = await client.get_messages(first)
        assert [m.id for m in page.messages] == [m["id"] for m in a.messages(first)]
        assert a.stats.by_conversation[first] == 1


@pytest.mark.parametrize(
    ("form", "headers", "status", "message"),
    [
        ("ok", {"Version": "2021-04-15"}, 400, "version header was not found"),
        ("ok", {"Authorization": "Bearer nope"}, 401, "Invalid token: access token is invalid"),
        ({"companyId": "x"}, {}, 422, ["locationId should not be empty"]),
        ({"locationId": "x"}, {}, 422, ["companyId should not be empty"]),
        ("other-company", {}, 403, "The token does not have access to this company"),
        ("uninstalled", {}, 400, "The app is not installed in this location"),
    ],
)
async def test_location_token_refusals(
    session: aiohttp.ClientSession,
    form: Any,
    headers: dict[str, str],
    status: int,
    message: Any,
) -> None:
    async with FakeAgency(1, conversations=0, uninstalled=1) as agency:
        installed, uninstalled = agency.directory
        body = (
            {
                "ok": {"companyId": agency.company_id, "locationId": installed.id},
                "other-company": {"companyId": "another", "locationId": installed.id},
                "uninstalled": {"companyId": agency.company_id, "locationId": uninstalled.id},
            }.get(form, form)
            if isinstance(form, str)
            else form
        )
        sent = {
            "Authorization": f"Bearer {agency.agency_token}",
            "Version": OAUTH_VERSION,
            **headers,
        }
        async with session.post(
            agency.url + LOCATION_TOKEN_PATH, data=body, headers=sent
        ) as response:
            assert response.status == status
            reply = await response.json()
        assert reply["statusCode"] == status
        assert reply["message"] == message
        assert not agency.stats.location_tokens


async def test_installed_locations_pages_to_the_end(session: aiohttp.ClientSession) -> None:
    async with FakeAgency(7, conversations=0, uninstalled=3, seed=5) as agency:

        async def list_all(limit: int, is_installed: bool | None) -> tuple[list[str], int]:
            seen: list[str] = []
            skip: int | None = 0
            pages = 0
            while skip is not None:
                status, body, _ = await call(
                    session,
                    "GET",
                    agency.url + INSTALLED_LOCATIONS_PATH,
                    agency.agency_token,
                    params=installed_locations_params(
                        agency.company_id,
                        agency.app_id,
                        skip=skip,
                        limit=limit,
                        is_installed=is_installed,
                    ),
                )
                assert status == 200, body
                page = decode_installed_locations(body)
                assert len(page.locations) <= limit
                assert page.install_to_future_locations is True
                for location in page.locations:
                    assert location.is_installed is (location.id in agency.locations)
                    assert (location.installed_at is None) is (not location.is_installed)
                    assert location.name
                    assert location.address
                seen.extend(location.id for location in page.locations)
                skip = next_skip(page, skip)
                pages += 1
            return seen, pages

        assert await list_all(3, True) == (agency.location_ids, 3)
        assert await list_all(100, True) == (agency.location_ids, 1)
        everyone = [info.id for info in agency.directory]
        assert await list_all(4, None) == (everyone, 3)
        assert await list_all(2, False) == (everyone[7:], 2)
        assert agency.stats.oauth["installed_locations"] == 3 + 1 + 3 + 2


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"appId": "A"}, 422),
        ({"companyId": "C"}, 422),
        ({"companyId": "other", "appId": "A"}, 403),
        ({"companyId": "C", "appId": "other"}, 400),
        ({"companyId": "C", "appId": "A", "limit": "0"}, 422),
        ({"companyId": "C", "appId": "A", "skip": "-1"}, 422),
        ({"companyId": "C", "appId": "A", "skip": "many"}, 422),
    ],
)
async def test_installed_locations_refusals(
    session: aiohttp.ClientSession, params: dict[str, str], status: int
) -> None:
    async with FakeAgency(2, conversations=0) as agency:
        sent = {
            k: {"C": agency.company_id, "A": agency.app_id}.get(v, v) for k, v in params.items()
        }
        got, body, _ = await call(
            session, "GET", agency.url + INSTALLED_LOCATIONS_PATH, agency.agency_token, params=sent
        )
        assert got == status
        assert json.loads(body)["statusCode"] == status


async def test_installed_locations_search_by_name_and_id(session: aiohttp.ClientSession) -> None:
    async with FakeAgency(12, conversations=0) as agency:
        url = agency.url + INSTALLED_LOCATIONS_PATH
        base = installed_locations_params(agency.company_id, agency.app_id, query="location 001")
        _, body, _ = await call(session, "GET", url, agency.agency_token, params=base)
        page = decode_installed_locations(body)
        assert [loc.name for loc in page.locations] == [f"Location {i:04d}" for i in range(10, 13)]
        one = agency.location_ids[4]
        _, body, _ = await call(
            session,
            "GET",
            url,
            agency.agency_token,
            params={**base, "query": "", "locationId": one},
        )
        assert [loc.id for loc in decode_installed_locations(body).locations] == [one]


async def test_refresh_spends_the_old_refresh_token(session: aiohttp.ClientSession) -> None:
    async with FakeAgency(2, conversations=0) as agency:
        old_access, old_refresh = agency.agency_token, agency.refresh_token
        form = refresh_token_form(agency.client_id, agency.client_secret, old_refresh)
        status, body, _ = await call(session, "POST", agency.url + TOKEN_PATH, None, data=form)
        assert status == 200, body
        grant = decode_access_token(body)
        assert grant.access_token not in (old_access, "")
        assert grant.refresh_token not in (old_refresh, None)
        assert (grant.user_type, grant.company_id) == ("Company", agency.company_id)
        assert grant.approved_locations == tuple(agency.location_ids)
        assert (agency.agency_token, agency.refresh_token) == (
            grant.access_token,
            grant.refresh_token,
        )
        # The old refresh token is spent.
        status, body, _ = await call(session, "POST", agency.url + TOKEN_PATH, None, data=form)
        assert status == 400
        assert json.loads(body)["message"] == "Invalid grant: refresh token is invalid"
        # The new access token mints location tokens; the new refresh token refreshes.
        await mint(session, agency, agency.location_ids[0])
        assert grant.refresh_token is not None
        again = refresh_token_form(agency.client_id, agency.client_secret, grant.refresh_token)
        status, _, _ = await call(session, "POST", agency.url + TOKEN_PATH, None, data=again)
        assert status == 200
        assert agency.stats.refreshes == 2
        # Wrong client credentials; a grant the fake does not serve.
        bad = {**again, "client_secret": "wrong"}
        status, _, _ = await call(session, "POST", agency.url + TOKEN_PATH, None, data=bad)
        assert status == 401
        code = {**again, "grant_type": "authorization_code"}
        status, _, _ = await call(session, "POST", agency.url + TOKEN_PATH, None, data=code)
        assert status == 422
        status, _, _ = await call(
            session, "POST", agency.url + TOKEN_PATH, None, data={"grant_type": "refresh_token"}
        )
        assert status == 422


async def test_tokens_expire_after_token_ttl(session: aiohttp.ClientSession) -> None:
    async with FakeAgency(2, conversations=1, messages=2, token_ttl=60.0) as agency:
        a = agency.locations[agency.location_ids[0]]
        token = await mint(session, agency, a.location_id)
        agency.advance(59.0)
        assert (await search(session, agency, token, a.location_id))[0] == 200
        agency.advance(1.0)
        status, body, _ = await search(session, agency, token, a.location_id)
        assert (status, json.loads(body)) == (401, UNAUTHORIZED)
        # The static token (a Private Integration Token) does not expire.
        assert (await search(session, agency, a.token, a.location_id))[0] == 200
        # Nor does the agency token live on: minting needs a refresh now.
        status, body, _ = await call(
            session,
            "POST",
            agency.url + LOCATION_TOKEN_PATH,
            agency.agency_token,
            data=location_token_form(agency.company_id, a.location_id),
        )
        assert (status, json.loads(body)) == (401, UNAUTHORIZED)
        form = refresh_token_form(agency.client_id, agency.client_secret, agency.refresh_token)
        status, _, _ = await call(session, "POST", agency.url + TOKEN_PATH, None, data=form)
        assert status == 200
        fresh = await mint(session, agency, a.location_id)
        assert (await search(session, agency, fresh, a.location_id))[0] == 200


async def test_stats_of_every_location_over_http(session: aiohttp.ClientSession) -> None:
    async with FakeAgency(3, conversations=2, messages=3) as agency:
        a = agency.locations[agency.location_ids[0]]
        await search(session, agency, a.token, a.location_id)
        async with session.get(f"{agency.url}/_fake/stats") as response:
            stats = await response.json()
        assert stats["companyId"] == agency.company_id
        assert stats["totalMessages"] == 3 * 2 * 3
        assert set(stats["locations"]) == set(agency.location_ids)
        assert stats["locations"][a.location_id]["requests"] == 1
        assert stats["locations"][a.location_id]["maxInWindow"] == 1
        assert stats["locations"][agency.location_ids[1]]["requests"] == 0
        assert stats["throttled"] == 0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        FakeAgency(0)
    with pytest.raises(ValueError, match="uninstalled"):
        FakeAgency(1, uninstalled=-1)
    with pytest.raises(ValueError, match="token_ttl"):
        FakeAgency(1, token_ttl=0)
    with pytest.raises(ValueError, match="location_id"):
        FakeAgency(1, location_options={"location_id": "x"})
    agency = FakeAgency(2, conversations=0)
    assert "agency-" not in repr(agency)
    with pytest.raises(ValueError, match="forward"):
        agency.advance(-1)


async def test_serve_fake_locations_writes_what_tests_need(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    info_file = tmp_path / "fake.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ghl_async",
        "serve-fake",
        "--port",
        "0",
        "--locations",
        "3",
        "--uninstalled",
        "1",
        "--conversations",
        "2",
        "--messages",
        "3",
        "--rate",
        "4/10s",
        "--token-ttl",
        "600",
        "--info",
        str(info_file),
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        lines = [(await process.stdout.readline()).decode() for _ in range(8)]
        info = json.loads(info_file.read_text())  # written before the first line
        assert lines[0].strip() == f"FakeHighLevel listening on {info['url']}"
        assert lines[1].strip() == f"company: {info['companyId']}"
        assert lines[3].strip() == f"agency token: {info['agencyToken']}"
        ids = [location["id"] for location in info["locations"]]
        assert len(ids) == 3
        assert [line.split()[1] for line in lines[4:7]] == ids
        assert lines[7].strip() == "locations: 3, messages: 18"
        assert info["tokenTtl"] == 600
        # Another process reaches the agency with what the file holds.
        status, body, _ = await call(
            session,
            "POST",
            info["url"] + LOCATION_TOKEN_PATH,
            info["agencyToken"],
            data=location_token_form(info["companyId"], ids[2]),
        )
        assert status == 200
        token = decode_location_token(body)
        assert token.expires_in == 600
        for _ in range(4):
            status, _, _ = await call(
                session,
                "GET",
                f"{info['url']}/conversations/search",
                token.access_token,
                version="2021-04-15",
                params={"locationId": ids[2]},
            )
            assert status == 200
        async with session.get(f"{info['url']}/_fake/stats") as response:
            stats = await response.json()
        assert stats["locations"][ids[2]]["maxInWindow"] == 4
        assert stats["locations"][ids[0]]["requests"] == 0
        status, body, _ = await call(
            session,
            "GET",
            info["url"] + INSTALLED_LOCATIONS_PATH,
            info["agencyToken"],
            params=installed_locations_params(info["companyId"], info["appId"], is_installed=None),
        )
        assert decode_installed_locations(body).count == 4
    finally:
        process.terminate()
        await process.communicate()


async def test_serve_fake_info_for_one_location(tmp_path: Path) -> None:
    info_file = tmp_path / "one.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ghl_async",
        "serve-fake",
        "--port",
        "0",
        "--conversations",
        "2",
        "--messages",
        "1",
        "--token",
        "tok",
        "--info",
        str(info_file),
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        first = (await process.stdout.readline()).decode()
        info = json.loads(info_file.read_text())
        assert first.strip().endswith(info["url"])
        assert info["token"] == "tok"
        assert info["locations"][0]["token"] == "tok"
        assert info["locations"][0]["messages"] == 2
    finally:
        process.terminate()
        await process.communicate()


async def test_serve_fake_refuses_a_token_for_an_agency() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ghl_async",
        "serve-fake",
        "--port",
        "0",
        "--locations",
        "2",
        "--token",
        "tok",
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    assert process.returncode == 2
    assert b"--token is for one location" in err


async def test_info_and_an_agency_route_without_the_agency_token(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeAgency(2, conversations=1, messages=2, uninstalled=1) as agency:
        info = agency.info()
        assert (info["url"], info["companyId"], info["appId"]) == (
            agency.url,
            agency.company_id,
            agency.app_id,
        )
        assert [loc["id"] for loc in info["locations"]] == agency.location_ids
        assert [loc["token"] for loc in info["locations"]] == [
            agency.locations[i].token for i in agency.location_ids
        ]
        assert [loc["messages"] for loc in info["locations"]] == [2, 2]
        assert len(agency.directory) == 3
        params = installed_locations_params(agency.company_id, agency.app_id)
        url = agency.url + INSTALLED_LOCATIONS_PATH
        # A location's token is not the agency's.
        status, body, _ = await call(
            session, "GET", url, agency.locations[agency.location_ids[0]].token, params=params
        )
        assert (status, json.loads(body)) == (401, UNAUTHORIZED)
        status, _, _ = await call(session, "GET", url, None, params=params)
        assert status == 401


async def test_a_lone_fake_moves_its_clock_instead_of_sleeping(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeHighLevel(conversations=1, rate_limit=RateLimit(2, 10.0)) as fake:
        query = {"locationId": fake.location_id}
        url = f"{fake.url}/conversations/search"
        statuses = [
            (await call(session, "GET", url, fake.token, version=API["Version"], params=query))[0]
            for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
        fake.advance(10.0)
        status, _, _ = await call(
            session, "GET", url, fake.token, version=API["Version"], params=query
        )
        assert status == 200
        # Not a Bearer header: refused as an invalid token.
        async with session.get(
            url, params=query, headers={"Authorization": fake.token, **API}
        ) as response:
            assert response.status == 401
        with pytest.raises(ValueError, match="forward"):
            fake.advance(-0.5)
