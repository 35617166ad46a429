from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from ghl_async import errors
from ghl_async._sansio import (
    MAX_BUDGET,
    MAX_DAILY,
    MAX_RETRY_AFTER,
    RateLimitHeaders,
    error_for_reply,
    parse_retry_after,
    read_count,
    seconds_until_daily_reset,
)

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("-3", None),  # zero or below is no instruction: back off as without one
        ("0", None),
        ("1_000", None),
        ("9" * 400, None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        (email.utils.formatdate(NOW + 30, usegmt=True), 30.0),
        (email.utils.formatdate(NOW - 30, usegmt=True), None),
        ("99999999", 7 * 86400.0),  # at most a week
    ],
)
def test_retry_after_in_seconds_or_http_date(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_rate_limit_headers_are_read_case_insensitively() -> None:
    headers = CIMultiDict(
        {
            "x-ratelimit-max": "25",
            "X-RATELIMIT-REMAINING": "3",
            "X-RateLimit-Interval-Milliseconds": "10000",
            "X-RateLimit-Limit-Daily": "10000",
            "X-RateLimit-Daily-Remaining": "0",
        }
    )
    rate = RateLimitHeaders.from_headers(headers)
    assert rate == RateLimitHeaders(25, 10.0, 3, 10000, 0)
    assert rate.budget_known


def test_missing_or_garbled_rate_headers_are_none() -> None:
    rate = RateLimitHeaders.from_headers(CIMultiDict({"X-RateLimit-Max": "lots"}))
    assert rate == RateLimitHeaders()
    assert not rate.budget_known


@pytest.mark.parametrize(
    ("status", "body", "kind", "message", "retryable"),
    [
        (
            400,
            b'{"statusCode":400,"message":"Bad thing"}',
            errors.BadRequestError,
            "Bad thing",
            False,
        ),
        (
            401,
            b'{"statusCode":401,"message":"Invalid token: access token is invalid",'
            b'"error":"Unauthorized"}',
            errors.AuthenticationError,
            "Invalid token: access token is invalid",
            False,
        ),
        (
            403,
            b'{"statusCode":403,"message":"No","error":"Forbidden"}',
            errors.PermissionDeniedError,
            "No",
            False,
        ),
        (
            404,
            b'{"statusCode":404,"message":"Conversation not found"}',
            errors.NotFoundError,
            "Conversation not found",
            False,
        ),
        (
            422,
            b'{"statusCode":422,"message":["a is bad","b is bad"],"error":"Unprocessable Entity"}',
            errors.BadRequestError,
            "a is bad; b is bad",
            False,
        ),
        (429, b"", errors.RateLimitError, "Too Many Requests", True),
        (500, b'{"statusCode":500}', errors.ServerError, "Server error", True),
        (502, b"<html>bad gateway</html>", errors.ServerError, "Server error", True),
        (503, b"", errors.ServerError, "Server error", True),
        (504, b"", errors.ServerError, "Server error", True),
        (501, b"", errors.ServerError, "Server error", False),
        (302, b"", errors.APIStatusError, "Unexpected status", False),
    ],
)
def test_each_status_maps_to_its_error(
    status: int, body: bytes, kind: type[errors.GHLError], message: str, retryable: bool
) -> None:
    error = error_for_reply(status, CIMultiDict(), body, now=NOW)
    assert type(error) is kind
    assert error.status == status
    assert error.message == message
    assert error.retryable is retryable
    assert error.body == body


def test_success_is_no_error() -> None:
    assert error_for_reply(200, CIMultiDict(), b"{}", now=NOW) is None


def test_trace_id_is_kept_and_shown() -> None:
    error = error_for_reply(
        404, CIMultiDict(), b'{"statusCode":404,"message":"x","traceId":"t-1"}', now=NOW
    )
    assert error is not None
    assert error.trace_id == "t-1"
    assert "t-1" in str(error)


def test_429_carries_retry_after() -> None:
    error = error_for_reply(429, CIMultiDict({"Retry-After": "8"}), b"", now=NOW)
    assert isinstance(error, errors.RateLimitError)
    assert not isinstance(error, errors.DailyLimitExceeded)
    assert error.retry_after == 8.0


def test_429_with_no_daily_budget_left_is_a_daily_limit() -> None:
    headers = CIMultiDict({"X-RateLimit-Daily-Remaining": "0", "Retry-After": "3600"})
    error = error_for_reply(429, headers, b'{"message":"Daily limit"}', now=NOW)
    assert isinstance(error, errors.DailyLimitExceeded)
    assert error.retryable is False
    assert error.resets_at == NOW + 3600


def test_error_body_is_capped() -> None:
    error = error_for_reply(500, CIMultiDict(), b"x" * 100_000, now=NOW)
    assert error is not None
    assert len(error.body) == errors.BODY_CAP


# -- the server's numbers are hints: clamped, or absent when unreadable -----------

_RATE_HEADERS = (
    "X-RateLimit-Max",
    "X-RateLimit-Remaining",
    "X-RateLimit-Interval-Milliseconds",
    "X-RateLimit-Limit-Daily",
    "X-RateLimit-Daily-Remaining",
)


@pytest.mark.parametrize(
    "value", ["lots", "1_000", "9" * 400, "-5", "+5", " ", "1e3", "٣", "0x10", "10.0", "²"]
)
def test_unreadable_rate_headers_count_as_absent(value: str) -> None:
    rate = RateLimitHeaders.from_headers(CIMultiDict(dict.fromkeys(_RATE_HEADERS, value)))
    assert rate == RateLimitHeaders()


def test_a_zero_budget_or_an_interval_over_an_hour_is_not_adopted() -> None:
    zero = RateLimitHeaders.from_headers(
        CIMultiDict({"X-RateLimit-Max": "0", "X-RateLimit-Interval-Milliseconds": "0"})
    )
    assert zero.max_requests is None and zero.interval is None and not zero.budget_known
    long = RateLimitHeaders.from_headers(
        CIMultiDict({"X-RateLimit-Max": "5", "X-RateLimit-Interval-Milliseconds": "3600001"})
    )
    assert long.interval is None and not long.budget_known
    hour = RateLimitHeaders.from_headers(
        CIMultiDict({"X-RateLimit-Max": "5", "X-RateLimit-Interval-Milliseconds": "3600000"})
    )
    assert hour.interval == 3600.0


def test_huge_budgets_are_clamped_and_remaining_never_exceeds_the_budget() -> None:
    rate = RateLimitHeaders.from_headers(
        CIMultiDict(
            {
                "X-RateLimit-Max": "999999999999",
                "X-RateLimit-Remaining": "999999999999",
                "X-RateLimit-Interval-Milliseconds": "1000",
                "X-RateLimit-Limit-Daily": "999999999999",
                "X-RateLimit-Daily-Remaining": "999999999999",
            }
        )
    )
    assert rate == RateLimitHeaders(MAX_BUDGET, 1.0, MAX_BUDGET, MAX_DAILY, MAX_DAILY)
    small = RateLimitHeaders.from_headers(
        CIMultiDict({"X-RateLimit-Max": "10", "X-RateLimit-Remaining": "50"})
    )
    assert small.remaining == 10


@given(st.dictionaries(st.sampled_from(_RATE_HEADERS), st.text(max_size=500)))
def test_any_header_values_give_bounded_numbers(values: dict[str, str]) -> None:
    rate = RateLimitHeaders.from_headers(CIMultiDict(values))
    if rate.max_requests is not None:
        assert 1 <= rate.max_requests <= MAX_BUDGET
    if rate.interval is not None:
        assert 0.001 <= rate.interval <= 3600.0
    if rate.remaining is not None:
        assert 0 <= rate.remaining <= (rate.max_requests or MAX_BUDGET)
    for daily in (rate.daily_limit, rate.daily_remaining):
        assert daily is None or 0 <= daily <= MAX_DAILY


@given(st.one_of(st.none(), st.text(max_size=500), st.integers().map(str), st.floats().map(str)))
def test_any_retry_after_is_a_positive_bounded_wait_or_none(value: str | None) -> None:
    wait = parse_retry_after(value, NOW)
    assert wait is None or 0 < wait <= MAX_RETRY_AFTER


@given(st.floats(min_value=0, max_value=4e9))
def test_the_daily_reset_defaults_to_the_next_midnight_utc(now: float) -> None:
    wait = seconds_until_daily_reset(now)
    assert 0 < wait <= 86400
    assert (now + wait) % 86400 == pytest.approx(0, abs=1e-3) or (
        (now + wait) % 86400 == pytest.approx(86400, abs=1e-3)
    )
    assert seconds_until_daily_reset(now, 12.0) == 12.0


def _read_count_by_the_rule(value: str) -> int | None:
    value = value.strip()
    if not value or len(value) > 12 or not (value.isascii() and value.isdigit()):
        return None
    return int(value)


@given(
    st.one_of(
        st.text(max_size=16),
        st.text(alphabet="0123456789 \t٣²_+-e", max_size=16),
        st.integers(min_value=0, max_value=10**14).map(str),
    )
)
def test_the_fast_path_of_read_count_reads_as_the_rule_says(value: str) -> None:
    assert read_count(value) == _read_count_by_the_rule(value)


def test_rate_limit_headers_and_replies_are_frozen_values() -> None:
    a = RateLimitHeaders(10, 1.0, 3)
    assert a == RateLimitHeaders(max_requests=10, interval=1.0, remaining=3)
    assert hash(a) == hash(RateLimitHeaders(10, 1.0, 3))
    with pytest.raises(AttributeError):
        a.remaining = 4  # type: ignore[misc]
