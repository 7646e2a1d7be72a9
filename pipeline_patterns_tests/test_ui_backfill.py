"""A range backfill launched through the webserver's GraphQL API exactly as the UI does, run by
the daemon of a real `dagster dev`, end to end: partial success inside one range run, the UI's
"Backfill only failed and missing partitions", and the fix-up backfill after the source corrects
its bad region-days."""

import contextlib
import datetime as dt
import pathlib
import shutil
import sys
import time

import pyarrow.compute as pc
import pytest
import requests

from pipeline_patterns.defs.partitions import REGIONS, region_key
from pipeline_patterns.lib.delta_writes import read_table
from pipeline_patterns.lib.simulated_feed import FeedSettings, add_corrections, expected_day_orders, region_day_defects
from pipeline_patterns_tests.helpers import (
    PROJECT_ROOT,
    TEST_ENV,
    TEST_ORDERS_PER_DAY,
    free_port,
    interruptible,
    serving,
)

pytestmark = pytest.mark.integration

LOCATION = "pipeline_patterns"
DAYS = ["2024-01-04", "2024-01-05", "2024-01-06"]
# With the default seed (any volume) the feed's bad region-days in DAYS; a day is held when any
# of its region-days is bad. Three days keep both backfills to one run each (a held day in the
# middle: processed days on both sides of it).
BAD_REGION_DAYS = {("us-east", "2024-01-05"), ("eu-west", "2024-01-05")}
HELD_DAYS = ["2024-01-05"]

RAW = [("raw_orders", region_key(r)) for r in REGIONS]
REGIONAL = [("regional_orders", region_key(r)) for r in REGIONS]
QUARANTINE = [("quarantined_orders", region_key(r)) for r in REGIONS]
LATE = [("late_orders", region_key(r)) for r in REGIONS]
FAN_IN = [("global_orders",), ("daily_revenue",)]
DAILY_GRAPH = RAW + REGIONAL + QUARANTINE + LATE + FAN_IN
# The corrected 01-05 of us-east and eu-west carries late orders of 01-04, published before: the
# late-data sensor re-runs exactly that day.
REHOMED_DAY = "2024-01-04"

BACKFILL_TIMEOUT = 600
RUN_TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}
POLL = 2.5
NOT_TERMINAL = {"REQUESTED", "CANCELING", "FAILING"}

REPOSITORIES = """
query {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection { nodes { name location { name } } }
    ... on PythonError { message }
  }
}"""
LAUNCH = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { stepKey invalidOutputName }
    ... on UnauthorizedError { message }
  }
}"""
BACKFILL = """
query ($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      status
      partitionNames
      runs { runId status tags { key value } }
      error { message }
    }
    ... on PythonError { message }
  }
}"""
PARTITIONS = """
query ($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    __typename
    ... on AssetNode {
      assetPartitionStatuses {
        __typename
        ... on TimePartitionStatuses { ranges { status startKey endKey } }
      }
    }
  }
}"""
LATEST = """
query ($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode { assetMaterializations(limit: 1) { runId partition } }
  }
}"""
INSTIGATORS = """
query ($repo: RepositorySelector!) {
  sensorsOrError(repositorySelector: $repo) {
    __typename
    ... on Sensors { results { name sensorState { status } } }
    ... on PythonError { message }
  }
  schedulesOrError(repositorySelector: $repo) {
    __typename
    ... on Schedules { results { name scheduleState { status } } }
    ... on PythonError { message }
  }
}"""


@pytest.fixture
def dagster_dev(tmp_path):
    """`dagster dev` (webserver + daemon) on a free port, a temporary DAGSTER_HOME with the
    project's dagster.yaml, a data dir of its own and the test feed volume; afterwards exactly
    its process group is stopped."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    data_dir = tmp_path / "data"
    port = free_port()
    env = {**TEST_ENV, "DAGSTER_HOME": str(home), "PIPELINE_PATTERNS_DATA_DIR": str(data_dir)}
    dagster = pathlib.Path(sys.executable).parent / "dagster"
    command = [str(dagster), "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)]
    log_path = tmp_path / "dagster_dev.log"
    with serving(interruptible(command), port, log_path, env, cwd=home):
        for _ in range(60):  # the port is open: the webserver answers once its app is up
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"http://127.0.0.1:{port}/server_info", timeout=2).ok:
                    break
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/graphql", data_dir, log_path


def graphql(url: str, query: str, **variables) -> dict:
    response = requests.post(url, json={"query": query, "variables": variables}, timeout=60)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


def repository(url: str) -> dict:
    """The selector of the code location's repository, once the webserver has loaded it."""
    deadline = time.time() + 180
    while time.time() < deadline:
        found = graphql(url, REPOSITORIES)["repositoriesOrError"]
        for node in found.get("nodes", []):
            if node["location"]["name"] == LOCATION:
                return {"repositoryName": node["name"], "repositoryLocationName": LOCATION}
        time.sleep(2)
    raise AssertionError(f"code location {LOCATION} not loaded in 180 s: {found}")


def launch_backfill(url: str, keys: list[tuple[str, ...]], partition_names: list[str]) -> str:
    """What the UI's "Materialize selected" dialog sends for a partition range."""
    params = {
        "assetSelection": [{"path": list(key)} for key in keys],
        "partitionNames": partition_names,
        "fromFailure": False,
        "tags": [],
    }
    result = graphql(url, LAUNCH, params=params)["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result
    return result["backfillId"]


def wait_for_backfill(url: str, backfill_id: str, log_path: pathlib.Path) -> dict:
    """Poll the backfill until it is terminal or its runs all are; return it (status and runs).

    Waiting for the runs, not the backfill's own status, saves a daemon tick (30 s, fixed in
    Dagster 1.13) per backfill: the daemon marks a backfill complete one tick after its runs."""
    deadline = time.time() + BACKFILL_TIMEOUT
    started = time.time()
    while True:
        backfill = graphql(url, BACKFILL, id=backfill_id)["partitionBackfillOrError"]
        assert backfill["__typename"] == "PartitionBackfill", backfill
        runs_done = backfill["runs"] and all(r["status"] in RUN_TERMINAL for r in backfill["runs"])
        if backfill["status"] not in NOT_TERMINAL or runs_done:
            break
        assert time.time() < deadline, (
            f"backfill {backfill_id} still {backfill['status']} after {BACKFILL_TIMEOUT} s: {backfill}\n"
            + log_path.read_text()[-3000:]
        )
        time.sleep(POLL)
    runs = [(r["runId"][:8], r["status"]) for r in backfill["runs"]]
    print(
        f"backfill {backfill_id} {backfill['partitionNames']}: {backfill['status']} after "
        f"{time.time() - started:.0f} s, runs {runs}, error {backfill['error']}"
    )
    return backfill


def partition_statuses(url: str, key: tuple[str, ...], days: list[str]) -> dict[str, str]:
    """Each day's status as the asset's partition bar shows it: MATERIALIZED, FAILED,
    MATERIALIZING, or MISSING (in no range)."""
    node = graphql(url, PARTITIONS, key={"path": list(key)})["assetNodeOrError"]
    assert node["__typename"] == "AssetNode", node
    statuses = node["assetPartitionStatuses"]
    assert statuses["__typename"] == "TimePartitionStatuses", statuses
    by_day = dict.fromkeys(days, "MISSING")
    for span in statuses["ranges"]:
        for day in days:
            if span["startKey"] <= day <= span["endKey"]:
                by_day[day] = span["status"]
    return by_day


def graph_statuses(url: str, days: list[str]) -> dict[tuple[str, ...], dict[str, str]]:
    return {key: partition_statuses(url, key, days) for key in DAILY_GRAPH}


def failed_and_missing_only(statuses: dict[tuple[str, ...], dict[str, str]], days: list[str]) -> list[str]:
    """The UI's "Backfill only failed and missing partitions", computed in the browser from the
    partition bars: a day is kept if ANY selected asset is missing or failed there."""
    return [d for d in days if any(by_day[d] in ("MISSING", "FAILED") for by_day in statuses.values())]


def test_range_backfill_holds_bad_days_and_the_fix_up_backfill_completes_them(dagster_dev):
    url, data_dir, log_path = dagster_dev
    repo = repository(url)

    # the feed's defects are what this test expects (default seed, any volume)
    settings = FeedSettings(orders_per_day=TEST_ORDERS_PER_DAY)
    bad = {
        (r, d)
        for r in REGIONS
        for d in DAYS
        if (f := region_day_defects(r, dt.date.fromisoformat(d), settings)).null_user_ids or f.collapsed_volume
    }
    assert bad == BAD_REGION_DAYS

    # 5. the automation is on without anyone switching it on
    instigators = graphql(url, INSTIGATORS, repo=repo)
    sensors = {s["name"]: s["sensorState"]["status"] for s in instigators["sensorsOrError"]["results"]}
    schedules = {s["name"]: s["scheduleState"]["status"] for s in instigators["schedulesOrError"]["results"]}
    assert sensors.get("aggregates_follow_days") == sensors.get("heal_failed_days") == "RUNNING", sensors
    assert schedules.get("daily_orders_schedule") == "RUNNING", schedules

    # 1. the range backfill of the daily graph: one run, which fails naming the held days
    backfill = wait_for_backfill(url, launch_backfill(url, DAILY_GRAPH, DAYS), log_path)
    assert len(backfill["runs"]) == 1, backfill["runs"]  # BackfillPolicy.single_run: the range in ONE run
    assert backfill["runs"][0]["status"] == "FAILURE", backfill["runs"]

    # 2. the partition bars: every region-day went down a branch; the fan-in held exactly the bad days
    statuses = graph_statuses(url, DAYS)
    for key in RAW + REGIONAL + QUARANTINE:
        assert statuses[key] == dict.fromkeys(DAYS, "MATERIALIZED"), (key, statuses[key])
    for key in FAN_IN:
        expected = {d: "FAILED" if d in HELD_DAYS else "MATERIALIZED" for d in DAYS}
        assert statuses[key] == expected, (key, statuses[key])

    # 3. "Backfill only failed and missing partitions" selects exactly the held days
    fix_up = failed_and_missing_only(statuses, DAYS)
    assert fix_up == HELD_DAYS

    # 4. the source corrects its bad region-days; the fix-up backfill completes every day
    add_corrections(str(data_dir / "source_corrections.json"), [f"{r} {d}" for r, d in sorted(BAD_REGION_DAYS)])
    backfill = wait_for_backfill(url, launch_backfill(url, DAILY_GRAPH, fix_up), log_path)
    assert sorted(backfill["partitionNames"]) == HELD_DAYS
    assert all(r["status"] == "SUCCESS" for r in backfill["runs"]), backfill["runs"]

    # 5b. the daemon's late-data sensor re-homes the corrected deliveries' late orders: each day ends
    # with the orders of its event day from its own and the later feed days, as one clean run
    corrected = FeedSettings(orders_per_day=TEST_ORDERS_PER_DAY, corrected=frozenset(BAD_REGION_DAYS))
    delivered = [dt.date.fromisoformat(d) for d in DAYS]
    expected = {d: expected_day_orders(dt.date.fromisoformat(d), corrected, delivered, REGIONS) for d in DAYS}
    deadline = time.time() + 180
    while time.time() < deadline and (
        global_rows(data_dir) != {d: t.num_rows for d, t in expected.items()} or rehome_statuses(url) != ["SUCCESS"]
    ):
        time.sleep(POLL)
    statuses = graph_statuses(url, DAYS)
    for key in DAILY_GRAPH:
        assert statuses[key] == dict.fromkeys(DAYS, "MATERIALIZED"), (key, statuses[key])
    assert failed_and_missing_only(statuses, DAYS) == []
    orders = read_table(str(data_dir / "lake" / "global_orders"))
    assert sorted(set(orders["day"].to_pylist())) == DAYS
    for day in DAYS:
        rows = orders.filter(pc.equal(orders["day"], day))
        assert sorted(set(rows["region"].to_pylist())) == sorted(REGIONS), day
        assert sorted(rows["order_id"].to_pylist()) == sorted(expected[day]["order_id"].to_pylist()), day
    runs = graph_runs(url, "pipeline_patterns/rehomes_days", REHOMED_DAY)
    assert [r["status"] for r in runs] == ["SUCCESS"], runs
    reason = next(t["value"] for t in runs[0]["tags"] if t["key"] == "pipeline_patterns/reason")
    assert "us-east 2024-01-05" in reason and "eu-west 2024-01-05" in reason, reason

    # 6. the automation follows, by the daemon's own sensor ticks: the summary is recomputed from
    # the refilled days; January is incomplete (3 of 31 days), so no month is published
    deadline = time.time() + 180
    while summary_days(data_dir) != {len(DAYS)} and time.time() < deadline:
        time.sleep(POLL)
    assert summary_days(data_dir) == {len(DAYS)}, "the sensor never recomputed revenue_summary over the refilled days"
    assert latest_materialization(url, "revenue_summary")
    assert latest_materialization(url, "monthly_revenue") is None


def rehome_statuses(url: str) -> list[str]:
    """The statuses of the runs the late-data sensor launched for REHOMED_DAY."""
    runs = graph_runs(url, "pipeline_patterns/rehomes_days", REHOMED_DAY)
    return [r["status"] for r in runs]


def graph_runs(url: str, key: str, value: str) -> list[dict]:
    return graphql(url, RUNS_TAGGED, key=key, value=value)["runsOrError"]["results"]


def global_rows(data_dir: pathlib.Path) -> dict[str, int]:
    """Rows per day of global_orders."""
    orders = read_table(str(data_dir / "lake" / "global_orders"))
    counts = orders.group_by("day").aggregate([("order_id", "count")])
    return dict(zip(counts["day"].to_pylist(), counts["order_id_count"].to_pylist(), strict=True))


RUNS_TAGGED = """
query($key: String!, $value: String!) {
  runsOrError(filter: {tags: [{key: $key, value: $value}]}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}
"""


def summary_days(data_dir: pathlib.Path) -> set[int]:
    """The days with data that revenue_summary counts per region (empty before its first run)."""
    try:
        return set(read_table(str(data_dir / "lake" / "revenue_summary"))["days_with_data"].to_pylist())
    except FileNotFoundError:  # no commit yet (the folder may exist before its first commit)
        return set()


def latest_materialization(url: str, key: str) -> dict | None:
    node = graphql(url, LATEST, key={"path": [key]})["assetNodeOrError"]
    return (node.get("assetMaterializations") or [None])[0]
