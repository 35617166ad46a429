"""An agency's tokens minted at its budget: the time to every location's first page.

A :class:`ghl_async.testing.FakeAgency` of N locations whose mint route has the agency's
budget (HighLevel's 100 per 10 s, compressed here to 100 per ``INTERVAL`` s so a run takes
seconds), read whole through :class:`ghl_async.Locations` with every location started at
once. Each location needs one mint before its first page, so the budget allows the k-th
location's first page at ``(k // 100) * INTERVAL`` at best; the table compares the time
the last location's first page came with that, and counts failed locations (the target:
none) and mints (one per location).
"""

from __future__ import annotations

import asyncio
import time

from ghl_async import AgencyToken, Locations, RateLimit, errors
from ghl_async.testing import FakeAgency

from ._report import Section

INTERVAL = 0.5  # seconds standing for HighLevel's 10: 20 times faster
BUDGET = RateLimit(100, INTERVAL)


async def _measure(locations: int) -> list[object]:
    async with FakeAgency(locations, conversations=1, messages=(1, 3), seed=7) as agency:
        agency.mint_rate = BUDGET
        auth = AgencyToken(agency.agency_token, company_id=agency.company_id)
        first: dict[str, float] = {}
        failed: set[str] = set()
        async with Locations(
            auth,
            base_url=agency.url,
            oauth_rate_limit=BUDGET,
            rate_limit=RateLimit(100, INTERVAL),
            timeout=2.0,  # a token timeout that would have failed most before
        ) as pool:
            started = time.perf_counter()
            pages = pool.fan_out_pages(locations=agency.location_ids, return_exceptions=True)
            async for location_id, _, item in pages:
                if isinstance(item, errors.GHLError):
                    failed.add(location_id)
                else:
                    first.setdefault(location_id, time.perf_counter() - started)
            minted = pool.mints.minted if pool.mints is not None else 0
        ideal = ((locations - 1) // BUDGET.max_requests) * INTERVAL
        last = max(first.values(), default=0.0)
        return [
            locations,
            len(failed),
            minted,
            agency.stats.oauth["location_token"],
            ideal,
            last,
            last / ideal if ideal else 0.0,
        ]


def run(smoke: bool) -> Section:
    """The table; ``smoke``: 200 locations, else 200 and 1,000."""
    section = Section(
        title="An agency's tokens minted at its budget",
        what=f"FakeAgency with a mint budget of {BUDGET.max_requests} per {INTERVAL:g} s "
        "(HighLevel's 100 per 10 s, 20 times faster), every location started at once, "
        "a 2 s request timeout. 'ideal s': when the budget lets the last location's mint "
        "through; 'last first page s': when it came.",
        columns=[
            "locations",
            "failed",
            "minted",
            "mint requests",
            "ideal s",
            "last first page s",
            "of ideal",
        ],
    )
    for count in (200,) if smoke else (200, 1_000):
        section.rows.append(asyncio.run(_measure(count)))
    failed = sum(int(row[1]) for row in section.rows)
    section.notes.append(
        f"{failed} locations failed (target: 0). Each location waits its turn for a mint; "
        "the request timeout bounds the mint request, not the queue (mint_wait does)."
    )
    return section


if __name__ == "__main__":
    import sys

    print(run("--smoke" in sys.argv).markdown())
