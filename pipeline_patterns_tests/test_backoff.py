"""Retry waits grow by the factor up to the cap, jitter stays in bounds, and only transient errors retry."""

import errno
import random

import pytest

from pipeline_patterns.lib.backoff import BackoffPolicy, NonRetryableError, RetryableError, is_retryable


class HttpError(Exception):
    """What HTTP client libraries raise: an error carrying the response's status."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


class AiohttpStyleError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def raised_from(error: BaseException, cause: BaseException) -> BaseException:
    try:
        raise error from cause
    except BaseException as raised:
        return raised


def describe(error: BaseException) -> str:
    cause = f" from {describe(error.__cause__)}" if error.__cause__ is not None else ""
    return f"{type(error).__name__}({error}){cause}"


def test_nominal_delays_grow_by_the_factor_until_the_cap():
    policy = BackoffPolicy(base_delay=0.5, backoff_factor=3.0, max_delay=10.0, max_retries=5)
    assert [policy.nominal_delay(retry) for retry in range(1, 6)] == [0.5, 1.5, 4.5, 10.0, 10.0]


def test_schedule_lists_nominal_lowest_and_highest_wait_per_retry():
    policy = BackoffPolicy(base_delay=1.0, backoff_factor=2.0, max_delay=10.0, jitter=0.25, max_retries=5)
    # Quarters are exact in binary floating point, so the table compares exactly.
    assert policy.schedule() == [
        (1.0, 0.75, 1.25),
        (2.0, 1.5, 2.5),
        (4.0, 3.0, 5.0),
        (8.0, 6.0, 10.0),
        (10.0, 7.5, 10.0),
    ]
    assert BackoffPolicy(max_retries=0).schedule() == []


def test_jittered_delays_stay_within_bounds_and_actually_vary():
    policy = BackoffPolicy(base_delay=1.0, backoff_factor=2.0, max_delay=10.0, jitter=0.25)
    rng = random.Random(42)
    uncapped = [policy.delay(3, rng) for _ in range(1000)]  # nominal 4 s
    assert all(3.0 <= d <= 5.0 for d in uncapped)
    assert len(set(uncapped)) > 990
    assert min(uncapped) < 3.1 and max(uncapped) > 4.9  # the whole band is used, not one side
    capped = [policy.delay(10, rng) for _ in range(1000)]  # nominal 10 s, jitter up to 12.5 s
    assert all(7.5 <= d <= 10.0 for d in capped)
    assert max(capped) == 10.0 and min(capped) < 7.6


def test_a_seeded_rng_reproduces_the_same_delays():
    policy = BackoffPolicy()
    first = [policy.delay(retry, random.Random(7)) for retry in range(1, 6)]
    assert first == [policy.delay(retry, random.Random(7)) for retry in range(1, 6)]


def test_without_jitter_the_wait_is_exactly_the_nominal_delay():
    assert [BackoffPolicy(base_delay=1.0, jitter=0.0).delay(retry) for retry in range(1, 9)] == [
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        32.0,
        60.0,
        60.0,
    ]


def test_huge_retry_numbers_do_not_overflow():
    assert BackoffPolicy(max_delay=60.0).nominal_delay(10_000) == 60.0
    assert BackoffPolicy(backoff_factor=1e300, max_delay=60.0).nominal_delay(10_000) == 60.0
    assert 0 < BackoffPolicy(max_delay=60.0).delay(10**9, random.Random(1)) <= 60.0
    assert BackoffPolicy(base_delay=2.0, backoff_factor=1.0).nominal_delay(10_000) == 2.0


def test_retry_numbers_start_at_one():
    with pytest.raises(ValueError, match="start at 1"):
        BackoffPolicy().nominal_delay(0)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"base_delay": 0.0}, "base_delay must be > 0"),
        ({"backoff_factor": 0.5}, "backoff_factor must be >= 1"),
        ({"base_delay": 5.0, "max_delay": 1.0}, r"max_delay \(1.0\) must be >= base_delay \(5.0\)"),
        ({"max_delay": float("inf")}, "max_delay must be a finite number"),
        ({"jitter": 1.0}, r"jitter is a fraction in \[0, 1\)"),
        ({"jitter": -0.1}, r"jitter is a fraction in \[0, 1\)"),
        ({"max_retries": -1}, "max_retries must be >= 0"),
    ],
)
def test_invalid_policies_are_refused_with_the_offending_setting(settings, message):
    with pytest.raises(ValueError, match=message):
        BackoffPolicy(**settings)


@pytest.mark.parametrize(
    "error, retryable",
    [
        (TimeoutError("read timed out"), True),
        (ConnectionError("connection dropped"), True),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), True),
        (OSError(errno.ECONNRESET, "connection reset by peer"), True),  # Python makes it a ConnectionResetError
        (OSError(errno.EHOSTUNREACH, "no route to host"), True),  # stays a plain OSError: only the errno tells
        (OSError(errno.ENOENT, "no such file"), False),
        (HttpError(503), True),
        (HttpError(500), True),
        (HttpError(429), True),
        (HttpError(408), True),
        (AiohttpStyleError(502), True),
        (HttpError(401), False),
        (AiohttpStyleError(403), False),
        (HttpError(400), False),
        (HttpError(404), False),
        (HttpError(422), False),
        (RetryableError("source says: try again later"), True),
        (NonRetryableError("bad credentials"), False),
        (PermissionError(errno.EACCES, "permission denied"), False),
        (ValueError("column 'amount' is not a number"), False),
        (TypeError("unsupported operand"), False),
        (KeyError("order_id"), False),
        (RuntimeError("something unknown"), False),
        (raised_from(RuntimeError("fetch failed"), ConnectionError("reset")), True),
        (raised_from(RuntimeError("fetch failed"), HttpError(503)), True),
        (raised_from(NonRetryableError("schema error"), ConnectionError("reset")), False),
        (raised_from(ValueError("bad page"), TimeoutError()), False),
        (raised_from(RuntimeError("fetch failed"), HttpError(401)), False),
        (raised_from(RuntimeError("outer"), raised_from(RuntimeError("inner"), ConnectionError())), False),
    ],
    ids=lambda value: describe(value) if isinstance(value, BaseException) else None,
)
def test_only_transient_errors_are_retryable(error, retryable):
    assert is_retryable(error) is retryable
