"""Self-healing: failed days are re-run without a person once a re-run can succeed, at most a
capped number of times, and end with exactly what a clean run writes."""

import json
import sqlite3
import time

import dagster as dg
import pytest
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemotePartitionSetOrigin, RemoteRepositoryOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from pipeline_patterns.defs.automation import daily_orders_job
from pipeline_patterns.defs.healing import (
    HEALS_DAY_TAG,
    HealingPolicy,
    backfill_days,
    heal_failed_days,
    healing_decisions,
)
from pipeline_patterns.defs.partitions import REGIONS, daily_partitions, region_key
from pipeline_patterns.defs.resilience import Breaker, RetrySettings
from pipeline_patterns.defs.sources import OrdersSource
from pipeline_patterns.lib import healing
from pipeline_patterns.lib.delta_writes import content_hash, read_table
from pipeline_patterns.lib.quarantine import AUDIT_COLUMNS
from pipeline_patterns.lib.simulated_feed import add_corrections
from pipeline_patterns_tests.helpers import (
    TEST_ORDERS_PER_DAY,
    catch_up_late_data,
    materialize,
    pipeline_defs,
    pipeline_resources,
    resilient,
)

DAILY_REVENUE = dg.AssetKey("daily_revenue")
OUTAGE = ["2024-01-04", "2024-01-05", "2024-01-06"]  # failed by a feed outage; 01-05 is then held (quarantine)
HELD = "2024-01-05"  # us-east and eu-west deliver null user ids that day (test volume)
KILLED = "2024-01-07"  # its run died
BROKEN = "2024-01-08"  # fails whatever is tried: healing gives up on it
HEALED = [*OUTAGE, KILLED]
TABLES = ["global_orders", "daily_revenue"] + [
    f"{layer}/{region_key(r)}" for r in REGIONS for layer in ("regional_orders", "quarantined_orders", "late_orders")
]


# --- the decisions, on plain values -------------------------------------------------------------


def failed(**fields) -> healing.FailedDay:
    return healing.FailedDay(**{"day": "2024-01-02", "run_id": "r1", "failed_at": 1000.0, "attempts": 0, **fields})


def decide(days, **settings) -> list[tuple[str, str]]:
    options = {"now": 1000.0, "lookback_hours": 48, "max_attempts": 3, "breakers_open": {}, **settings}
    return [(d.action, d.reason) for d in healing.decide(days, **options)]


def test_a_failed_day_is_requested_once_its_dependencies_take_calls():
    [(action, reason)] = decide([failed()])
    assert action == healing.REQUEST and "run r1 failed" in reason
    [(action, reason)] = decide([failed()], breakers_open={"orders_source": 12.0})
    assert action == healing.WAIT and "breaker orders_source open, trial in 12 s" in reason


def test_a_held_day_waits_for_the_correction_of_every_quarantined_region():
    [(action, reason)] = decide([failed(quarantined=("eu-west", "us-east"), corrected=("us-east",))])
    assert action == healing.WAIT and "quarantine of eu-west" in reason
    [(action, reason)] = decide([failed(quarantined=("eu-west", "us-east"), corrected=("eu-west", "us-east"))])
    assert action == healing.REQUEST and "corrected eu-west, us-east" in reason


def test_healing_gives_up_after_the_cap_ignores_old_failures_and_never_fights_a_backfill():
    assert decide([failed(attempts=3)])[0][0] == healing.GIVE_UP
    assert (
        healing.decide([failed(attempts=2)], now=1000.0, lookback_hours=48, max_attempts=3, breakers_open={})[0].attempt
        == 3
    )
    assert decide([failed(failed_at=1000.0 - 49 * 3600)])[0][0] == healing.IGNORE
    [(action, reason)] = decide([failed()], backfills_running={"abc": {"2024-01-02"}})
    assert action == healing.WAIT and "backfill abc targets this day" in reason
    assert decide([failed(retried_by_dagster=True)])[0][0] == healing.WAIT


def test_healing_waits_only_for_a_backfill_that_targets_the_day():
    running = {"green": set(), "other_days": {"2024-01-03", "2024-01-04"}, "this_day": {"2024-01-01", "2024-01-02"}}
    assert decide([failed()], backfills_running={k: running[k] for k in ("green", "other_days")}) == [
        (healing.REQUEST, "run r1 failed; its dependencies take calls again")
    ]
    [(action, reason)] = decide([failed()], backfills_running=running)
    assert (action, reason) == (healing.WAIT, "backfill this_day targets this day: healing never fights a backfill")


def test_the_days_a_backfill_targets_are_those_of_the_daily_graph_it_writes(tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    repository = pipeline_defs(tmp_path).get_repository_def()
    origin = RemoteRepositoryOrigin(
        code_location_origin=InProcessCodeLocationOrigin(loadable_target_origin=LoadableTargetOrigin()),
        repository_name=repository.name,
    )

    def backfill(backfill_id, assets=None, days=("2024-01-05",), job=None):
        if job:  # a job's backfill, as a job page launches it
            instance.add_backfill(
                PartitionBackfill(
                    backfill_id,
                    status=BulkActionStatus.REQUESTED,
                    from_failure=False,
                    tags={},
                    backfill_timestamp=time.time(),
                    partition_set_origin=RemotePartitionSetOrigin(
                        repository_origin=origin, partition_set_name=f"{job}_partition_set"
                    ),
                    partition_names=list(days),
                    asset_selection=assets,
                )
            )
            return
        instance.add_backfill(
            PartitionBackfill.from_asset_partitions(
                backfill_id,
                repository.asset_graph,
                list(days),
                assets,
                time.time(),
                {},
                instance,
                False,
                None,
                None,
                None,
            )
        )

    backfill("green", [dg.AssetKey("green_release")], days=("2024-01-02", "2024-01-03"))
    backfill("gate", [dg.AssetKey(["regional_orders", "us_east"])], days=("2024-01-04",))
    backfill("daily", list(daily_orders_job.selection.resolve(repository.asset_graph)))
    backfill("job_daily", job="daily_orders", days=("2024-01-06",))
    backfill("job_month", job="monthly_revenue_job", days=("2024-01-01",))
    assert backfill_days(instance, repository) == {
        "green": set(),
        "gate": {"2024-01-04"},
        "daily": {"2024-01-05"},
        "job_daily": {"2024-01-06"},
        "job_month": set(),  # a month's partition key is its first day: not a day healing writes
    }


# --- the sensor over real runs -------------------------------------------------------------------


class BrokenDay(OrdersSource):
    """The feed, refusing one day for good (bad credentials for that day's extract)."""

    def fetch(self, region, day_):
        if day_.isoformat() == BROKEN:
            raise PermissionError(f"403: the {region} extract of {BROKEN} is not readable")
        return super().fetch(region, day_)


def age_breaker(store: str, name: str, seconds: float) -> None:
    """Let `seconds` pass for an open breaker (its recovery timeout is counted from opened_at)."""
    with sqlite3.connect(store) as connection:
        connection.execute("UPDATE circuit_breakers SET opened_at = opened_at - ? WHERE name = ?", (seconds, name))


def notifications(data_dir) -> list[dict]:
    return [json.loads(line) for line in (data_dir / "notifications.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def story(spark, tmp_path_factory):
    """An outage during a range, a run that died, a quarantined day corrected later, and a day
    broken for good; the sensor evaluated as the daemon would, its runs executed in process."""
    data_dir = tmp_path_factory.mktemp("healing")
    instance = dg.DagsterInstance.ephemeral()
    store = str(data_dir / "breakers.sqlite")
    corrections = str(data_dir / "source_corrections.json")
    source = BrokenDay(orders_per_day=TEST_ORDERS_PER_DAY, corrections_file=corrections, **resilient(data_dir))
    resources = {**pipeline_resources(data_dir), "orders_source": source}
    broken = materialize(data_dir, instance, partition=BROKEN, raise_on_error=False, resources=resources)
    # the feed is down during the range: no retries, the breaker opens on the first failure for an hour
    outage = materialize(
        data_dir,
        instance,
        first=OUTAGE[0],
        last=OUTAGE[-1],
        raise_on_error=False,
        resources={
            "orders_source": OrdersSource(
                orders_per_day=TEST_ORDERS_PER_DAY,
                corrections_file=corrections,
                outages=["2000-01-01T00:00:00+00:00/2100-01-01T00:00:00+00:00"],
                breaker=Breaker(store=store, failure_threshold=1, recovery_timeout=3600),
                retries=RetrySettings(max_retries=0),
            )
        },
    )
    # a run that died (a killed run worker), as Dagster's run monitoring records it
    job = pipeline_defs(data_dir).resolve_job_def("daily_orders")
    instance.report_run_failed(instance.create_run_for_job(job, tags={"dagster/partition": KILLED}), "run worker died")

    cursor, ticks, decisions, runs = None, [], [], []
    repository = pipeline_defs(data_dir).get_repository_def()
    policy = HealingPolicy(max_attempts=3)

    def tick() -> dg.SensorResult:
        nonlocal cursor
        dependencies = [source, resources["fx_rates"]]
        decided = healing_decisions(instance, repository, policy, resources["lake"], source, dependencies)
        decisions.append({d.day: d for d in decided})
        needed = {k: resources[k] for k in ("lake", "fx_rates", "notifier")}
        context = dg.build_sensor_context(
            instance=instance,
            cursor=cursor,
            repository_def=repository,
            resources={**needed, "orders_source": source, "healing_policy": policy},
        )
        result = heal_failed_days(context)
        cursor = result.cursor
        ticks.append(result)
        for request in result.run_requests:  # what the daemon launches, run in process
            runs.append(
                materialize(
                    data_dir,
                    instance,
                    partition=request.partition_key,
                    raise_on_error=False,
                    resources={**resources, "orders_source": source},
                    tags=request.tags,
                )
            )
        return result

    tick()  # the breaker is still open: every day waits
    age_breaker(store, "orders_source", 3600)
    tick()  # the feed takes calls again: outage days, the killed day and the broken day re-run
    tick()  # the held day waits for its correction; the broken day re-runs
    add_corrections(str(data_dir / "source_corrections.json"), [f"us-east {HELD}", f"eu-west {HELD}"])
    tick()  # the correction arrived: the held day re-runs; the broken day's third attempt
    tick()  # the broken day: given up, reported
    tick()  # nothing more to do, nothing reported twice
    return data_dir, instance, outage, broken, ticks, decisions


def requested(result: dg.SensorResult) -> list[str]:
    return sorted(r.partition_key for r in result.run_requests)


def skipped(result: dg.SensorResult) -> str:
    return result.skip_reason.skip_message if result.skip_reason else ""


def test_the_first_tick_finds_exactly_the_failed_days(story):
    _, _, outage, broken, _, decisions = story
    assert not outage.success and not broken.success
    assert sorted(decisions[0]) == sorted([*HEALED, BROKEN])
    assert {d.action for d in decisions[0].values()} == {healing.WAIT}


def test_nothing_is_requested_while_the_breaker_is_open(story):
    ticks = story[4]
    assert requested(ticks[0]) == []
    assert "breaker orders_source open" in skipped(ticks[0])
    assert all(d in skipped(ticks[0]) for d in [*HEALED, BROKEN])


def test_once_the_dependency_is_back_every_failed_day_is_requested_once(story):
    ticks = story[4]
    assert requested(ticks[1]) == sorted([*HEALED, BROKEN])
    assert {r.tags["pipeline_patterns/healing_attempt"] for r in ticks[1].run_requests} == {"1"}


def test_a_held_day_waits_for_its_correction_then_is_requested(story):
    ticks = story[4]
    assert HELD in requested(ticks[1])
    assert requested(ticks[2]) == [BROKEN]
    held = story[5][2][HELD]
    assert held.action == healing.WAIT and held.reason.startswith("held by quarantine of eu-west, us-east")
    assert requested(ticks[3]) == [HELD, BROKEN]
    [request] = [r for r in ticks[3].run_requests if r.partition_key == HELD]
    assert request.tags["pipeline_patterns/healing_attempt"] == "2"
    assert "corrected eu-west, us-east" in request.tags["pipeline_patterns/reason"]


def test_a_day_that_keeps_failing_stops_after_the_cap_and_is_reported_once(story):
    data_dir, instance, _, _, ticks, _ = story
    assert [BROKEN in requested(t) for t in ticks] == [False, True, True, True, False, False]
    assert len(instance.get_runs(dg.RunsFilter(tags={HEALS_DAY_TAG: BROKEN}))) == 3
    assert "3 automatic attempts failed (cap 3)" in skipped(ticks[4])
    [observation] = ticks[4].asset_events
    assert observation.partition == BROKEN and observation.metadata["healing"].value == "gave up"
    assert ticks[5].asset_events == []
    gave_up = [n for n in notifications(data_dir) if n["event"] == "healing_gave_up"]
    assert [n["day"] for n in gave_up] == [BROKEN]
    attempts = [n for n in notifications(data_dir) if n["event"] == "healing_attempt"]
    assert len(attempts) == len(HEALED) + 1 + 3  # one per requested run: the held day twice, the broken day 3 times


def test_every_healed_day_ends_materialized_with_what_a_clean_run_writes(story, tmp_path):
    data_dir, instance, *_ = story
    statuses = instance.get_status_by_partition(DAILY_REVENUE, [*HEALED, BROKEN], daily_partitions)
    assert {d: s for d, s in statuses.items() if d != BROKEN} == dict.fromkeys(
        HEALED, dg.AssetPartitionStatus.MATERIALIZED
    )
    assert statuses[BROKEN] == dg.AssetPartitionStatus.FAILED
    # healed one day at a time, the days get the later feed days' late orders as the daemon's
    # late-data sensor brings them (defs/late_data.py); then they hold what one range run writes
    catch_up_late_data(data_dir, instance)
    clean_dir = tmp_path / "clean"
    add_corrections(str(clean_dir / "source_corrections.json"), [f"us-east {HELD}", f"eu-west {HELD}"])
    assert materialize(clean_dir, dg.DagsterInstance.ephemeral(), first=HEALED[0], last=HEALED[-1]).success
    for name in TABLES:
        healed, clean = (read_table(str(d / "lake" / name)) for d in (data_dir, clean_dir))
        assert content_hash(healed, exclude=AUDIT_COLUMNS) == content_hash(clean, exclude=AUDIT_COLUMNS), name
