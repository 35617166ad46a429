from __future__ import annotations

import email.utils

import pytest
from multidict import CIMultiDict

from ghl_async import errors
from ghl_async._sansio import RateLimitHeaders, error_for_reply, parse_retry_after

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("-3", 0.0),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        (email.utils.formatdate(NOW + 30, usegmt=True), 30.0),
        (email.utils.formatdate(NOW - 30, usegmt=True), 0.0),
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
