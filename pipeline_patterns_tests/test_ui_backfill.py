"""A partition backfill launched through the webserver's GraphQL API, exactly as the UI does,
run by the daemon of a real `dagster dev`."""

import datetime as dt
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import pyarrow.compute as pc
import pytest
import requests

from pipeline_patterns.defs.partitions import REGIONS, region_key
from pipeline_patterns.lib.delta_writes import read_table
from pipeline_patterns.lib.simulated_feed import FeedSettings, expected_orders
from pipeline_patterns_tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.subprocess

DAYS = ["2024-01-02", "2024-01-03", "2024-01-04"]
DAILY_GRAPH = [["raw_orders", region_key(r)] for r in REGIONS] + [
    ["regional_orders", region_key(r)] for r in REGIONS
] + [["global_orders"], ["daily_revenue"]]

LAUNCH = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""
STATUS = """
query ($id: String!) {
  partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } }
}"""
PARTITIONS = """
query ($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      assetPartitionStatuses {
        ... on TimePartitionStatuses { ranges { status startKey endKey } }
      }
    }
  }
}"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def dagster_dev(tmp_path):
    """`dagster dev` (webserver + daemon) on a free port, a temporary DAGSTER_HOME and data dir;
    afterwards exactly its process group is stopped."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "PIPELINE_PATTERNS_DATA_DIR": str(tmp_path / "data")}
    dagster = pathlib.Path(sys.executable).parent / "dagster"
    log = (tmp_path / "dagster_dev.log").open("w")
    server = subprocess.Popen(
        [str(dagster), "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/graphql"
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            assert server.poll() is None, (tmp_path / "dagster_dev.log").read_text()[-3000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/server_info", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        yield url, tmp_path / "data"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def graphql(url: str, query: str, **variables) -> dict:
    response = requests.post(url, json={"query": query, "variables": variables}, timeout=60)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


def missing_days(url: str, key: list[str], days: list[str]) -> list[str]:
    """What the UI's "missing only" option would backfill: the days not materialized."""
    node = graphql(url, PARTITIONS, key={"path": key})["assetNodeOrError"]
    done = set()
    for span in node["assetPartitionStatuses"]["ranges"]:
        if span["status"] == "MATERIALIZED":
            done |= {d for d in days if span["startKey"] <= d <= span["endKey"]}
    return [d for d in days if d not in done]


def test_a_backfill_launched_like_the_ui_materializes_every_partition(dagster_dev):
    url, data_dir = dagster_dev
    selection = [{"path": key} for key in DAILY_GRAPH]
    launched = graphql(url, LAUNCH, params={"assetSelection": selection, "partitionNames": DAYS})
    result = launched["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result
    deadline = time.time() + 600
    status = None
    while time.time() < deadline:
        status = graphql(url, STATUS, id=result["backfillId"])["partitionBackfillOrError"]["status"]
        if status not in ("REQUESTED", "CANCELING"):
            break
        time.sleep(3)
    assert status in ("COMPLETED", "COMPLETED_SUCCESS"), status

    for key in DAILY_GRAPH:
        assert missing_days(url, key, DAYS) == [], key  # "missing only" would launch nothing
    orders = read_table(str(data_dir / "lake" / "global_orders"))
    settings = FeedSettings()
    for day in DAYS:
        rows = orders.filter(pc.equal(orders["day"], day))
        expected = sum(expected_orders(r, dt.date.fromisoformat(day), settings).num_rows for r in REGIONS)
        assert rows.num_rows == expected
    revenue = read_table(str(data_dir / "lake" / "daily_revenue"))
    assert sorted(set(revenue["day"].to_pylist())) == DAYS and revenue.num_rows == len(DAYS) * len(REGIONS)
