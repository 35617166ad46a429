"""An agency's locations: one client per location under the agency's token.

- ``locations``: :class:`Locations`, the fan-out over many locations and their mirrors;
- ``fanout``: every location's reads into one stream;
- ``inflight``: the cap on page requests at once, following the event loop's load;
- ``tokens``: location tokens minted from the agency's token.
"""

from ghl_async.agency.locations import (
    AgencyToken,
    Locations,
    LocationTokenProvider,
    location_concurrency,
    route_filter,
    workers_per_location,
)

__all__ = [
    "AgencyToken",
    "LocationTokenProvider",
    "Locations",
    "location_concurrency",
    "route_filter",
    "workers_per_location",
]
