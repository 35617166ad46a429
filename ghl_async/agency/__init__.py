"""An agency's locations: one client per location under the agency's token.

- ``locations``: :class:`Locations`, the fan-out over many locations and their mirrors;
- ``fanout``: every location's reads into one stream;
- ``inflight``: the cap on page requests at once, following the event loop's load;
- ``tokens``: location tokens minted from the agency's token, as a budgeted service
  (:class:`MintProgress` is what :attr:`Locations.mints` reports).
"""

from ghl_async.agency.locations import (
    AgencyToken,
    Locations,
    LocationTokenProvider,
    location_concurrency,
    route_filter,
    workers_per_location,
)
from ghl_async.agency.tokens import MintProgress

__all__ = [
    "AgencyToken",
    "LocationTokenProvider",
    "Locations",
    "MintProgress",
    "location_concurrency",
    "route_filter",
    "workers_per_location",
]
