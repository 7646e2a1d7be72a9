"""Capped exponential backoff with jitter (`BackoffPolicy`), and whether a failure is worth a retry
(`is_retryable`). See docs/retries_and_breaker.md."""

import dataclasses
import errno
import math
import random

# A module-level generator, so calls without an `rng` do not reseed from the OS every time.
_RNG = random.Random()

RETRYABLE_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT, errno.EHOSTUNREACH})
RETRYABLE_STATUSES = frozenset({408, 429})  # and every 5xx


class RetryableError(Exception):
    """A failure known to be transient (e.g. the source said "try again later"): retry it."""


class NonRetryableError(Exception):
    """A failure a retry cannot fix (e.g. bad credentials, a schema error): fail fast."""


@dataclasses.dataclass(frozen=True)
class BackoffPolicy:
    """Retry n (n = 1 for the first retry) waits base_delay * backoff_factor^(n-1) seconds, capped at
    max_delay, multiplied by a uniform factor in [1 - jitter, 1 + jitter] and capped again."""

    base_delay: float = 2.0
    backoff_factor: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.2
    max_retries: int = 6

    def __post_init__(self) -> None:
        for field in ("base_delay", "backoff_factor", "max_delay"):
            if not math.isfinite(getattr(self, field)):
                raise ValueError(f"BackoffPolicy.{field} must be a finite number, got {getattr(self, field)!r}")
        if self.base_delay <= 0:
            raise ValueError(f"BackoffPolicy.base_delay must be > 0 seconds, got {self.base_delay!r}")
        if self.backoff_factor < 1:
            raise ValueError(
                f"BackoffPolicy.backoff_factor must be >= 1 (1 = constant delay), got {self.backoff_factor!r}"
            )
        if self.max_delay < self.base_delay:
            raise ValueError(
                f"BackoffPolicy.max_delay ({self.max_delay!r}) must be >= base_delay ({self.base_delay!r})"
            )
        if not 0 <= self.jitter < 1:
            raise ValueError(f"BackoffPolicy.jitter is a fraction in [0, 1), got {self.jitter!r}")
        if self.max_retries < 0:
            raise ValueError(f"BackoffPolicy.max_retries must be >= 0, got {self.max_retries!r}")

    def nominal_delay(self, retry: int) -> float:
        """The wait before retry number `retry` (1 = the first retry), without jitter."""
        if retry < 1:
            raise ValueError(f"retry numbers start at 1 (the first retry), got {retry!r}")
        exponent = retry - 1
        # Compare in log space first: backoff_factor ** 10_000 overflows a float.
        if self.backoff_factor > 1 and exponent * math.log(self.backoff_factor) >= math.log(
            self.max_delay / self.base_delay
        ):
            return self.max_delay
        return min(self.max_delay, self.base_delay * self.backoff_factor**exponent)

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """The jittered wait before retry number `retry`: in (0, max_delay], never above the cap."""
        spread = (rng if rng is not None else _RNG).uniform(1 - self.jitter, 1 + self.jitter)
        return min(self.max_delay, self.nominal_delay(retry) * spread)

    def schedule(self) -> list[tuple[float, float, float]]:
        """(nominal, lowest, highest) possible wait for retries 1..max_retries, for logging."""
        low, high = 1 - self.jitter, 1 + self.jitter
        nominals = [self.nominal_delay(retry) for retry in range(1, self.max_retries + 1)]
        return [(n, min(self.max_delay, n * low), min(self.max_delay, n * high)) for n in nominals]


def _status(error: BaseException) -> int | None:
    """The HTTP-like status an error carries (requests/httpx use `status_code`, aiohttp `status`)."""
    for attribute in ("status_code", "status"):
        value = getattr(error, attribute, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _verdict(error: BaseException) -> bool | None:
    """True or False when the error itself says whether a retry can help; None when it does not."""
    if isinstance(error, NonRetryableError):
        return False
    if isinstance(error, RetryableError):
        return True
    status = _status(error)
    if status is not None:
        if status in RETRYABLE_STATUSES or 500 <= status <= 599:
            return True
        if 400 <= status <= 499:  # 400, 401, 403, 404, 422...: the same request fails the same way
            return False
    if isinstance(error, PermissionError):
        return False
    if isinstance(error, (TimeoutError, ConnectionError)):
        return True
    if isinstance(error, OSError) and error.errno in RETRYABLE_ERRNOS:
        return True
    if isinstance(error, (ValueError, TypeError, KeyError)):  # schema and data errors
        return False
    return None


def is_retryable(error: BaseException) -> bool:
    """Whether retrying the call that raised `error` can succeed; unknown errors are not retried.

    A wrapper raised `from` a retryable error (e.g. a client library's own error around a
    ConnectionError) is retryable unless the wrapper itself says it is not.
    """
    verdict = _verdict(error)
    if verdict is None and error.__cause__ is not None:
        verdict = _verdict(error.__cause__)
    return verdict is True
