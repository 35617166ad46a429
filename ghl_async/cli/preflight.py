"""One request before any file is created: the URL, the token and the location checked.

A command that writes (``export``, ``sync``) asks the server once before it opens its
output, so a wrong ``--base-url``, a server that is not HighLevel, a refused token or a
location the token cannot read ends in one line naming the likely cause, exit 2, and
nothing on disk. The request goes through a client of its own (two attempts, short
backoff: an unreachable host is said in a second or two, not after a full retry
schedule), which shares the command's rate limiter (one limiter per token in a process),
so the request counts against the budget like any other.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import Final

from ghl_async import errors
from ghl_async._logging import get_logger
from ghl_async.cli.args import ENV_BASE_URL, ENV_LOCATION
from ghl_async.cli.exits import EXIT_FAILED, EXIT_USAGE, CommandExit
from ghl_async.client import Client
from ghl_async.retry import RetryPolicy

__all__ = ["check_access", "looks_like_highlevel"]

logger: Final = get_logger("cli")

_QUICK: Final = RetryPolicy(max_attempts=2, backoff_base=0.2, backoff_cap=0.5)
_CHECK_URL: Final = f"check --base-url or {ENV_BASE_URL}"


def looks_like_highlevel(exc: errors.GHLError) -> bool:
    """Whether an error reply came from HighLevel: its errors are JSON objects."""
    body = exc.body.lstrip()
    return body.startswith(b"{") or exc.trace_id is not None


def _unreachable(base_url: str, exc: errors.GHLError) -> CommandExit:
    detail = exc.message
    if "DNSError" in detail or "Name or service not known" in detail:
        why = "no such host"
    elif "SSLError" in detail or "CERTIFICATE" in detail.upper():
        why = "the TLS handshake failed: the server may speak plain http"
    elif "Connect call failed" in detail or "Connection refused" in detail:
        why = "connection refused: nothing listens there"
    elif "imeout" in detail:
        why = "no answer in time"
    else:
        why = detail
    return CommandExit(EXIT_USAGE, f"cannot reach {base_url} ({why}); {_CHECK_URL}")


def _not_highlevel(base_url: str, exc: errors.GHLError, path: str) -> CommandExit:
    status = f"HTTP {exc.status} " if exc.status is not None else ""
    answer = exc.message.strip().splitlines()[0][:80] if exc.message.strip() else "no JSON"
    return CommandExit(
        EXIT_USAGE,
        f"{base_url} does not look like HighLevel's API (GET {path} answered "
        f"{status}{answer!r}); {_CHECK_URL}",
    )


async def _check_location(client: Client, location_id: str) -> None:
    """One page of ten messages from the location export; its search if refused.

    The export route answers for the token, the URL and the location at once. Where it
    is refused (a token without its scope, a plan without it: the run falls back to
    search), the search answers instead, as the fallback will ask it anyway.
    """
    pages = client.iter_location_pages(location_id, page_size=10)
    try:
        async with aclosing(pages):
            async for _ in pages:
                return
    except errors.LocationExportUnavailable:
        pass
    search = client.iter_conversations(location_id, page_size=1)
    async with aclosing(search):
        async for _ in search:
            return


async def check_access(
    token: str,
    base_url: str,
    *,
    location_id: str | None = None,
    conversation_id: str | None = None,
) -> None:
    """Ask the server once; raise :class:`CommandExit` with the likely cause if refused.

    With ``location_id``: one conversation search of that location (the token, the URL
    and the location at once). Otherwise with ``conversation_id``: that conversation's
    newest message (its own 404 is left to the export, which reports it per
    conversation). A 429 or a daily budget spent is left to the command as well.
    """
    path = "/conversations/messages/export" if location_id else "/conversations/{id}/messages"
    async with Client(token, base_url=base_url, retry=_QUICK, max_concurrency=1) as client:
        try:
            if location_id is not None:
                await _check_location(client, location_id)
            elif conversation_id is not None:
                await client.get_messages(conversation_id, limit=1)
            else:
                return
        except errors.RateLimitError:
            logger.info("%s answers (busy: a 429); starting", base_url)
            return  # the server is HighLevel and answers: the run waits its turn
        except errors.TransportError as exc:
            raise _unreachable(base_url, exc) from None
        except errors.DecodeError as exc:
            raise _not_highlevel(base_url, exc, path) from None
        except errors.AuthenticationError as exc:
            if not looks_like_highlevel(exc):
                raise _not_highlevel(base_url, exc, path) from None
            raise CommandExit(
                EXIT_USAGE,
                f"the token was refused by {base_url} ({exc.message}); check GHL_TOKEN or "
                "--token-file",
            ) from None
        except (errors.PermissionDeniedError, errors.NotFoundError) as exc:
            if not looks_like_highlevel(exc):
                raise _not_highlevel(base_url, exc, path) from None
            if location_id is None:
                return  # one conversation's 404: the export reports it with the others
            raise CommandExit(
                EXIT_USAGE,
                f"cannot list location {location_id}: {exc.message}; check --location or "
                f"{ENV_LOCATION} and the token",
            ) from None
        except errors.BadRequestError as exc:
            if not looks_like_highlevel(exc):
                raise _not_highlevel(base_url, exc, path) from None
            raise CommandExit(
                EXIT_USAGE, f"{base_url} refused the request ({exc.message})"
            ) from None
        except errors.ServerError as exc:  # a proxy's HTML 502 may stand before HighLevel
            raise CommandExit(
                EXIT_FAILED,
                f"{base_url} is failing (HTTP {exc.status}: {exc.message}); try again later",
            ) from None
        except errors.GHLError as exc:  # anything else: said in one line all the same
            raise CommandExit(EXIT_FAILED, f"asking {base_url} failed: {exc}") from None
    logger.info(
        "%s answers as HighLevel and takes the token%s; starting",
        base_url,
        f" for location {location_id}" if location_id else "",
    )
