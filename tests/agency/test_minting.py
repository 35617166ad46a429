"""Location tokens minted as a budgeted service: a queue of mints fails nobody.

Against FakeAgency over a real socket, with its hostile knobs: mints that hang, a mint
budget, mint replies for the wrong location or with a nonsense lifetime, and an
installed-locations listing that repeats itself.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from ghl_async import AgencyToken, Locations, RateLimit, RetryPolicy, errors
from ghl_async.agency.tokens import MAX_LIFETIME, check_minted
from ghl_async.oauth import LocationToken
from ghl_async.testing import FakeAgency

pytestmark = pytest.mark.anyio


def auth_of(agency: FakeAgency) -> AgencyToken:
    return AgencyToken(agency.agency_token, company_id=agency.company_id, app_id=agency.app_id)


async def read_all(pool: Locations, agency: FakeAgency) -> tuple[Counter[str], list[str]]:
    """Messages per location, and the locations that failed."""
    got: Counter[str] = Counter()
    failed: list[str] = []
    pages = pool.fan_out_pages(locations=agency.location_ids, return_exceptions=True)
    async for location_id, _, item in pages:
        if isinstance(item, errors.GHLError):
            failed.append(location_id)
        else:
            got[location_id] += len(item.messages)
    return got, failed


def totals(agency: FakeAgency) -> Counter[str]:
    return Counter({lid: fake.total_messages for lid, fake in agency.locations.items()})


async def test_hanging_mints_make_no_healthy_location_fail() -> None:
    async with FakeAgency(12, conversations=2, messages=(1, 10), seed=31) as agency:
        agency.hang_mints = 4  # four mint requests never answer: all four slots taken
        async with Locations(auth_of(agency), base_url=agency.url, timeout=0.5) as pool:
            got, failed = await read_all(pool, agency)
            progress = pool.mints
        # Before: every location behind the four hung mints failed with "the token
        # provider gave no token within 0.5 s". Now they wait their turn; the hung
        # requests time out and are sent again.
        assert failed == []
        assert got == totals(agency)
        assert progress is not None and progress.minted == 12 and progress.waiting == 0


async def test_a_mint_budget_queues_locations_without_failing_them() -> None:
    async with FakeAgency(40, conversations=1, messages=(1, 5), seed=32) as agency:
        agency.mint_rate = RateLimit(20, 1.0)  # 40 mints take two seconds at least
        started = time.monotonic()
        async with Locations(auth_of(agency), base_url=agency.url, timeout=0.5) as pool:
            got, failed = await read_all(pool, agency)
        assert failed == []
        assert got == totals(agency)
        assert time.monotonic() - started >= 1.0  # the budget was honoured, not skipped
        assert agency.stats.location_tokens == Counter(dict.fromkeys(agency.location_ids, 1))


async def test_a_bad_mint_reply_is_that_locations_error_only() -> None:
    async with FakeAgency(5, conversations=2, messages=(1, 10), seed=33) as agency:
        short, other, *healthy = agency.location_ids
        agency.mint_overrides[short] = {"expires_in": -1}
        agency.mint_overrides[other] = {"locationId": healthy[0]}
        once = RetryPolicy(max_attempts=1)
        async with Locations(auth_of(agency), base_url=agency.url, retry=once) as pool:
            got, failed = await read_all(pool, agency)
            errors_seen: list[errors.GHLError] = []
            async for _, _, item in pool.fan_out_pages(locations=[other], return_exceptions=True):
                assert isinstance(item, errors.GHLError)
                errors_seen.append(item)
        assert sorted(failed) == sorted([short, other])
        assert {lid: got[lid] for lid in healthy} == {lid: totals(agency)[lid] for lid in healthy}
        (error,) = errors_seen
        assert isinstance(error, errors.DecodeError) and "names location" in str(error)
        # The other location's messages were never read under the wrong label.
        assert got[other] == 0


def test_check_minted_refuses_what_cannot_be_a_token_for_the_location() -> None:
    good = LocationToken(access_token="t", expires_in=86399.0, location_id="L1")
    assert check_minted(good, "L1") is good
    assert check_minted(LocationToken(access_token="t"), "L1").expires_in == 86399.0
    for lifetime in (-1.0, 0.0, float("nan"), float("inf"), MAX_LIFETIME + 1):
        with pytest.raises(errors.DecodeError, match="expires_in"):
            check_minted(LocationToken(access_token="t", expires_in=lifetime), "L1")
    with pytest.raises(errors.DecodeError, match="names location L2"):
        check_minted(LocationToken(access_token="t", location_id="L2"), "L1")


async def test_a_token_is_refreshed_ahead_in_the_background() -> None:
    now = [0.0]
    async with FakeAgency(1, conversations=0, token_ttl=1000.0) as agency:
        (location,) = agency.location_ids
        async with Locations(auth_of(agency), base_url=agency.url, clock=lambda: now[0]) as pool:
            first = await pool.location_token(location)
            now[0] = 850.0  # past nine tenths of its usable life: still good, refreshed
            assert await pool.location_token(location) == first
            for _ in range(50):
                if agency.stats.location_tokens[location] == 2:
                    break
                await asyncio.sleep(0.01)
            assert agency.stats.location_tokens[location] == 2
            now[0] = 950.0  # the first one is past its expiry: the new one, no wait
            second = await pool.location_token(location)
            assert second != first
            assert agency.stats.location_tokens[location] == 2


async def test_mint_wait_bounds_the_queue_in_one_line() -> None:
    async with FakeAgency(2, conversations=1, seed=34) as agency:
        agency.hang_mints = 10
        async with Locations(
            auth_of(agency), base_url=agency.url, timeout=5.0, mint_wait=0.3
        ) as pool:
            with pytest.raises(errors.AuthenticationError, match="within mint_wait"):
                await pool.location_token(agency.location_ids[0])
            progress = pool.mints
        assert progress is not None and progress.failed == 1 and progress.waiting == 0


async def test_installed_locations_that_repeat_or_claim_too_many_end_once_each() -> None:
    async with FakeAgency(7, uninstalled=0, conversations=0, seed=35) as agency:
        agency.installed_repeat = 2  # every page after the first overlaps by two
        agency.installed_count = 10**9  # and claims a billion
        async with Locations(auth_of(agency), base_url=agency.url) as pool:
            listed = [location.id async for location in pool.installed_locations(page_size=3)]
        assert listed == agency.location_ids
        # Pages of 3 stepping by 1 (3 - 2 repeated): ends at the page with nothing new.
        assert agency.stats.oauth["installed_locations"] <= 7
