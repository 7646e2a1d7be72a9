"""Flaky and failing dependencies: capped backoff retries, a shared breaker, alerts."""

import datetime as dt
import json
import os
import subprocess
import sys

import dagster as dg
import pyarrow.compute as pc
import pytest

from pipeline_patterns.defs.resilience import Breaker, RetrySettings
from pipeline_patterns.defs.sources import OrdersSource
from pipeline_patterns.lib.breaker import CircuitBreaker
from pipeline_patterns.lib.delta_writes import read_table
from pipeline_patterns.lib.simulated_feed import FeedSettings, expected_orders
from pipeline_patterns_tests.helpers import TEST_ORDERS_PER_DAY, materialize, resilient

FAST = RetrySettings(base_delay=0.01, backoff_factor=2.0, max_delay=0.05, jitter=0.2, max_retries=25)


def notifications(data_dir) -> list[dict]:
    path = data_dir / "notifications.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class CountingSource(OrdersSource):
    """The simulated feed, counting the calls that reach it."""

    calls: int = 0

    def fetch(self, region, day):
        CountingSource.calls += 1
        return super().fetch(region, day)


class BrokenCredentials(OrdersSource):
    def fetch(self, region, day):
        raise PermissionError("401: bad credentials for the orders feed")


def run(data_dir, selection, first, last, instance=None, **resources):
    return materialize(
        data_dir,
        instance or dg.DagsterInstance.ephemeral(),
        first=first,
        last=last,
        selection=selection,
        resources=resources,
        raise_on_error=False,
    )


def test_a_30_percent_failing_source_still_lands_seven_days_of_exact_data(spark, tmp_path):
    breaker = Breaker(store=str(tmp_path / "breakers.sqlite"), failure_threshold=50)
    source = OrdersSource(orders_per_day=TEST_ORDERS_PER_DAY, failure_rate=0.3, breaker=breaker, retries=FAST)
    regions = [
        f"{layer}/{r}"
        for r in ("us_east", "ap_south")
        for layer in ("raw_orders", "regional_orders", "quarantined_orders", "late_orders")
    ]
    result = run(tmp_path, regions, "2024-01-06", "2024-01-12", orders_source=source)
    assert result.success
    retries = [n for n in notifications(tmp_path) if n["event"] == "retry"]
    assert retries, "with 30 % failures over 14 calls, some retries happened (seeded: always the same ones)"
    assert all(n["seconds_to_wait"] <= FAST.max_delay for n in retries)
    settings = FeedSettings(orders_per_day=TEST_ORDERS_PER_DAY)
    for region in ["us-east", "ap-south"]:
        table = read_table(str(tmp_path / "lake" / "regional_orders" / region.replace("-", "_")))
        for offset in range(7):
            day = dt.date(2024, 1, 6) + dt.timedelta(offset)
            rows = table.filter(pc.equal(table["day"], day.isoformat()))
            assert rows.num_rows == expected_orders(region, day, settings).num_rows


def test_a_down_source_opens_the_breaker_after_exactly_the_threshold_and_is_not_called_while_open(spark, tmp_path):
    CountingSource.calls = 0
    store = str(tmp_path / "breakers.sqlite")
    # The open time is long next to the retry delays (0.02 s) and a step restart, also on a
    # loaded machine, so the 4th attempt always meets the breaker open.
    breaker = Breaker(store=store, failure_threshold=3, recovery_timeout=2.0)
    retries = RetrySettings(base_delay=0.01, max_delay=0.02, max_retries=4)
    down = CountingSource(orders_per_day=TEST_ORDERS_PER_DAY, failure_rate=1.0, breaker=breaker, retries=retries)
    instance = dg.DagsterInstance.ephemeral()
    result = run(
        tmp_path,
        ["raw_orders/us_east"],
        "2024-01-06",
        "2024-01-06",
        instance=instance,
        orders_source=down,
    )
    assert not result.success
    sent = notifications(tmp_path)
    changes = [(n["old"], n["new"]) for n in sent if n["event"] == "breaker_state_changed"]
    # 3 failures open it; the next attempt is refused without a call and waits out the open time;
    # then exactly one trial call goes through, fails, and re-opens it
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "open")]
    assert CountingSource.calls == 3 + 1
    blocked = [n for n in sent if n["event"] == "retry" and "is open" in n["error"]]
    assert len(blocked) == 1 and 0 < blocked[0]["seconds_to_wait"] <= 2.0
    assert CircuitBreaker("orders_source", store).status().state == "open"
    assert sent[-1]["event"] == "final_failure"
    # the asset page shows the breaker's state as it ended, though no materialization was recorded
    records = instance.fetch_observations(dg.AssetKey(["raw_orders", "us_east"]), limit=10).records
    observed = [r.asset_observation.metadata["breaker/state"].value for r in reversed(records)]
    assert observed == ["open", "half_open", "open"]


def test_after_the_recovery_timeout_one_trial_call_closes_the_breaker(spark, tmp_path):
    store = str(tmp_path / "breakers.sqlite")
    breaker = Breaker(store=store, failure_threshold=2, recovery_timeout=2.0)
    retries = RetrySettings(base_delay=0.01, max_delay=0.02, max_retries=2)
    down = OrdersSource(orders_per_day=TEST_ORDERS_PER_DAY, failure_rate=1.0, breaker=breaker, retries=retries)
    run(
        tmp_path,
        ["raw_orders/us_east"],
        "2024-01-06",
        "2024-01-06",
        orders_source=down,
    )
    assert CircuitBreaker("orders_source", store).status().state == "open"
    healthy = OrdersSource(orders_per_day=TEST_ORDERS_PER_DAY, breaker=breaker, retries=FAST)
    result = run(
        tmp_path,
        ["raw_orders/us_east"],
        "2024-01-06",
        "2024-01-06",
        orders_source=healthy,
    )
    assert result.success  # the step waited out the open breaker, then its trial call closed it
    assert CircuitBreaker("orders_source", store).status().state == "closed"
    changes = [(n["old"], n["new"]) for n in notifications(tmp_path) if n["event"] == "breaker_state_changed"]
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_a_non_retryable_error_fails_at_once_without_retries(spark, tmp_path):
    result = run(
        tmp_path,
        ["raw_orders/us_east"],
        "2024-01-06",
        "2024-01-06",
        orders_source=BrokenCredentials(orders_per_day=TEST_ORDERS_PER_DAY, **resilient(tmp_path)),
    )
    assert not result.success
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    sent = notifications(tmp_path)
    assert [n["event"] for n in sent] == ["final_failure"] and sent[0]["retryable"] is False
    assert CircuitBreaker("orders_source", str(tmp_path / "breakers.sqlite")).status().consecutive_failures == 0


@pytest.mark.integration
def test_the_breaker_command_shows_and_resets_a_shared_breaker(tmp_path):
    store = str(tmp_path / "breakers.sqlite")
    breaker = CircuitBreaker("orders_source", store, failure_threshold=1, recovery_timeout=600)
    permit = breaker.acquire()
    breaker.record_failure(permit)
    env = {**os.environ, "PIPELINE_PATTERNS_DATA_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "pipeline_patterns.cli", "breaker"]
    shown = subprocess.run([*command, "status", "orders_source"], env=env, capture_output=True, text=True, check=True)
    assert json.loads(shown.stdout)["state"] == "open"
    subprocess.run([*command, "reset", "orders_source"], env=env, capture_output=True, text=True, check=True)
    assert breaker.status().state == "closed" and breaker.status().consecutive_failures == 0
