"""Alert delivery: a JSON webhook with capped-backoff retries that returns, not raises, the error of an
undeliverable alert; the text of a Slack message. See docs/alerts.md."""

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping

from pipeline_patterns.lib.backoff import BackoffPolicy, is_retryable


def post_json(
    url: str,
    record: Mapping[str, object],
    policy: BackoffPolicy,
    *,
    timeout: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[int, str | None]:
    """POST `record` as JSON; retry transient failures (5xx, 429, 408, timeouts, refused
    connections) with `policy`'s capped backoff. Returns (attempts, error or None)."""
    body = json.dumps(record, default=str).encode()
    attempt = 0
    while True:
        attempt += 1
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
            return attempt, None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            reason = getattr(error, "reason", error)
            transient = is_retryable(error) or isinstance(reason, (TimeoutError, ConnectionError))
            if not transient or attempt > policy.max_retries:
                return attempt, f"{type(error).__name__}: {error}"
            sleep(policy.delay(attempt))


def slack_text(record: Mapping[str, object]) -> str:
    """One readable line for a chat channel: the event first, then its fields."""
    fields = ", ".join(f"{k}={v}" for k, v in record.items() if k not in ("event", "at"))
    return f":rotating_light: pipeline_patterns *{record['event']}* ({record['at']}): {fields}"
