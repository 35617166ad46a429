"""The client's machinery under :class:`~ghl_async.Client`: the transport seam and its
aiohttp transport, the request engine (limiter, retries, auth), paging and the fan-out.

Private: nothing here is public API. Each file is one concern:

- ``transport``: the seam (a request in, status, headers and body out);
- ``aiohttp_transport``: the one module that speaks aiohttp;
- ``engine``: one request through the limiter, the retry policy and the token source;
- ``auth``: where tokens come from;
- ``lifecycle``: open, close and reopen under a new event loop (Client and Locations);
- ``paginate``: the one loop that pages every endpoint;
- ``export_route``: the location export route's two passes and resume tokens (pure);
- ``fanout``: many conversations at once, into one consumer;
- ``emails``: email bodies attached to their messages.
"""
