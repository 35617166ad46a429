from __future__ import annotations

import random

import pytest

from ghl_async import RetryPolicy, errors


def _error(kind: str) -> errors.GHLError:
    table: dict[str, errors.GHLError] = {
        "429": errors.RateLimitError("slow down"),
        "429-after-5": errors.RateLimitError("slow down", retry_after=5.0),
        "429-after-999": errors.RateLimitError("slow down", retry_after=999.0),
        "daily": errors.DailyLimitExceeded("done for today"),
        "500": errors.ServerError("boom", status=500),
        "transport": errors.TransportError("reset"),
        "html": errors.DecodeError("html", retryable=True),
        "bad-json": errors.DecodeError("shape", retryable=False),
        "400": errors.BadRequestError("bad", status=400),
        "401": errors.AuthenticationError("who", status=401),
        "403": errors.PermissionDeniedError("no", status=403),
        "404": errors.NotFoundError("gone", status=404),
        "pagination": errors.PaginationError("loop"),
    }
    return table[kind]


@pytest.mark.parametrize(
    ("kind", "attempt", "expected"),
    [
        ("429", 1, True),
        ("429-after-5", 1, True),
        ("429-after-999", 1, False),
        ("daily", 1, False),
        ("500", 1, True),
        ("500", 4, True),
        ("500", 5, False),
        ("transport", 2, True),
        ("html", 1, True),
        ("bad-json", 1, False),
        ("400", 1, False),
        ("401", 1, False),
        ("403", 1, False),
        ("404", 1, False),
        ("pagination", 1, False),
    ],
)
def test_what_is_retried(kind: str, attempt: int, expected: bool) -> None:
    assert RetryPolicy(max_attempts=5).should_retry(_error(kind), attempt) is expected


@pytest.mark.parametrize(
    ("kind", "attempt", "interval", "expected"),
    [
        ("429-after-5", 1, 10.0, 5.0),
        ("429", 1, 10.0, 10.0),
        ("429", 1, None, 0.5),
        ("500", 1, None, 0.5),
        ("500", 2, None, 1.0),
        ("500", 3, None, 2.0),
        ("transport", 10, None, 30.0),
    ],
)
def test_waits_without_jitter(
    kind: str, attempt: int, interval: float | None, expected: float
) -> None:
    policy = RetryPolicy(jitter=False)
    assert policy.delay(_error(kind), attempt, rate_interval=interval) == expected


def test_full_jitter_stays_under_the_ceiling_and_varies() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_cap=8.0)
    rng = random.Random(3)
    waits = [policy.delay(_error("500"), 3, rng=rng) for _ in range(200)]
    assert all(0.0 <= w <= 4.0 for w in waits)
    assert max(waits) - min(waits) > 2.0


@pytest.mark.parametrize(
    "kwargs", [{"max_attempts": 0}, {"backoff_base": -1}, {"max_retry_after": -1}]
)
def test_bad_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_max_attempts_must_be_an_int() -> None:
    with pytest.raises(TypeError):
        RetryPolicy(max_attempts=2.5)  # type: ignore[arg-type]


def test_a_retry_after_of_zero_or_below_backs_off_as_without_one() -> None:
    from ghl_async._sansio import error_for_reply

    policy = RetryPolicy(jitter=False)
    for value in ("0", "-1", "0.0"):
        error = error_for_reply(429, {"Retry-After": value}, b"", now=0.0)
        assert isinstance(error, errors.RateLimitError)
        assert error.retry_after is None
        assert policy.delay(error, 1, rate_interval=2.0) == 2.0  # one rate window
        assert policy.delay(error, 1) == policy.backoff_base  # else the backoff
